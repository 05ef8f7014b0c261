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
from typing import Any, cast, get_args, get_type_hints

from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore import log
from torch import Tensor, nn

from fedleak.defenses import parse_defense
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.aggregation import aggregate_buffers
from fedleak.fl.optimizers import OPTIMIZERS
from fedleak.fl.payload import (
    TRAINING_SETTINGS,
    ClientTraining,
    Payload,
    PublicHyperparameters,
    client_training,
    epoch_steps,
)
from fedleak.integrations.flower.states import state_dict, state_names  # noqa: F401  (re-exported)
from fedleak.models.batchnorm import batch_norm_layers
from fedleak.parameters import trainable
from fedleak.validate import short

DEFAULT_KEYS: dict[str, str] = {
    **{name: f.metadata["key"] for name, f in TRAINING_SETTINGS.items() if f.metadata["key"]},
    "defense": "fedleak-defense"}
"""Each setting fedleak reads from a train config → the entry it reads it under unless told otherwise:
each :class:`~fedleak.fl.ClientTraining` setting's declared key, and the defense spec."""
ALIASES = {"steps": "local_steps", "batch_size": "local_batch_size"}  # TrainKeys(steps=…, batch_size=…)


class TrainKeys:
    """Names of the train-config entries fedleak reads, as the server sends them to each client.

    By default each :class:`~fedleak.fl.ClientTraining` setting is read under the key it declares
    (:data:`DEFAULT_KEYS`: ``lr``, ``local-epochs``, ``local-steps``, ``batch-size`` (the minibatch),
    ``optimizer``, ``momentum``, ``weight-decay``, ``nesterov``, ``beta1``, ``beta2``, ``eps``,
    ``shuffle-seed``, ``shuffle``, ``drop-last``, ``model-mode``) and the defense spec under
    ``fedleak-defense``. An app that names its keys its own way says so either as a mapping from
    fedleak's key to the app's (``TrainKeys({"local-epochs": "epochs"})``) or by setting name
    (``TrainKeys(epochs="epochs", lr="learning-rate")``; ``steps`` and ``batch_size`` name
    ``local_steps`` and ``local_batch_size``). ``keys.lr`` is the entry read for ``lr``.

    ``shuffle-seed`` orders each epoch as PyTorch's ``DistributedSampler(shuffle=True, seed=…)`` on
    one replica after ``set_epoch(epoch)`` does; ``model-mode`` is ``train`` or ``eval`` (batch norm's
    mode during local training); the defense a fedleak defense spec the clients apply to their update
    (e.g. with :func:`~fedleak.integrations.flower.obfuscation_mod`)."""

    def __init__(self, names: Mapping[str, str] | None = None, **settings: str) -> None:
        keys = dict(DEFAULT_KEYS)
        by_key = {key: name for name, key in DEFAULT_KEYS.items()}
        for key, own in (names or {}).items():
            if key not in by_key:
                raise FedleakError(f"TrainKeys: {key!r} is no train-config key fedleak reads; choose from "
                                   f"{', '.join(sorted(by_key))}")
            keys[by_key[key]] = own
        for name, own in settings.items():
            name = ALIASES.get(name, name)
            if name not in keys:
                raise FedleakError(f"TrainKeys: {name!r} is no setting fedleak reads; choose from "
                                   f"{', '.join(sorted(keys))}")
            keys[name] = own
        for name, own in keys.items():
            if not isinstance(own, str) or not own:
                raise FedleakError(f"TrainKeys: the key for {name!r} must be a non-empty string, got {short(own)}")
        self._keys = keys

    def __getattr__(self, name: str) -> str:
        keys = self.__dict__.get("_keys", {})
        name = ALIASES.get(name, name)
        if name not in keys:
            raise AttributeError(name)
        return keys[name]

    def items(self) -> list[tuple[str, str]]:
        """(setting, train-config key) for every setting fedleak reads."""
        return list(self._keys.items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainKeys) and self._keys == other._keys

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._keys.items())))

    def __repr__(self) -> str:
        changed = {n: k for n, k in self._keys.items() if DEFAULT_KEYS[n] != k}
        return f"TrainKeys({', '.join(f'{n}={k!r}' for n, k in changed.items())})"


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


