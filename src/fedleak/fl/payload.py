"""What crosses the client → server boundary, and nothing more.

A :class:`Payload` is exactly what an honest-but-curious server observes: the global model state it
sent, the update it got back, and the public training hyperparameters. It holds no images and no
labels; :class:`ClientData` (the private side) never leaves the client and enters only evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from fedleak.errors import ConfigError

MODEL_MODES = ("eval", "train")
UPDATE_SCALES = ("delta", "delta/lr")
SGD_OPTIONS = ("momentum", "weight_decay")
"""The :class:`ClientTraining` fields that are ``torch.optim.SGD``'s own arguments: the client passes
them to its optimizer as they are; the attacker's simulation follows their arithmetic."""


@dataclass(frozen=True)
class ClientTraining:
    """How a client trains in one round: the settings the server knows because it set them.

    The one declaration of the client's training options. :func:`client_training` builds it from
    any mapping of these names (the run config's client section, a Flower train config read through
    its keys); the client trains with it and :meth:`public` turns it into the round's
    :class:`PublicHyperparameters`, which the attacker's simulation follows.

    FedAvg: ``local_steps`` SGD steps of ``lr`` on minibatches of ``local_batch_size``, walking
    through the batch in order (reshuffled each epoch with ``shuffle_seed`` when set); ``epochs``,
    when set, makes the round that many passes over the batch (``local_steps`` = epochs × the number
    of minibatches), as a PyTorch client's epoch loop over a data loader does. The update is
    θ₀ − θ_τ, or (θ₀ − θ_τ)/lr when ``update_scale`` is ``"delta/lr"``. The steps follow
    ``torch.optim.SGD`` with ``momentum`` and ``weight_decay`` (a fresh momentum buffer each round, as
    a client that builds its optimizer per round has). ``model_mode`` puts batch-norm layers in eval
    (running statistics) or train (batch statistics) mode.
    """

    protocol: str = "fedsgd"
    model_mode: str = "eval"
    lr: float | None = None
    local_steps: int = 1
    local_batch_size: int | None = None
    epochs: int | None = None
    shuffle_seed: int | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    update_scale: str = "delta"

    def __post_init__(self) -> None:
        if self.model_mode not in MODEL_MODES:
            raise ConfigError(f"model mode must be one of {', '.join(MODEL_MODES)}, got {self.model_mode!r}")
        if self.update_scale not in UPDATE_SCALES:
            raise ConfigError(f"update scale must be one of {', '.join(UPDATE_SCALES)}, got {self.update_scale!r}")
        if self.protocol == "fedavg" and (self.lr is None or self.lr <= 0):
            raise ConfigError("fedavg needs a positive local learning rate (client.lr)")
        if self.local_steps < 1 or (self.local_batch_size is not None and self.local_batch_size < 1):
            raise ConfigError("local steps and local batch size must be at least 1")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError("local epochs must be at least 1")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("momentum and weight decay must not be negative")

    def sgd(self) -> dict[str, Any]:
        """The ``torch.optim.SGD`` arguments beyond the learning rate (:data:`SGD_OPTIONS`)."""
        return {name: getattr(self, name) for name in SGD_OPTIONS}

    def public(self, batch_size: int, clients: int = 1, defense: str | None = None) -> PublicHyperparameters:
        """The round's public hyperparameters on a client batch of ``batch_size`` images (each of
        ``clients`` aggregated clients), ``epochs`` resolved into ``local_steps``."""
        values = {f.name: getattr(self, f.name) for f in fields(ClientTraining)}
        if self.epochs is not None:
            values["local_steps"] = epoch_steps(self.epochs, batch_size, self.local_batch_size)
        return PublicHyperparameters(**values, batch_size=batch_size, clients=clients, defense=defense)


def epoch_steps(epochs: int, examples: int, minibatch: int | None) -> int:
    """Local steps of ``epochs`` passes over ``examples`` in minibatches of ``minibatch`` (the last
    one smaller; ``None``: one minibatch of all)."""
    return epochs * -(-examples // (minibatch or examples))


def client_training(settings: Mapping[str, Any]) -> ClientTraining:
    """The client's training from a mapping of setting name → value: the run config's client section
    (plus ``model_mode``), or a Flower train config read through its keys. Names that are no
    :class:`ClientTraining` field (the batch size, the defense, the seed) are the caller's."""
    names = {f.name for f in fields(ClientTraining)}
    return ClientTraining(**{k: v for k, v in settings.items() if k in names})


@dataclass(frozen=True)
class PublicHyperparameters(ClientTraining):
    """A round's :class:`ClientTraining` as the server sees it, with what the round was run on.

    ``batch_size`` images per client (``local_steps`` already counts ``epochs``' minibatches);
    ``defense`` is the canonical defense spec; with aggregation the update is the mean over
    ``clients`` clients of ``batch_size`` images each; ``server`` the server threat model.
    """

    batch_size: int = field(kw_only=True)
    defense: str | None = None
    clients: int = 1
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
        steps: list[list[int]] = []
        epoch = 0
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
