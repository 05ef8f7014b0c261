"""The defense interface: the three kinds of obfuscation φ, built from validated settings, and their
registry.

A defense acts at one of three places in a client round, and each place is its own base class:

- :class:`UpdateDefense`: a transform of the update the client sends (quantization, sparsification,
  noise, …), per tensor unless said;
- :class:`GradientDefense`: how the client computes each gradient it trains on (DP-SGD's per-sample
  clipping and noise);
- :class:`Aggregation`: the server sees the mean of several clients' updates, not one client's.

A defense also declares what an attacker should do about it: :attr:`Defense.matching` names the
matching (``fedleak.attacks.objectives``) that suits updates it made — the attack reads the
declaration, it never decides by a defense's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

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
    """One obfuscation of any kind: its settings, its canonical spec and the facts a report shows.

    ``matching`` is the matching an attacker should compare updates with after this stage (``None``:
    the stage leaves the values' meaning alone); of several declaring stages, the one with the highest
    ``matching_priority`` decides (it says the most about what the observed values are)."""

    Config: ClassVar[type[DefenseConfig]] = DefenseConfig
    stage: ClassVar[Stage]
    name: ClassVar[str] = "defense"
    matching: ClassVar[str | None] = None
    matching_priority: ClassVar[int] = 0

    def __init__(self, config: DefenseConfig) -> None:
        self.config = config

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


class UpdateDefense(Defense):
    """A transform of the update a client sends; override :meth:`tensor` (per tensor) or :meth:`apply`."""

    stage: ClassVar[Stage] = "update"
    simulable: ClassVar[bool] = False  # deterministic and differentiable: the attacker can re-run it

    def apply(self, update: Update, generator: torch.Generator) -> Update:
        """The obfuscated update; the default applies :meth:`tensor` to each tensor."""
        return {n: self.tensor(t, generator) for n, t in update.items()}

    def tensor(self, t: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError(f"defense {self.name!r} does not act on single tensors")

    def simulate(self, update: Update) -> Update:
        """The attacker's differentiable re-run of this stage (``simulable`` defenses only): pure
        tensor ops, no randomness, usable under ``vmap``."""
        raise NotImplementedError(f"defense {self.name!r} cannot be simulated by the attacker")


class GradientDefense(Defense):
    """How the client computes each gradient it trains on, in place of the plain batch gradient."""

    stage: ClassVar[Stage] = "gradient"

    @abstractmethod
    def gradient(self, generator: torch.Generator) -> Gradient:
        """The client's gradient function, its randomness drawn from ``generator``."""


class Aggregation(Defense):
    """The server sees only the mean of :attr:`clients` clients' updates."""

    stage: ClassVar[Stage] = "aggregate"

    @property
    @abstractmethod
    def clients(self) -> int:
        """How many clients' updates the server averages."""


KINDS: tuple[type[Defense], ...] = (UpdateDefense, GradientDefense, Aggregation)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


DEFENSES: Registry[type[Defense]] = Registry("defense")


D = TypeVar("D", bound=type[Defense])


def register(name: str) -> Callable[[D], D]:
    """Class decorator: file the defense under ``name`` (also its spec name); it is of one of the
    three kinds (:data:`KINDS`)."""

    def add(cls: D) -> D:
        if not issubclass(cls, KINDS):
            raise TypeError(f"defense {name!r} must derive from one of {', '.join(k.__name__ for k in KINDS)}")
        cls.name = name
        DEFENSES.register(name)(cls)
        return cls

    return add