@dataclass(frozen=True)
class TrainingReading:
    """What a server knows of one client's round: the public hyperparameters, where each setting came
    from (``sources``: setting → ``"train config 'lr'"``, ``"known 'momentum'"``, ``"run config
    'local-epochs'"``, ``"reply"`` for the number of examples, ``"assumed"``, or ``"unused"`` for a
    setting the client's optimizer does not read) and the assumptions it made, one line each."""

    hyper: PublicHyperparameters
    sources: dict[str, str]
    assumptions: list[str]

    @property
    def assumed(self) -> list[str]:
        """The settings the audit had to assume (no config, known value or run config gave them)."""
        return [name for name, source in self.sources.items() if source == "assumed"]


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise FedleakError(f"train config {key!r} must be true or false, got {short(value)}")


def _setting(name: str, value: Any, key: str) -> Any:
    """``value`` read from a train config as the :class:`ClientTraining` setting ``name``: its type,
    choices, bounds and check, or one line saying what is wrong."""
    f, kind = TRAINING_SETTINGS[name], _HINTS[name]
    meta = f.metadata
    if kind is bool:
        return _flag(value, key)
    if meta["choices"] or meta["check"]:
        if not isinstance(value, str) or (meta["choices"] and value not in meta["choices"]):
            allowed = f"one of {', '.join(meta['choices'])}" if meta["choices"] else "a name"
            raise FedleakError(f"train config {key!r} must be {allowed}, got {short(value)}")
        try:
            meta["check"] and meta["check"](value)
        except (ValueError, ConfigError) as exc:
            raise FedleakError(f"train config {key!r}: {exc}") from None
        return value
    bounds = meta["bounds"]
    low = bounds.get("ge", bounds.get("gt", -math.inf))
    number = _number(value, key, integer=int in get_args(kind) or kind is int, low=low, strict="gt" in bounds)
    if ("lt" in bounds and number >= bounds["lt"]) or ("le" in bounds and number > bounds["le"]):
        top = f"below {bounds['lt']:g}" if "lt" in bounds else f"at most {bounds['le']:g}"
        raise FedleakError(f"train config {key!r} must be {top}, got {short(value)}")
    return int(number) if int in get_args(kind) or kind is int else float(number)


_HINTS = get_type_hints(ClientTraining)
_READ_APART = {"protocol", "update_scale", "lr", "local_steps", "epochs", "local_batch_size", "shuffle_seed",
               "shuffle", "model_mode"}  # read below with rules of their own; every other setting is read alike


