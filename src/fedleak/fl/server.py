"""The server threat model: an honest server sends the global model as it is; a malicious one first
applies a named model modification (Robbing the Fed's imprint block, Wen et al.'s fishing).

A modification is one registered class built from a spec string like ``imprint:bins=128`` (the
settings validated by its pydantic config, as defense specs are). It changes only the model the
server sends: the malicious server still sees nothing but a :class:`~fedleak.fl.Payload` — the model
it sent (``model_state`` holds the modified model), the update that came back and the public
hyperparameters, whose ``server`` field names the modification. The attacker knows the modified
architecture because it built it.

A modification may use public facts only: the input shape, the class count, the normalisation, and
public images (a split of the run's dataset named in its spec, by default ``train`` while clients
hold ``test`` images) — never the client's batch.

This module is the base of the modifications (:mod:`fedleak.fl.modifications` registers them; the
``fedleak.fl`` package imports both) and their specs; it imports nothing above the data layer.
Applying a run config's server section — building the model the run sends, recording the threat
model in the payload — is the composition layer's (:mod:`fedleak.serving`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from fedleak.data.normalization import normalize
from fedleak.errors import ConfigError
from fedleak.registry import Registry
from fedleak.specs import parse_spec

if TYPE_CHECKING:
    from fedleak.data import ImageDataset

HONEST = "honest"


@dataclass(frozen=True)
class ServerContext:
    """The public facts a modification may use. ``public(split)`` loads a split of the run's dataset
    (the server's own public images); ``seed`` is the server's (= the attacker's) seed."""

    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int = 0
    public: Callable[[str], ImageDataset] | None = None

    def public_images(self, split: str, count: int, device: torch.device | str = "cpu") -> Tensor:
        """Up to ``count`` images of ``split`` (a seeded draw), normalised as the clients normalise,
        on ``device`` (the model's: a modification passes its own). Which images is drawn on the
        host, where the dataset is, so the server holds the same public images on every device."""
        if self.public is None:
            raise ConfigError("this modification needs public images, and the run gives the server none")
        data = self.public(split)
        if data.image_shape != self.input_shape:
            raise ConfigError(f"public images of split {split!r} are {data.image_shape}, clients' {self.input_shape}")
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed), device="cpu")[:count]
        return normalize(data.images(sorted(pick.tolist())).to(device), self.mean, self.std)


class ModificationConfig(BaseModel):
    """Base of every modification's settings: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Modification(ABC):
    """One way a malicious server changes the model it sends. ``attack`` names the fedleak attack
    that exploits it (the default attack of a run with this modification)."""

    Config: ClassVar[type[ModificationConfig]] = ModificationConfig
    name: ClassVar[str] = "modification"
    attack: ClassVar[str] = "ig"
    # The capabilities (fedleak.threats.CAPABILITIES) the server uses to make it, beyond sending a
    # modified model, each with why.
    requires: ClassVar[dict[str, str]] = {}

    def __init__(self, config: ModificationConfig) -> None:
        self.config = config

    @abstractmethod
    def modify(self, model: nn.Module, context: ServerContext) -> nn.Module:
        """The model the server sends instead of ``model`` (a new module; ``model`` is not changed)."""

    def spec(self) -> str:
        """The canonical spec: the name and every setting spelled out, so that it parses back."""
        settings = {k: v for k, v in self.config.model_dump().items() if v is not None}
        text = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items())
        return f"{self.name}:{text}" if text else self.name


MODIFICATIONS: Registry[type[Modification]] = Registry("server modification")

M = TypeVar("M", bound=type[Modification])


def register(name: str) -> Callable[[M], M]:
    """Class decorator: file the modification under ``name`` (also its spec name)."""

    def add(cls: M) -> M:
        cls.name = name
        MODIFICATIONS.register(name)(cls)
        return cls

    return add


def parse_modification(spec: str) -> Modification:
    """``name`` or ``name:key=value,…`` → the modification; a bad spec is one :class:`ConfigError`."""
    return parse_spec(spec, MODIFICATIONS, "server modification")


def canonical(spec: str) -> str:
    """Validator form for configs: the canonical spec, ``ValueError`` (pydantic) on a bad one."""
    try:
        return parse_modification(spec).spec()
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def server_flags(value: str | None) -> dict[str, str | None]:
    """The config flags of the CLI's ``--server`` option: ``honest``, or a modification spec meaning a
    malicious server with that modification (``None``: not given)."""
    if value is None:
        return {"server.threat": None, "server.modification": None}
    if value.strip() == HONEST:
        return {"server.threat": HONEST, "server.modification": None}
    return {"server.threat": "malicious", "server.modification": value.strip()}


def default_attack(spec: str) -> str:
    """The attack that exploits modification ``spec`` (a run's attack when it names none)."""
    return parse_modification(spec).attack


def describe(threat: str, modification: str | None) -> str:
    """What ``PublicHyperparameters.server`` records: ``honest``, or the canonical modification spec."""
    return HONEST if threat == HONEST or not modification else parse_modification(modification).spec()


def modification_of(server: str) -> Modification | None:
    """The modification a payload's ``server`` field names (``None`` for an honest server)."""
    return None if server == HONEST else parse_modification(server)
