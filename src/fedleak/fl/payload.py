"""What crosses the client → server boundary, and nothing more.

A :class:`Payload` is exactly what an honest-but-curious server observes: the global model state it
sent, the update it got back, and the public training hyperparameters. It holds no images and no
labels; :class:`ClientData` (the private side) never leaves the client and enters only evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class PublicHyperparameters:
    """Training settings the server knows because it set them (its protocol).

    FedAvg: ``local_steps`` SGD steps of ``lr`` on minibatches of ``local_batch_size``, walking
    through the batch in order (reshuffled each epoch with ``shuffle_seed`` when set); the update is
    θ₀ − θ_τ, or (θ₀ − θ_τ)/lr when ``update_scale`` is ``"delta/lr"``. The steps follow
    ``torch.optim.SGD`` with ``momentum`` and ``weight_decay`` (a fresh momentum buffer each round, as
    a client that builds its optimizer per round has). ``defense`` is the
    canonical defense spec; with aggregation the update is the mean over ``clients`` clients of
    ``batch_size`` images each.
    """

    protocol: str
    batch_size: int
    model_mode: str = "eval"
    lr: float | None = None
    local_steps: int = 1
    local_batch_size: int | None = None
    shuffle_seed: int | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    update_scale: str = "delta"
    defense: str | None = None
    clients: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    server: str = "honest"  # the server threat model: "honest", or the malicious modification's spec

    @property
    def observed_images(self) -> int:
        """How many images stand behind the update the server sees (all aggregated clients)."""
        return self.batch_size * self.clients

    def minibatches(self) -> list[list[int]]:
        """Indices of the client batch used at each local step (FedAvg), in order: each epoch walks
        the batch in minibatches (the last one smaller when they do not divide it), reshuffled with
        ``torch.randperm`` seeded ``shuffle_seed + epoch`` — PyTorch's ``DistributedSampler`` order
        on one replica after ``set_epoch(epoch)``, so a plain PyTorch client can follow it."""
        size = self.local_batch_size or self.batch_size
        steps, epoch = [], 0
        while len(steps) < self.local_steps:
            order = list(range(self.batch_size))
            if self.shuffle_seed is not None:
                g = torch.Generator().manual_seed(self.shuffle_seed + epoch)
                order = torch.randperm(self.batch_size, generator=g, device="cpu").tolist()  # public, host-side
            for start in range(0, self.batch_size, size):
                if len(steps) < self.local_steps:
                    steps.append(order[start : start + size])
            epoch += 1
        return steps


@dataclass(frozen=True)
class Payload:
    """The server's view of one client round.

    ``model_state`` is the global model's ``state_dict`` the server sent; ``update`` maps each
    trainable parameter name (in ``named_parameters`` order) to the tensor the client returned.
    ``buffers`` are the local model's buffers after a FedAvg round (batch-norm running statistics
    and counters; empty for FedSGD, whose client sends a gradient only), as an FL framework such as
    Flower sends every array of the model; with aggregation, their aggregate
    (:func:`~fedleak.fl.aggregation.aggregate_buffers`). Defenses act on ``update`` only: buffers
    travel as they are.
    """

    model_state: dict[str, Tensor]
    update: dict[str, Tensor]
    hyper: PublicHyperparameters
    buffers: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, tensors in (("update", self.update), ("buffer", self.buffers)):
            for name, t in tensors.items():
                if t.requires_grad:
                    raise ValueError(f"payload {kind} {name!r} must be detached")


@dataclass(frozen=True)
class ClientData:
    """A client's private batch: images in [0, 1] (B×C×H×W) and labels. Never given to an attack."""

    images: Tensor
    labels: Tensor
    indices: tuple[int, ...] = ()