def read_training(config: Mapping[str, Any], examples: int, model: nn.Module, keys: TrainKeys = TrainKeys(),
                  known: Mapping[str, Any] | None = None, max_steps: int | None = MAX_LOCAL_STEPS,
                  run_config: Mapping[str, Any] | None = None) -> TrainingReading:
    """What a server that sent ``config`` knows of one client's round on ``examples`` examples (as the
    reply reported them). Each setting is read under its :class:`TrainKeys` entry from the train config
    the server sent, else from ``known`` (what the server knows from elsewhere), else from the app's
    ``run_config``; failing all three, fedleak assumes ``torch.optim``'s and the DataLoader's defaults
    and says so. More than ``max_steps`` local steps (``local-steps``, or ``local-epochs`` × the
    minibatches of an epoch) is :class:`OutOfBounds`: emulating them would take without end (one
    simulated step per step, at every attack iteration)."""
    places = (("train config", config), ("known", dict(known or {})), ("run config", dict(run_config or {})))
    sources: dict[str, str] = {"protocol": "fedavg", "batch_size": "reply"}
    assumptions: list[str] = []

    def get(name: str) -> Any:
        key = getattr(keys, name)
        for place, values in places:
            if key in values and values[key] is not None:
                sources[name] = f"{place} {key!r}"
                return values[key]
        sources[name] = "assumed"
        return None

    if get("lr") is None:
        raise FedleakError(f"the train config holds no learning rate {keys.lr!r} (nor do known= or the run config): "
                           "the audit cannot emulate the local training")
    settings: dict[str, Any] = {"protocol": "fedavg", "lr": _setting("lr", get("lr"), keys.lr)}
    optimizer = get("optimizer")
    settings["optimizer"] = "sgd" if optimizer is None else _setting("optimizer", optimizer, keys.optimizer)
    if optimizer is None:
        assumptions.append(f"{keys.optimizer!r}: torch.optim.SGD")
    defaults = OPTIMIZERS.get(settings["optimizer"]).defaults
    for name, f in TRAINING_SETTINGS.items():
        if name in _READ_APART or name == "optimizer" or not f.metadata["key"]:
            continue
        used = f.metadata["used_by"] is None or settings["optimizer"] in f.metadata["used_by"]
        value = get(name) if used else None
        if not used:
            sources[name] = "unused"
        elif value is None:
            default = defaults.get(name, f.default)
            why = f.metadata["assumed"] or f"{settings['optimizer']}'s default in torch.optim"
            assumptions.append(f"{getattr(keys, name)!r}: {default!r}, {why}")
        settings[name] = defaults.get(name, f.default) if value is None else _setting(name, value, getattr(keys, name))
    batch = get("local_batch_size")
    if batch is None:
        batch = examples
        assumptions.append(f"{keys.batch_size!r}: one minibatch of all {examples} examples")
    batch = min(_setting("local_batch_size", batch, keys.batch_size), examples)
    drop_last = settings["drop_last"]
    per_epoch = epoch_steps(1, examples, batch, drop_last)
    if get("local_steps") is not None:
        steps = _setting("local_steps", get("local_steps"), keys.steps)
        sources.pop("epochs", None)
    else:
        epochs = get("epochs")
        if epochs is None:
            epochs = 1
            assumptions.append(f"{keys.epochs!r}: one epoch ({per_epoch} step{'s' * (per_epoch > 1)})")
        steps = epoch_steps(_setting("epochs", epochs, keys.epochs), examples, batch, drop_last)
        sources["local_steps"] = sources["epochs"]
    if max_steps is not None and steps > max_steps:
        asked = (f"{keys.steps!r} {steps}" if get("local_steps") is not None
                 else f"{keys.epochs!r} {short(get('epochs'))} ({steps} steps of {batch} examples)")
        raise OutOfBounds(f"train config {asked} asks for more local steps than the {max_steps} the audit "
                          "emulates (max_steps)")
    settings.update(local_steps=steps, local_batch_size=batch)
    seed, shuffle = get("shuffle_seed"), get("shuffle")
    settings["shuffle_seed"] = None if seed is None else _setting("shuffle_seed", seed, keys.shuffle_seed)
    settings["shuffle"] = seed is not None or (shuffle is not None and _setting("shuffle", shuffle, keys.shuffle))
    if seed is not None and shuffle is None:
        sources["shuffle"] = sources["shuffle_seed"]  # a public seed: the client shuffles, in the order it gives
    if seed is None and shuffle is None:
        if batch < examples:
            settings["shuffle"] = True
            assumptions.append(f"{keys.shuffle_seed!r}: each epoch in the client's own order (a shuffling DataLoader "
                               "with a private seed, which the audit cannot follow step by step: it simulates its own)")
        else:
            sources["shuffle"] = sources["shuffle_seed"] = "unused"  # one minibatch: its order changes nothing
    mode = get("model_mode")
    if mode is None:
        mode = "train"
        if batch_norm_layers(model):
            assumptions.append(f"{keys.model_mode!r}: batch norm in train mode (model.train(), batch statistics)")
        else:
            sources["model_mode"] = "unused"
    settings["model_mode"] = _setting("model_mode", mode, keys.model_mode)
    defense = get("defense")
    if defense is None:
        assumptions.append(f"{keys.defense!r}: the update left the client as trained (no obfuscation)")
    elif not isinstance(defense, str):
        raise FedleakError(f"train config {keys.defense!r} must be a defense spec string, got {short(defense)}")
    try:
        pipeline = parse_defense(defense)
        training = client_training(settings)
    except ConfigError as exc:
        raise FedleakError(f"train config: {exc}") from None
    if pipeline.clients != 1:
        raise FedleakError(f"train config {keys.defense!r} may not aggregate: the audit's view says what the server saw")
    return TrainingReading(training.public(examples, defense=pipeline.spec), sources, assumptions)


def public_hyperparameters(config: Mapping[str, Any], examples: int, model: nn.Module, keys: TrainKeys = TrainKeys(),
                           known: Mapping[str, Any] | None = None,
                           max_steps: int | None = MAX_LOCAL_STEPS) -> tuple[PublicHyperparameters, list[str]]:
    """:func:`read_training`'s hyperparameters and assumptions (without a run config)."""
    reading = read_training(config, examples, model, keys, known, max_steps)
    return reading.hyper, reading.assumptions


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
