"""Model cards: the input each registered model was designed for, the way timm's ``pretrained_cfg``
records it — the image size (C, H, W) and the per-channel normalisation (mean, std on [0, 1] pixels).

A card is registered with its model (:func:`fedleak.models.registry.register_model`), so every
registered architecture has exactly one and no table elsewhere needs to know about it. Cards are
documentation and defaults for what a run does not otherwise say: a run's normalisation is the
dataset's own unless a checkpoint, the config or a foreign (torchvision/timm) state dict says
otherwise (:mod:`fedleak.models.normalization`); its image size is the dataset's (``data.image_size``),
never silently the card's. The cards are listed in ``docs/models.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
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


def card_of(name: str) -> ModelCard:
    """The card of registered model ``name`` (a one-line error for an unknown name)."""
    from fedleak.models.registry import CARDS

    return CARDS.get(name)


def card_table() -> list[dict[str, Any]]:
    """Every registered model's card, by name: for listings (``fedleak config``) and the docs."""
    from fedleak.models.registry import CARDS

    return [{"model": name, **CARDS.get(name).as_dict()} for name in CARDS]


def describe_model(name: str) -> str:
    """Registered model ``name`` as the ``model`` section of a run config (YAML), every builder option
    with its default, and its card as comments: the ``mean``/``std`` lines, uncommented, set the card's
    normalisation; ``data.image_size`` its input size (``fedleak config MODEL``)."""
    import inspect

    import yaml

    from fedleak.models.registry import MODELS

    card = card_of(name)
    fixed = {"num_classes", "in_channels", "image_size", "width"}
    options = {p.name: p.default for p in inspect.signature(MODELS.get(name)).parameters.values()
               if p.name not in fixed and p.default is not inspect.Parameter.empty}
    lines = [f"# {name}: {card.summary()}",
             "# set these with --set model.KEY=VALUE (options: --set model.options.KEY=VALUE)",
             "model:", f"  name: {name}", "  width: 1.0  # channel multiplier (1: the real model)"]
    if options:
        lines.append("  options:")
        lines += [f"    {yaml.safe_dump({k: v}, sort_keys=False).strip()}" for k, v in options.items()]
    _, h, w = card.input_size
    side = h if h == w else [h, w]
    lines += [f"  # its card ({card.dataset}): input {card.size_text()}, i.e. data.image_size={side};"
              " uncomment for its normalisation (a run uses the dataset's unless told: docs/models.md)",
              f"  # mean: {list(card.mean)}", f"  # std: {list(card.std)}"]
    return "\n".join(lines) + "\n"


def describe_models() -> str:
    """Every registered model's card, one line each (``fedleak config models``)."""
    rows = card_table()
    width = max(len(r["model"]) for r in rows)
    return "".join(f"{r['model']:<{width}}  {card_of(r['model']).summary()}\n" for r in rows)


def named_card(name: str | None) -> tuple[str, ModelCard] | None:
    """``(name, card)`` when ``name`` is a registered model, else ``None`` (an external factory, or
    no name): for commands that show a card where they know the architecture."""
    from fedleak.models.registry import CARDS

    return (name, CARDS.get(name)) if name is not None and name in CARDS else None


def file_card(path: str | Path) -> tuple[str, ModelCard] | None:
    """The card of the architecture a fedleak checkpoint's metadata names (``None`` for other files,
    unreadable metadata or an unregistered name). Only a registry lookup: nothing the file names is
    imported or built, and the weights are not read."""
    import json

    from fedleak.errors import FedleakError
    from fedleak.models.checkpoint import METADATA_KEY, read_metadata

    if Path(path).suffix != ".safetensors":
        return None
    try:
        meta = json.loads(read_metadata(path).get(METADATA_KEY, "null"))
    except (FedleakError, ValueError, RecursionError):
        return None
    name = meta.get("architecture") if isinstance(meta, dict) else None
    return named_card(name) if isinstance(name, str) else None
