"""Flower's records as fedleak's types: an ``ArrayRecord`` as a state dict, the train config a
server sent as :class:`~fedleak.fl.PublicHyperparameters` (saying what had to be assumed), and the
arrays sent and returned as a :class:`~fedleak.fl.Payload`.

The train config is what the server knows for certain: it sent it. :class:`TrainKeys` names the
entries fedleak reads (Flower leaves their names to the app). A setting the config does not hold is
taken from ``known`` (what the server knows from elsewhere, e.g. the app's run config); failing
that, fedleak assumes PyTorch's defaults and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import WARNING
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore import log
from torch import Tensor, nn

from fedleak.defenses import parse_defense
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.aggregation import aggregate_buffers
from fedleak.fl.payload import MODEL_MODES, SGD_OPTIONS, Payload, PublicHyperparameters, client_training, epoch_steps
from fedleak.models.batchnorm import batch_norm_layers
from fedleak.parameters import trainable
from fedleak.validate import short


@dataclass(frozen=True)
class TrainKeys:
    """Names of the train-config entries fedleak reads, as the server sends them to each client.

    Each field is the :class:`~fedleak.fl.ClientTraining` setting of its name (``steps`` is
    ``local_steps``, ``batch_size`` the minibatch ``local_batch_size``), and a field for each of
    :data:`~fedleak.fl.payload.SGD_OPTIONS`.

    ``lr``, ``momentum`` and ``weight_decay`` are ``torch.optim.SGD``'s (a fresh optimizer each
    round); ``epochs`` passes over the client's examples in minibatches of ``batch_size`` (the last
    one smaller), or ``steps`` minibatch steps; ``shuffle_seed`` orders each epoch as PyTorch's
    ``DistributedSampler(shuffle=True, seed=…)`` on one replica after ``set_epoch(epoch)`` does;
    ``model_mode`` is ``train`` or ``eval`` (batch norm's mode during local training); ``defense`` a
    fedleak defense spec the clients apply to their update (e.g. with
    :func:`~fedleak.integrations.flower.obfuscation_mod`)."""

    lr: str = "lr"
    epochs: str = "local-epochs"
    steps: str = "local-steps"
    batch_size: str = "batch-size"
    momentum: str = "momentum"
    weight_decay: str = "weight-decay"
    shuffle_seed: str = "shuffle-seed"
    model_mode: str = "model-mode"
    defense: str = "fedleak-defense"


MAX_LOCAL_STEPS = 10_000  # local steps the audit emulates at most (a larger value is refused, not followed)
MAX_EXAMPLES = 10_000  # examples behind one update the server's audit attacks at most


class OutOfBounds(FedleakError):
    """A value from the other side (the train config a server sent, the example count a client
    reported) beyond what the audit emulates: the audit refuses it rather than run without end."""


def only(content: RecordDict, kind: type, what: str) -> Any:
    """The one record of ``kind`` in a message's content (Flower's strategies send and expect one)."""
    records = [r for r in content.values() if isinstance(r, kind)]
    if len(records) != 1:
        raise FedleakError(f"{what} holds {len(records)} {kind.__name__}s; the audit needs exactly one")
    return records[0]


def state_names(record: ArrayRecord, model: nn.Module, what: str) -> dict[str, str]:
    """Each key of ``record`` → the name in ``model``'s state dict it holds: the key itself, or, when
    the record is a plain list of arrays (keys "0", "1", …), the name at that position. Every
    parameter must be there; a missing buffer is allowed (the caller decides)."""
    reference = model.state_dict()
    keys = list(record.keys())
    if keys == [str(i) for i in range(len(keys))] and len(keys) == len(reference) and keys != list(reference):
        names = dict(zip(keys, reference))  # positional, as ArrayRecord(list of ndarrays) numbers them
    else:
        names = {k: k for k in keys}
    unexpected = [k for k, n in names.items() if n not in reference]
    if unexpected:
        raise FedleakError(f"{what} holds {short(unexpected[0])!r}, which names nothing of the audited model")
    missing = [n for n, _ in model.named_parameters() if n not in names.values()]
    if missing:
        raise FedleakError(f"{what} lacks parameter {missing[0]!r} of the audited model")
    return names


def state_dict(record: ArrayRecord, model: nn.Module, what: str) -> dict[str, Tensor]:
    """``record`` as tensors named like ``model``'s state dict (see :func:`state_names`), each
    checked against the model's shape, in its dtype and on its device (a payload built from them
    lands where the audit's model is)."""
    reference = model.state_dict()
    names = state_names(record, model, what)
    state = {}
    for key, name in names.items():
        tensor = torch.from_numpy(record[key].numpy().copy())
        if tuple(tensor.shape) != tuple(reference[name].shape):
            raise FedleakError(f"{what}: {name!r} has shape {tuple(tensor.shape)}, the model's {tuple(reference[name].shape)}")
        state[name] = tensor.to(device=reference[name].device, dtype=reference[name].dtype)
    return state


