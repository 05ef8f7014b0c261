"""What crosses the client → server boundary, and nothing more.

A :class:`Payload` is exactly what an honest-but-curious server observes: the global model state it
sent, the update it got back, and the public training hyperparameters. It holds no images and no
labels; :class:`ClientData` (the private side) never leaves the client and enters only evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from fedleak.errors import ConfigError
from fedleak.fl.optimizers import OPTIMIZERS

MODEL_MODES = ("eval", "train")
UPDATE_SCALES = ("delta", "delta/lr")
PROTOCOL_NAMES = ("fedsgd", "fedavg")


def setting(default: Any, help: str, *, key: str | None = None, config: bool = True, later: bool = False,
            config_default: Any = ..., choices: tuple[str, ...] | None = None, check: Callable[[Any], Any] | None = None,
            used_by: tuple[str, ...] | None = None, assumed: str | None = None, **bounds: float) -> Any:
    """A :class:`ClientTraining` field with everything else derived from it: ``help`` (the config
    field's description and the CLI flag's help), ``key`` (the name a Flower train config sends it
    under, :class:`fedleak.integrations.flower.TrainKeys`; ``None``: never sent), ``config`` (a
    field of the run config's client section; ``False`` where another section holds it),
    ``config_default`` (the config's default where it differs from the dataclass's), ``later`` (added
    after run keys existed: a run that leaves it at its default keeps its key), ``choices`` and
    ``bounds`` (pydantic's ``ge``/``gt``/``lt``) and ``check`` (a validator raising ``ValueError``), each
    checked in the config and in a Flower train config; ``used_by`` (the optimizers that read it;
    ``None``: all) and ``assumed`` (what its default means, said when an audit had to assume it)."""
    return field(default=default, metadata={"help": help, "key": key, "config": config, "later": later,
                                            "config_default": default if config_default is ... else config_default,
                                            "choices": choices, "check": check, "bounds": bounds,
                                            "used_by": used_by, "assumed": assumed})


@dataclass(frozen=True)
class ClientTraining:
    """How a client trains in one round: the settings the server knows because it set them.

    The one declaration of the client's training options: each field is a :func:`setting`, from
    which the run config's client section, the CLI flags and the Flower train-config keys are
    derived. :func:`client_training` builds it from any mapping of these names; the client trains
    with it and :meth:`public` turns it into the round's :class:`PublicHyperparameters`, which the
    attacker's simulation follows. A new option is one field here, plus its arithmetic where it acts
    (an optimizer's in :mod:`fedleak.fl.optimizers`).

    FedAvg: ``local_steps`` steps of the ``optimizer`` (``torch.optim``'s SGD, Adam or AdamW; a fresh
    one each round, as a client that builds its optimizer per round has) with learning rate ``lr`` on
    minibatches of ``local_batch_size``; ``epochs``, when set, makes the round that many passes over
    the client's examples (``local_steps`` = epochs × the minibatches of an epoch), as a PyTorch
    client's epoch loop over a data loader does. Each epoch walks the examples in order, reshuffled
    with the public ``shuffle_seed`` when set, or with the client's private seed when ``shuffle`` is
    set without one (an order the server cannot know); ``drop_last`` drops an epoch's last, smaller
    minibatch. The update is θ₀ − θ_τ, or (θ₀ − θ_τ)/lr when ``update_scale`` is ``"delta/lr"``.
    ``model_mode`` puts batch-norm layers in eval (running statistics) or train (batch statistics)
    mode.
    """

    protocol: str = setting("fedsgd", "client protocol: fedsgd | fedavg", choices=PROTOCOL_NAMES)
    model_mode: str = setting("eval", "batch norm during local training: train | eval", key="model-mode",
                              config=False, choices=MODEL_MODES)
    optimizer: str = setting("sgd", "local optimizer (fedavg): sgd | adam | adamw (torch.optim's)", key="optimizer",
                             later=True, check=OPTIMIZERS.check)
    lr: float | None = setting(None, "local learning rate (fedavg)", key="lr", config_default=0.01, gt=0)
    local_steps: int = setting(1, "local steps τ (fedavg)", key="local-steps", ge=1)
    local_batch_size: int | None = setting(None, "minibatch size (fedavg; default the batch)", key="batch-size", ge=1)
    epochs: int | None = setting(None, "local epochs over the batch (fedavg): sets local_steps to epochs × "
                                 "the minibatches of an epoch", key="local-epochs", ge=1)
    shuffle_seed: int | None = setting(None, "reshuffle each epoch with this public seed (fedavg)", key="shuffle-seed",
                                       ge=0, lt=2**63)
    shuffle: bool = setting(False, "reshuffle each epoch with the client's private seed when no shuffle_seed is "
                            "public (fedavg; an order the server cannot follow)", key="shuffle", later=True)
    drop_last: bool = setting(False, "drop each epoch's last, smaller minibatch (fedavg; DataLoader's drop_last)",
                              key="drop-last", later=True, assumed="the last, smaller minibatch of an epoch is kept "
                              "(DataLoader's default)")
    momentum: float = setting(0.0, "SGD momentum (fedavg; torch.optim.SGD, a fresh buffer each round)",
                              key="momentum", used_by=("sgd",), ge=0)
    dampening: float = setting(0.0, "SGD dampening of the momentum (fedavg; torch.optim.SGD's)", key="dampening",
                               later=True, used_by=("sgd",), ge=0, le=1)
    nesterov: bool = setting(False, "Nesterov momentum (fedavg; torch.optim.SGD's, needs a momentum)",
                             key="nesterov", later=True, used_by=("sgd",))
    weight_decay: float = setting(0.0, "weight decay (fedavg; SGD's and Adam's L2 term, AdamW's decoupled decay)",
                                  key="weight-decay", ge=0)
    beta1: float = setting(0.9, "Adam/AdamW β₁ (fedavg)", key="beta1", later=True, used_by=("adam", "adamw"), ge=0, lt=1)
    beta2: float = setting(0.999, "Adam/AdamW β₂ (fedavg)", key="beta2", later=True, used_by=("adam", "adamw"), ge=0, lt=1)
    eps: float = setting(1e-8, "Adam/AdamW ε (fedavg)", key="eps", later=True, used_by=("adam", "adamw"), gt=0)
    update_scale: str = setting("delta", "send θ₀ − θ_τ or that over lr", choices=UPDATE_SCALES)

    def __post_init__(self) -> None:
        for f in fields(ClientTraining):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name.replace('_', ' ')} must be one of {', '.join(choices)}, "
                                  f"got {getattr(self, f.name)!r}")
            if f.metadata.get("check"):
                try:
                    f.metadata["check"](getattr(self, f.name))
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
        if self.protocol == "fedavg" and (self.lr is None or self.lr <= 0):
            raise ConfigError("fedavg needs a positive local learning rate (client.lr)")
        if self.local_steps < 1 or (self.local_batch_size is not None and self.local_batch_size < 1):
            raise ConfigError("local steps and local batch size must be at least 1")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError("local epochs must be at least 1")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError("momentum and weight decay must not be negative")
        if self.nesterov and not (self.optimizer == "sgd" and self.momentum > 0 and self.dampening == 0):
            raise ConfigError("Nesterov momentum needs SGD with a momentum and no dampening (torch.optim.SGD's rule)")

    @property
    def order(self) -> str:
        """How each epoch orders the examples: ``"seeded"`` (a public seed), ``"private"`` (shuffled
        with the client's own seed: unknown to the server) or ``"in order"``."""
        return "seeded" if self.shuffle_seed is not None else "private" if self.shuffle else "in order"

    def optimizer_of(self, parameters: list[Tensor]) -> torch.optim.Optimizer:
        """The ``torch.optim`` optimizer this training builds over ``parameters``."""
        return OPTIMIZERS.get(self.optimizer).build(parameters, self)

    def public(self, batch_size: int, clients: int = 1, defense: str | None = None) -> PublicHyperparameters:
        """The round's public hyperparameters on a client batch of ``batch_size`` images (each of
        ``clients`` aggregated clients), ``epochs`` resolved into ``local_steps``."""
        values = {f.name: getattr(self, f.name) for f in fields(ClientTraining)}
        if self.epochs is not None:
            values["local_steps"] = epoch_steps(self.epochs, batch_size, self.local_batch_size, self.drop_last)
        return PublicHyperparameters(**values, batch_size=batch_size, clients=clients, defense=defense)


TRAINING_SETTINGS = {f.name: f for f in fields(ClientTraining)}
"""Each :class:`ClientTraining` field by name, with its :func:`setting` metadata."""


def epoch_steps(epochs: int, examples: int, minibatch: int | None, drop_last: bool = False) -> int:
    """Local steps of ``epochs`` passes over ``examples`` in minibatches of ``minibatch`` (the last
    one smaller, or dropped with ``drop_last``; ``None``: one minibatch of all)."""
    size = minibatch or examples
    per_epoch = examples // size if drop_last else -(-examples // size)
    if per_epoch < 1:
        raise ConfigError(f"an epoch of {examples} examples holds no full minibatch of {size} (drop_last)")
    return epochs * per_epoch


def client_training(settings: Mapping[str, Any]) -> ClientTraining:
    """The client's training from a mapping of setting name → value: the run config's client section
    (plus ``model_mode``), or a Flower train config read through its keys. Names that are no
    :class:`ClientTraining` field (the batch size, the defense, the seed) are the caller's."""
    return ClientTraining(**{k: v for k, v in settings.items() if k in TRAINING_SETTINGS})


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

    def minibatches(self, generator: torch.Generator | None = None) -> list[list[int]]:
        """Indices of the client batch used at each local step (FedAvg), in order: each epoch walks
        the batch in minibatches (the last one smaller when they do not divide it, or dropped with
        ``drop_last``), reshuffled with ``torch.randperm`` seeded ``shuffle_seed + epoch`` — PyTorch's
        ``DistributedSampler`` order on one replica after ``set_epoch(epoch)``, so a plain PyTorch
        client can follow it. A private order (``shuffle`` without a seed) is drawn from
        ``generator``, the client's own; without one (the attacker's view) each epoch is taken in
        order, the attacker's guess."""
        size = self.local_batch_size or self.batch_size
        last = self.batch_size - self.batch_size % size if self.drop_last else self.batch_size
        steps: list[list[int]] = []
        epoch = 0
        while len(steps) < self.local_steps:
            order = list(range(self.batch_size))
            if self.shuffle_seed is not None:
                g = torch.Generator().manual_seed(self.shuffle_seed + epoch)
                order = torch.randperm(self.batch_size, generator=g, device="cpu").tolist()  # public, host-side
            elif self.shuffle and generator is not None:
                order = torch.randperm(self.batch_size, generator=generator, device="cpu").tolist()
            for start in range(0, last, size):
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
    """A client's private batch: its inputs in the form of its modality — images in [0, 1]
    (B×C×H×W), or token ids (int64 B×T, right-padded) — and labels (a class per image; a language
    model's next-token targets, B×(T−1) with −100 at padding). Never given to an attack. The field is
    ``images`` for the image code that predates text; ``inputs`` names it for any modality."""

    images: Tensor
    labels: Tensor
    indices: tuple[int, ...] = ()

    @property
    def inputs(self) -> Tensor:
        """The batch's inputs, whatever the modality (the ``images`` field)."""
        return self.images
