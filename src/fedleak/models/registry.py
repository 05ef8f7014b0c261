"""The model registry and :func:`create_model`.

A model family is one builder ``(num_classes, in_channels, image_size, width, **kw) → nn.Module``,
registered with its model card (:func:`register_model`: the input it was designed for) and, for a
family with torchvision/timm checkpoints, its foreign state-dict layout (:mod:`fedleak.models.layouts`).
``image_size`` is an int for square images or an ``(H, W)`` pair (builders read it with
:func:`image_hw`, so heads are sized from the real height and width). ``width`` multiplies every
layer's channel count, giving CPU-sized variants.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fedleak.data.transforms import size_hw as image_hw
from fedleak.errors import ConfigError
from fedleak.models.cards import ModelCard
from fedleak.models.external import build_external, is_external
from fedleak.models.layouts import LAYOUTS, Layout
from fedleak.models.precode import add_precode
from fedleak.registry import Registry

ImageSize = int | Sequence[int]  # a square side, or (H, W)


# ``(num_classes, in_channels, image_size, width, **options) → nn.Module``, each family with its own keyword
# options (a Protocol with ``**kwargs`` would demand that every builder accept any keyword).
Builder = Callable[..., nn.Module]


MODELS: Registry[Builder] = Registry("model")
CARDS: Registry[ModelCard] = Registry("model card")
"""Each registered model's :class:`~fedleak.models.cards.ModelCard` (its intended input), by name."""


def register_model(name: str, card: ModelCard, layout: Layout | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name`` together with its model card (every registered
    architecture says what input it was designed for) and, where torchvision or timm name its
    tensors otherwise, its foreign ``layout`` (filed in :data:`~fedleak.models.layouts.LAYOUTS`)."""

    def add(builder: Builder) -> Builder:
        MODELS.register(name)(builder)
        CARDS.register(name)(card)
        if layout is not None:
            LAYOUTS.register(name)(layout)
        return builder

    return add


def size_text(image_size: ImageSize) -> str:
    """``H×W`` for messages."""
    h, w = image_hw(image_size)
    return f"{h}×{w}"


def compact_size(image_size: ImageSize) -> int | tuple[int, int]:
    """The side for a square image, ``(H, W)`` otherwise: what builders and factories receive, so
    that a factory written for square images keeps getting an int."""
    h, w = image_hw(image_size)
    return h if h == w else (h, w)


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: ImageSize = 32,
    width: float | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build registered model ``name`` (or a ``package.module:factory``); with ``seed`` its initial
    weights are reproducible.

    ``image_size`` is a square side or ``(H, W)``. ``width`` unset means the model's own default: a
    registered builder gets 1.0, an external factory gets no ``width`` argument at all (its own
    default applies); a set width is passed to either.
    """
    builder = None if is_external(name) else MODELS.get(name)
    try:
        size: int | tuple[int, int] | None = compact_size(image_size)
    except ValueError:
        size = None
    if num_classes < 1 or in_channels < 1 or size is None:
        raise ConfigError(
            f"model {name!r} needs positive num_classes, in_channels and image_size "
            f"(got {num_classes}, {in_channels}, {image_size})"
        )
    if width is not None and width <= 0:
        raise ConfigError(f"model width must be positive, got {width}")
    precode = kwargs.pop("precode", None)  # every family's option: PRECODE's bottleneck (fedleak.models.precode)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if builder is None:
            given = {} if width is None else {"width": width}
            return add_precode(build_external(name, num_classes=num_classes, in_channels=in_channels,
                                              image_size=size, **given, **kwargs), precode)
        try:
            model = builder(num_classes, in_channels, size, 1.0 if width is None else width, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {name!r}: {exc}") from None
        return add_precode(model, precode)


def without_batch_norm(name: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """``options`` with normalisation layers off (``norm="none"``), for a registered model whose
    builder has a ``norm`` option and uses batch norm in ``options``; ``None`` for any other model.
    DP-SGD needs this: Opacus cannot take per-sample gradients through batch norm."""
    if name not in MODELS.names() or options.get("norm", "batch") != "batch":
        return None
    if "norm" not in inspect.signature(MODELS.get(name)).parameters:
        return None
    return {**options, "norm": "none"}


def scaled(channels: int, width: float) -> int:
    """``channels`` × ``width``, at least 1."""
    return max(1, int(round(channels * width)))
