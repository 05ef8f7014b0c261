"""What crosses the client → server boundary, and nothing more.

A :class:`Payload` is exactly what an honest-but-curious server observes: the global model state it
sent, the update it got back, and the public training hyperparameters. It holds no images and no
labels; :class:`ClientData` (the private side) never leaves the client and enters only evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class PublicHyperparameters:
    """Training settings the server knows because it set them (its protocol)."""

    protocol: str
    batch_size: int
    model_mode: str = "eval"
    lr: float | None = None
    local_steps: int = 1
    local_batch_size: int | None = None
    epochs: int = 1
    defense: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Payload:
    """The server's view of one client round.

    ``model_state`` is the global model's ``state_dict`` the server sent; ``update`` maps each
    trainable parameter name (in ``named_parameters`` order) to the tensor the client returned.
    """

    model_state: dict[str, Tensor]
    update: dict[str, Tensor]
    hyper: PublicHyperparameters

    def __post_init__(self) -> None:
        for name, t in self.update.items():
            if t.requires_grad:
                raise ValueError(f"payload update {name!r} must be detached")


@dataclass(frozen=True)
class ClientData:
    """A client's private batch: images in [0, 1] (B×C×H×W) and labels. Never given to an attack."""

    images: Tensor
    labels: Tensor
    indices: tuple[int, ...] = ()