def num_examples(metrics: MetricRecord, key: str, what: str, limit: int | None = MAX_EXAMPLES) -> int:
    """How many examples a client trained on, as it reported them under ``key`` (FedAvg's weight);
    more than ``limit`` is :class:`OutOfBounds` (the attack would build that many images)."""
    value = metrics.get(key)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1
            or value != int(value)):
        raise FedleakError(f"{what} reports no whole number of examples under {key!r} (got {short(value)}); "
                           "the audit needs it to know the batch behind the update")
    if limit is not None and value > limit:
        raise OutOfBounds(f"{what} reports {int(value)} examples under {key!r}, more than the {limit} the audit "
                          "attacks at once (max_examples)")
    return int(value)


def _number(value: Any, key: str, integer: bool = False, low: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = value == int(value)
    if not ok or value < low or (strict and value == low):
        kind = "a whole number" if integer else "a number"
        bound = f"{'>' if strict else '≥'} {low:g}"
        raise FedleakError(f"train config {key!r} must be {kind} {bound}, got {short(value)}")
    return value


def public_hyperparameters(config: Mapping[str, Any], examples: int, model: nn.Module, keys: TrainKeys = TrainKeys(),
                           known: Mapping[str, Any] | None = None,
                           max_steps: int | None = MAX_LOCAL_STEPS) -> tuple[PublicHyperparameters, list[str]]:
    """What a server that sent ``config`` knows of one client's round on ``examples`` examples, and
    the assumptions it had to make (one line each). More than ``max_steps`` local steps (``local-steps``,
    or ``local-epochs`` × the minibatches of an epoch) is :class:`OutOfBounds`: emulating them would
    take without end (one simulated step per step, at every attack iteration)."""
    known = dict(known or {})
    assumptions: list[str] = []

    def get(key: str) -> Any:
        return config[key] if key in config else known.get(key)

    if get(keys.lr) is None:
        raise FedleakError(f"the train config holds no learning rate {keys.lr!r} (nor does known=): the audit "
                           "cannot emulate the local training")
    lr = float(_number(get(keys.lr), keys.lr, strict=True))
    batch = get(keys.batch_size)
    if batch is None:
        batch = examples
        assumptions.append(f"{keys.batch_size!r}: one minibatch of all {examples} examples")
    batch = min(int(_number(batch, keys.batch_size, integer=True, low=1)), examples)
    per_epoch = epoch_steps(1, examples, batch)
    if get(keys.steps) is not None:
        steps = int(_number(get(keys.steps), keys.steps, integer=True, low=1))
    else:
        epochs = get(keys.epochs)
        if epochs is None:
            epochs = 1
            assumptions.append(f"{keys.epochs!r}: one epoch ({per_epoch} step{'s' * (per_epoch > 1)})")
        steps = epoch_steps(int(_number(epochs, keys.epochs, integer=True, low=1)), examples, batch)
    if max_steps is not None and steps > max_steps:
        asked = (f"{keys.steps!r} {steps}" if get(keys.steps) is not None
                 else f"{keys.epochs!r} {short(get(keys.epochs))} ({steps} steps of {batch} examples)")
        raise OutOfBounds(f"train config {asked} asks for more local steps than the {max_steps} the audit "
                          "emulates (max_steps)")
    settings: dict[str, Any] = {"protocol": "fedavg", "lr": lr, "local_steps": steps, "local_batch_size": batch}
    for name in SGD_OPTIONS:  # each is torch.optim.SGD's argument, read under the TrainKeys entry of its name
        key = getattr(keys, name)
        if get(key) is None:
            assumptions.append(f"{key!r}: 0 (torch.optim.SGD's default)")
        settings[name] = float(_number(get(key) or 0.0, key))
    seed = get(keys.shuffle_seed)
    if seed is not None:
        seed = int(_number(seed, keys.shuffle_seed, integer=True))
    elif batch < examples:
        assumptions.append(f"{keys.shuffle_seed!r}: each epoch walks the examples in the client's own order (a "
                           "client that shuffles with a private seed cannot be followed step by step)")
    mode = get(keys.model_mode)
    if mode is None:
        mode = "train"
        if batch_norm_layers(model):
            assumptions.append(f"{keys.model_mode!r}: batch norm in train mode (model.train(), batch statistics)")
    if mode not in MODEL_MODES:
        raise FedleakError(f"train config {keys.model_mode!r} must be train or eval, got {short(mode)}")
    defense = get(keys.defense)
    if defense is None:
        assumptions.append(f"{keys.defense!r}: the update left the client as trained (no obfuscation)")
    elif not isinstance(defense, str):
        raise FedleakError(f"train config {keys.defense!r} must be a defense spec string, got {short(defense)}")
    try:
        pipeline = parse_defense(defense)
    except ConfigError as exc:
        raise FedleakError(f"train config {keys.defense!r}: {exc}") from None
    if pipeline.clients != 1:
        raise FedleakError(f"train config {keys.defense!r} may not aggregate: the audit's view says what the server saw")
    training = client_training({**settings, "shuffle_seed": seed, "model_mode": mode})
    return training.public(examples, defense=pipeline.spec), assumptions


def build_payload(sent: Mapping[str, Tensor], returned: Mapping[str, Tensor], hyper: PublicHyperparameters,
                  model: nn.Module) -> tuple[Payload, list[str]]:
    """The server's view of one update: the state it sent, Δ = sent − returned for every trainable
    parameter, the returned buffers (batch-norm statistics). Buffers the server did not send are the
    model's own initial values (an assumption, returned as such)."""
    assumptions = []
    own = model.state_dict()
    state = {}
    for name, value in own.items():
        if name in sent:
            state[name] = sent[name]
        else:
            state[name] = value.detach().clone()
            assumptions.append(f"buffer {name!r} was not sent: the model's initial value")
    update = {n: sent[n] - returned[n] for n, _ in trainable(model)}
    buffers = {n: returned[n] for n, _ in model.named_buffers() if n in returned}
    return Payload(model_state=state, update=update, hyper=hyper, buffers=buffers), assumptions


def mean_update(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float], sent: Mapping[str, Tensor],
                model: nn.Module) -> dict[str, Tensor]:
    """The returned state a server under secure aggregation learns: the ``weights``-weighted mean
    of the clients' parameters, and their buffers combined as FedAvg combines them."""
    total = float(sum(weights))
    out = {n: cast(Tensor, sum(w * s[n] for w, s in zip(weights, states))) / total for n, _ in trainable(model)}
    start = {n: sent[n] for n, _ in model.named_buffers() if n in sent and all(n in s for s in states)}
    return out | aggregate_buffers(start, [{n: s[n] for n in start} for s in states], list(weights))


def config_dict(record: ConfigRecord | None) -> dict[str, Any]:
    """A plain copy of a ConfigRecord (the server's strategy may change its own afterwards)."""
    return {} if record is None else {k: v for k, v in record.items()}


def refusal(message: Message, reason: str) -> Message:
    """The error reply a client mod sends instead of an update it withholds: Flower's strategies count
    it as a failure and aggregate the other replies (its ``reason`` is logged on both sides)."""
    log(WARNING, "%s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=message)
