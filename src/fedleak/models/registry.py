"""The model registry and :func:`create_model`.

A model family is one decorated builder ``(num_classes, in_channels, image_size, width, **kw) →
nn.Module``. ``width`` multiplies every layer's channel count, giving CPU-sized variants.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch
from torch import nn

from fedleak.errors import ConfigError
from fedleak.registry import Registry


class Builder(Protocol):
    def __call__(
        self, num_classes: int, in_channels: int, image_size: int, width: float, **kwargs: Any
    ) -> nn.Module: ...


MODELS: Registry[Builder] = Registry("model")


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    width: float = 1.0,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build registered model ``name`` (or a ``package.module:factory``); with ``seed`` its initial
    weights are reproducible."""
    from fedleak.models.external import build_external, is_external

    builder = None if is_external(name) else MODELS.get(name)
    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise ConfigError(
            f"model {name!r} needs positive num_classes, in_channels and image_size "
            f"(got {num_classes}, {in_channels}, {image_size})"
        )
    if width <= 0:
        raise ConfigError(f"model width must be positive, got {width}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if builder is None:
            return build_external(name, num_classes=num_classes, in_channels=in_channels,
                                  image_size=image_size, width=width, **kwargs)
        try:
            return builder(num_classes, in_channels, image_size, width, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {name!r}: {exc}") from None


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
