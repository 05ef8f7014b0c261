"""How a model classifies reconstructions (Lim & Chan): predictions, confidences, rates (a) and (b).

rate (a): correctly classified reconstructions / all reconstructions.
rate (b): originals with at least one correctly classified reconstruction / originals.
Both are reported split by whether the original itself is classified correctly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedleak.device import device_of
from fedleak.fl.client import normalize


@dataclass
class Classification:
    predicted: list[int]
    confidence: list[float]  # softmax probability of the predicted class
    true_confidence: list[float]  # softmax probability of the true class


def classify(model: nn.Module, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Classification:
    """Classify [0, 1] images with ``model`` in eval mode (a copy's mode is not touched)."""
    was_training = model.training
    device = device_of(model)  # a transfer model may sit elsewhere than the reconstructions
    images, labels = images.to(device), labels.to(device)
    model.eval()
    try:
        with torch.no_grad():
            probs = torch.softmax(model(normalize(images, tuple(mean), tuple(std))), dim=1)
    finally:
        model.train(was_training)
    conf, pred = probs.max(1)
    true = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    return Classification(pred.tolist(), conf.tolist(), true.tolist())


def recognition_rates(groups: Sequence[tuple[Sequence[bool], bool]]) -> dict[str, float]:
    """Rates over originals: each group is (correctness of its reconstructions, original correct?).

    Returns rate (a) and (b) overall and split by whether the original was classified correctly
    (keys ``*_orig_correct`` / ``*_orig_wrong``; NaN where a split is empty)."""

    def rates(subset: Sequence[tuple[Sequence[bool], bool]]) -> tuple[float, float]:
        recs = [c for corrects, _ in subset for c in corrects]
        if not subset or not recs:
            return float("nan"), float("nan")
        return sum(recs) / len(recs), sum(any(c) for c, _ in subset) / len(subset)

    out = {}
    for suffix, subset in (("", groups), ("_orig_correct", [g for g in groups if g[1]]),
                           ("_orig_wrong", [g for g in groups if not g[1]])):
        a, b = rates(subset)
        out[f"rate_a{suffix}"], out[f"rate_b{suffix}"] = a, b
    out["originals"] = len(groups)
    out["originals_correct"] = sum(1 for g in groups if g[1])
    return out
