"""Semantic overlap (the ROG paper's point that pixels understate what leaks, Yue et al. 2023): an
independent classifier's top-k label sets on each original and its reconstruction, compared by their
Jaccard index |A ∩ B| / |A ∪ B|.

ROG scores it with a multi-label tagger (TResNet on Open Images, top-k tags above a threshold); fedleak
uses any classifier the user trained that is *not* the attacked model (``metrics.semantic``: a fedleak
checkpoint of the dataset's classes) — its ``k`` most probable classes, optionally only those above
``threshold`` — so a reconstruction that pixel metrics call noise but that shows the same kind of
thing scores high. Two empty sets (nothing above the threshold on either side) agree: 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from fedleak.metrics.classify import probabilities


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """|A ∩ B| / |A ∪ B| of two label sets (1 for two empty sets)."""
    x, y = set(a), set(b)
    union = x | y
    return 1.0 if not union else len(x & y) / len(union)


@dataclass
class SemanticScorer:
    """An independent classifier (its input normalisation ``mean``/``std``) that labels images with
    its ``k`` most probable classes above ``threshold``; ``source`` names it."""

    model: nn.Module
    mean: Sequence[float]
    std: Sequence[float]
    k: int = 3
    threshold: float = 0.0
    source: str = ""

    def labels(self, images: Tensor) -> list[frozenset[int]]:
        """Each [0, 1] image's label set."""
        probs = probabilities(self.model, images, self.mean, self.std)
        top = probs.topk(min(self.k, probs.shape[1]), dim=1)
        return [frozenset(int(c) for c, p in zip(ci.tolist(), pi.tolist()) if p > self.threshold)
                for ci, pi in zip(top.indices, top.values)]

    def __call__(self, reconstructions: Tensor, originals: Tensor) -> list[float]:
        """The Jaccard index of each matched pair's label sets."""
        return [jaccard(a, b) for a, b in zip(self.labels(originals), self.labels(reconstructions))]


def load_semantic(path: str, num_classes: int, in_channels: int, k: int = 3, threshold: float = 0.0) -> SemanticScorer:
    """The independent classifier of a fedleak checkpoint (its architecture, weights and normalisation
    from the file's metadata; only fedleak's registered architectures: a checkpoint names no code to
    import). One line when it is not one or does not fit the dataset."""
    from fedleak.errors import ConfigError
    from fedleak.models import create_model
    from fedleak.models.checkpoint import load_into, read_info
    from fedleak.models.registry import is_external

    info = read_info(path)
    if info is None:
        raise ConfigError(f"metrics.semantic: {path!r} is no fedleak checkpoint (fedleak train writes one)")
    if is_external(info.architecture):
        raise ConfigError(f"metrics.semantic: {path!r} names an external architecture {info.architecture!r}: "
                          "give a checkpoint of a registered fedleak model")
    if info.num_classes != num_classes or info.in_channels != in_channels:
        raise ConfigError(f"metrics.semantic: {path!r} classifies {info.num_classes} classes of {info.in_channels}-"
                          f"channel images, the run's data has {num_classes} of {in_channels}")
    model = create_model(info.architecture, info.num_classes, info.in_channels, info.image_size, info.width,
                         **info.options)
    load_into(model, path, info.architecture)
    return SemanticScorer(model, info.mean or (0.0,) * in_channels, info.std or (1.0,) * in_channels, k, threshold,
                          str(path))
