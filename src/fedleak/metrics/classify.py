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

from fedleak.data.normalization import normalize
from fedleak.device import device_of


@dataclass
class Classification:
    predicted: list[int]
    confidence: list[float]  # softmax probability of the predicted class
    true_confidence: list[float]  # softmax probability of the true class


def probabilities(model: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Softmax class probabilities (B×C, on the model's device) of [0, 1] images, ``model`` in eval
    mode (a copy's mode is not touched)."""
    was_training = model.training
    device = device_of(model)  # a transfer model may sit elsewhere than the reconstructions
    model.eval()
    try:
        with torch.no_grad():
            return torch.softmax(model(normalize(images.to(device), tuple(mean), tuple(std))), dim=1)
    finally:
        model.train(was_training)


def classify(model: nn.Module, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Classification:
    """Classify [0, 1] images with ``model`` in eval mode (a copy's mode is not touched)."""
    probs = probabilities(model, images, mean, std)
    conf, pred = probs.max(1)
    true = probs.gather(1, labels.to(probs.device).view(-1, 1)).squeeze(1)
    return Classification(pred.tolist(), conf.tolist(), true.tolist())


Groups = Sequence[tuple[Sequence[bool], bool]]
"""One entry per original: (correctness of each of its reconstructions, was the original correct?)."""


def _splits(groups: Groups) -> list[tuple[str, Groups]]:
    return [("", groups), ("_orig_correct", [g for g in groups if g[1]]),
            ("_orig_wrong", [g for g in groups if not g[1]])]


def recognition_counts(groups: Groups) -> dict[str, tuple[int, int]]:
    """``(successes, total)`` of rate (a) (reconstructions) and rate (b) (originals), overall and split
    by whether the original was classified correctly (keys ``rate_a``, ``rate_b``, ``rate_a_orig_correct``,
    …): the counts every rate and interval of the recognition studies is computed from."""
    counts = {}
    for suffix, subset in _splits(groups):
        recs = [c for corrects, _ in subset for c in corrects]
        counts[f"rate_a{suffix}"] = (sum(recs), len(recs))
        counts[f"rate_b{suffix}"] = (sum(any(c) for c, _ in subset), len(subset))
    return counts


def recognition_rates(groups: Groups) -> dict[str, float]:
    """Rates (a) and (b) of :func:`recognition_counts`, overall and split (keys ``*_orig_correct`` /
    ``*_orig_wrong``; NaN where a split holds no reconstruction), and how many originals (were correct)."""
    counts, out = recognition_counts(groups), {}
    for suffix, _ in _splits(groups):
        (a, recs), (b, originals) = counts[f"rate_a{suffix}"], counts[f"rate_b{suffix}"]
        out[f"rate_a{suffix}"] = a / recs if recs else float("nan")
        out[f"rate_b{suffix}"] = b / originals if recs else float("nan")
    out["originals"] = len(groups)
    out["originals_correct"] = sum(1 for g in groups if g[1])
    return out
