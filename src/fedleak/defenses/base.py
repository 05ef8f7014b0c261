"""The defense interface: one obfuscation φ, built from validated settings, and its registry.

A defense acts at one of three places in a client round:

- ``update``: a transform of the update the client sends (quantization, sparsification, noise, …),
  per tensor unless said;
- ``gradient``: how the client computes each gradient it trains on (DP-SGD's per-sample clipping and
  noise);
- ``aggregate``: the server sees the mean of several clients' updates, not one client's.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from fedleak.registry import Registry

Update = dict[str, Tensor]
Gradient = Callable[[nn.Module, Tensor, Tensor], Update]
Stage = Literal["update", "gradient", "aggregate"]


class DefenseConfig(BaseModel):
    """Base of every defense's settings; unknown keys and non-finite numbers are errors (a field
    that gives ``inf`` a meaning allows it itself)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Defense(ABC):
    """One obfuscation. ``update`` defenses override :meth:`tensor` (per tensor) or :meth:`apply`."""

    Config: ClassVar[type[DefenseConfig]] = DefenseConfig
    stage: ClassVar[Stage] = "update"
    name: ClassVar[str] = "defense"
    simulable: ClassVar[bool] = False  # deterministic and differentiable: the attacker can re-run it

    def __init__(self, config: DefenseConfig) -> None:
        self.config = config

    def apply(self, update: Update, generator: torch.Generator) -> Update:
        """The obfuscated update; the default applies :meth:`tensor` to each tensor."""
        return {n: self.tensor(t, generator) for n, t in update.items()}

    def tensor(self, t: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError(f"defense {self.name!r} does not act on single tensors")

    def simulate(self, update: Update) -> Update:
        """The attacker's differentiable re-run of this stage (``simulable`` defenses only): pure
        tensor ops, no randomness, usable under ``vmap``."""
        raise NotImplementedError(f"defense {self.name!r} cannot be simulated by the attacker")

    def spec(self) -> str:
        """The canonical spec string, every set setting spelled out (unset optional ones left out,
        so the string parses back)."""
        settings = {k: v for k, v in self.config.model_dump().items() if v is not None}
        if not settings:
            return self.name
        return f"{self.name}:" + ",".join(f"{k}={_format(v)}" for k, v in settings.items())

    def summary(self, **round_facts: Any) -> dict[str, Any]:
        """Facts a report shows about this defense (e.g. ε for DP-SGD); none by default."""
        return {}


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


DEFENSES: Registry[type[Defense]] = Registry("defense")


def register(name: str) -> Callable[[type[Defense]], type[Defense]]:
    """Class decorator: file the defense under ``name`` (also its spec name)."""

    def add(cls: type[Defense]) -> type[Defense]:
        cls.name = name
        return DEFENSES.register(name)(cls)

    return add
