"""Model cards: the input each registered model was designed for, the way timm's ``pretrained_cfg``
records it — the image size (C, H, W) and the per-channel normalisation (mean, std on [0, 1] pixels).

A card is registered with its model (:func:`fedleak.models.registry.register_model`), so every
registered architecture has exactly one and no table elsewhere needs to know about it (the queries
over registered cards are :mod:`fedleak.models.catalogue`; this module imports nothing of fedleak's). Cards are
documentation and defaults for what a run does not otherwise say: a run's normalisation is the
dataset's own unless a checkpoint, the config or a foreign (torchvision/timm) state dict says
otherwise (:mod:`fedleak.models.normalization`); its image size is the dataset's (``data.image_size``),
never silently the card's. The cards are listed in ``docs/models.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10's training-set statistics (as inversefed computes them), rounded to 4 decimals.
CIFAR10_MEAN = (0.4915, 0.4823, 0.4468)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# MNIST's training-set statistics (PyTorch's MNIST example).
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


@dataclass(frozen=True)
class ModelCard:
    """The input a model was designed for.

    ``input_size`` is (C, H, W); ``mean`` and ``std`` have one value per channel, on pixels in
    [0, 1] (the client computes ``(x − mean) / std``); ``dataset`` names where the size and
    normalisation come from; ``reference`` is the paper (or release) the card follows.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    reference: str

    def __post_init__(self) -> None:
        c, h, w = self.input_size
        if min(c, h, w) < 1:
            raise ValueError(f"a model card's input size must be positive, got {self.input_size}")
        if not len(self.mean) == len(self.std) == c:
            raise ValueError(f"a model card needs one mean and std per channel ({c}), got "
                             f"{len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise ValueError("a model card's mean must be finite and its std finite and positive")

    @property
    def channels(self) -> int:
        return self.input_size[0]

    def size_text(self) -> str:
        """``C×H×W``, e.g. ``3×224×224``."""
        return "×".join(map(str, self.input_size))

    def summary(self) -> str:
        """One line: size, normalisation and where they come from."""
        return (f"input {self.size_text()}, mean {_numbers(self.mean)}, std {_numbers(self.std)} "
                f"({self.dataset}; {self.reference})")

    def as_dict(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "dataset": self.dataset, "reference": self.reference}


def _numbers(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def imagenet(reference: str) -> ModelCard:
    """An ImageNet-1k model at 224 px with the usual ImageNet normalisation (torchvision's and timm's)."""
    return ModelCard((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, "ImageNet-1k", reference)


def cifar10(reference: str) -> ModelCard:
    """A CIFAR-10 model at 32 px with CIFAR-10's own statistics."""
    return ModelCard((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, "CIFAR-10", reference)


def mnist(reference: str) -> ModelCard:
    """An MNIST model at 28 px (one channel) with MNIST's own statistics."""
    return ModelCard((1, 28, 28), MNIST_MEAN, MNIST_STD, "MNIST", reference)
