"""Which normalisation a run's client applies, decided once, from the most specific source that has one.

The client computes ``(x − mean) / std`` on pixels in [0, 1] before the model sees them, and the
attacker is declared to know the same constants. They come from the first of these sources that
says anything (:data:`SOURCES`, in this order):

1. ``checkpoint`` — a fedleak checkpoint's recorded mean/std: the model was trained with them;
2. ``config`` — the run's explicit ``model.mean`` / ``model.std`` (``--mean`` / ``--std``);
3. ``model`` — a bring-your-own module's declared normalisation: a timm model's ``pretrained_cfg``
   (or ``default_cfg``) ``mean`` / ``std``, or ``mean`` / ``std`` attributes or buffers of the module;
   values are only read, never computed (no property or method of the module is called);
4. ``card`` — the registered model's card (:mod:`fedleak.models.cards`) when a torchvision / timm
   state dict (an ImageNet checkpoint) was loaded into it;
5. ``dataset`` — the dataset's own per-channel statistics (the default, and fedleak's behaviour
   before this setting existed).

The chosen source is recorded with the run (``metrics.json`` ``normalization``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedleak.data.normalization import Normalization as PixelNormalization
from fedleak.errors import ConfigError
from fedleak.models.catalogue import card_of


@dataclass(frozen=True)
class Normalization(PixelNormalization):
    """A run's :class:`~fedleak.data.normalization.Normalization` and the :data:`SOURCES` entry it came from."""

    source: str


@dataclass(frozen=True)
class Evidence:
    """What a run knows when it picks its normalisation.

    ``checkpoint``: the recorded (mean, std) of a fedleak checkpoint, if any; ``configured``: the
    config's explicit (mean, std); ``module``: the user's own module (a bring-your-own model), whose
    declared values are read; ``card_name``: the registered architecture whose card applies because
    a torchvision/timm state dict was loaded into it; ``dataset``: the dataset's statistics."""

    channels: int
    dataset: tuple[tuple[float, ...], tuple[float, ...]]
    checkpoint: tuple[Sequence[float], Sequence[float]] | None = None
    configured: tuple[Sequence[float], Sequence[float]] | None = None
    module: nn.Module | None = None
    card_name: str | None = None


Source = Callable[[Evidence], "tuple[Sequence[float], Sequence[float]] | None"]


def _checkpoint(e: Evidence) -> tuple[Sequence[float], Sequence[float]] | None:
    return e.checkpoint if e.checkpoint and e.checkpoint[0] else None


def _configured(e: Evidence) -> tuple[Sequence[float], Sequence[float]] | None:
    return e.configured


def _card(e: Evidence) -> tuple[Sequence[float], Sequence[float]] | None:
    if e.card_name is None:
        return None
    card = card_of(e.card_name)
    return card.mean, card.std


def _dataset(e: Evidence) -> tuple[Sequence[float], Sequence[float]]:
    return e.dataset


SOURCES: tuple[tuple[str, Source], ...] = (
    ("checkpoint", _checkpoint),
    ("config", _configured),
    ("model", lambda e: declared_normalization(e.module) if e.module is not None else None),
    ("card", _card),
    ("dataset", _dataset),
)
"""The sources in the order they are asked (the first that answers wins); see the module docstring."""


def resolve_normalization(evidence: Evidence) -> Normalization:
    """The normalisation of the first source in :data:`SOURCES` that has one, checked against the
    dataset's channel count (one line naming the source otherwise)."""
    for name, source in SOURCES:
        found = source(evidence)
        if found is not None:
            mean, std = check_values(found[0], found[1], f"the {name}'s normalisation")
            if len(mean) != evidence.channels:
                raise ConfigError(f"the {name}'s normalisation has {len(mean)} value(s) per statistic but the "
                                  f"images have {evidence.channels} channel(s)")
            return Normalization(mean, std, name)
    raise AssertionError("the dataset always has a normalisation")  # pragma: no cover


def check_values(mean: Sequence[float], std: Sequence[float], what: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` as float tuples: as many of each, finite, every std positive; else one line."""
    try:
        m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be numbers") from None
    if not m or len(m) != len(s):
        raise ConfigError(f"{what} needs as many mean as std values (one per channel), got {len(m)} and {len(s)}")
    if not all(math.isfinite(v) for v in (*m, *s)):
        raise ConfigError(f"{what} must be finite numbers")
    if min(s) <= 0:
        raise ConfigError(f"{what}: every std must be positive, got {min(s):g}")
    return m, s


_CONFIG_KEYS = ("pretrained_cfg", "default_cfg")  # timm's per-model config dicts


def declared_normalization(module: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) a user's module declares, or ``None``: a timm-style ``pretrained_cfg`` /
    ``default_cfg`` mapping with ``mean`` and ``std``, else ``mean`` and ``std`` values (numbers or
    tensors) on the module. Only stored values are read (instance attributes, buffers, plain class
    attributes): no property, method or ``__getattr__`` of the module runs."""
    for key in _CONFIG_KEYS:
        cfg = _stored(module, key)
        if isinstance(cfg, Mapping) and cfg.get("mean") is not None and cfg.get("std") is not None:
            return _numbers(cfg["mean"], f"the model's {key} mean"), _numbers(cfg["std"], f"the model's {key} std")
    mean, std = _stored(module, "mean"), _stored(module, "std")
    if mean is None or std is None:
        return None
    return _numbers(mean, "the model's mean"), _numbers(std, "the model's std")


def _stored(module: nn.Module, name: str) -> Any:
    """``module.name`` when it is a stored value: an instance attribute, a buffer, or a class
    attribute that is no descriptor (a property or method would run the module's code)."""
    if name in vars(module):
        return vars(module)[name]
    buffers = vars(module).get("_buffers", {})
    if name in buffers:
        return buffers[name]
    value = inspect.getattr_static(type(module), name, None)
    return None if value is None or hasattr(type(value), "__get__") else value


def _numbers(value: Any, what: str) -> tuple[float, ...]:
    """A number, a sequence of numbers or a tensor as a flat float tuple (one line when it is none)."""
    if isinstance(value, torch.Tensor):
        return tuple(float(v) for v in value.detach().flatten().cpu())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) <= 16:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return tuple(float(v) for v in value)
    raise ConfigError(f"{what} must be a number, a list of numbers or a tensor, got {type(value).__name__}")
