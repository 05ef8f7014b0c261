"""Model cards: the input each registered model was designed for, the way timm's ``pretrained_cfg``
records it — the image size (C, H, W) and the per-channel normalisation (mean, std on [0, 1] pixels);
a token model's card (:func:`tokens`) says it takes token ids and how many (its context length).

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

    ``modality`` is ``"image"`` or ``"text"``. A text model takes int64 token ids, B×T with T at most
    its context length; its card (:func:`tokens`) stores that as ``input_size`` (1, 1, T) with the
    identity normalisation (mean 0, std 1), so that code reading a card as an image card gets
    well-formed values, and says ``token ids`` in :meth:`summary`.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    reference: str
    modality: str = "image"

    def __post_init__(self) -> None:
        c, h, w = self.input_size
        if min(c, h, w) < 1:
            raise ValueError(f"a model card's input size must be positive, got {self.input_size}")
        if not len(self.mean) == len(self.std) == c:
            raise ValueError(f"a model card needs one mean and std per channel ({c}), got "
                             f"{len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise ValueError("a model card's mean must be finite and its std finite and positive")
        if self.modality not in ("image", "text"):
            raise ValueError(f"a model card's modality is 'image' or 'text', got {self.modality!r}")

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @property
    def context_length(self) -> int | None:
        """A text model's context length (most tokens per sequence); ``None`` for an image model."""
        return self.input_size[2] if self.modality == "text" else None

    def size_text(self) -> str:
        """``C×H×W``, e.g. ``3×224×224``; ``≤T tokens`` for a text model."""
        if self.modality == "text":
            return f"≤{self.context_length} tokens"
        return "×".join(map(str, self.input_size))

    def summary(self) -> str:
        """One line: size, normalisation and where they come from (a text model: token ids, context)."""
        if self.modality == "text":
            return f"input token ids (int64 B×T), {self.size_text()} ({self.dataset}; {self.reference})"
        return (f"input {self.size_text()}, mean {_numbers(self.mean)}, std {_numbers(self.std)} "
                f"({self.dataset}; {self.reference})")

    def as_dict(self) -> dict[str, Any]:
        """The card's fields; a text card adds ``modality`` and ``context_length``."""
        out: dict[str, Any] = {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                               "dataset": self.dataset, "reference": self.reference}
        if self.modality == "image":
            return out
        return {**out, "modality": self.modality, "context_length": self.context_length}


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


def tokens(context_length: int, dataset: str, reference: str) -> ModelCard:
    """A text model's card: int64 token ids, at most ``context_length`` per sequence."""
    return ModelCard((1, 1, context_length), (0.0,), (1.0,), dataset, reference, modality="text")
