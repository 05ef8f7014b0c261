"""``obfuscation_mod``: any fedleak update defense, applied by a Flower client to what it sends.

The client's update Δ = θ_global − θ_trained (its trainable parameters) goes through the defense's
update stages (``topk:sparsity=0.9``, ``quantize:bits=4``, ``noise:snr_db=10``, ``clip:c=1``, …)
and the reply carries θ_global − φ(Δ); buffers travel as they are. The spec is given to the mod, or
— like Flower's ``fixedclipping_mod`` takes its norm from the server — read from the train config
(``fedleak-defense``), which also tells the server's audit what the clients do. Noise is drawn from
the client's own private seed (OS entropy unless given; a given seed is mixed with the round and
the node, see :func:`round_seed`, so no two rounds' noise is the same). Defenses that change how
the client trains (DP-SGD) or that aggregate are no update transform and are refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
from collections.abc import Callable
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from torch import nn

from fedleak.defenses import DefensePipeline, parse_defense
from fedleak.device import device_of, generator
from fedleak.errors import ConfigError
from fedleak.integrations.flower.batches import is_train
from fedleak.integrations.flower.records import TrainKeys, only, refusal, state_dict, state_names
from fedleak.parameters import trainable


def update_defense(spec: str | None) -> DefensePipeline:
    """``spec`` parsed, with update stages only (no DP-SGD gradient stage, no aggregation)."""
    pipeline = parse_defense(spec)
    kinds = {s.stage for s in pipeline.stages}
    if kinds - {"update"}:
        raise ConfigError(f"defense {spec!r}: a client mod can only transform the update it sends "
                          f"(no {', '.join(sorted(kinds - {'update'}))} stage)")
    return pipeline


COUNT_KEY = "fedleak.obfuscation"  # in the node's context.state: how many train replies this mod has treated


def round_seed(seed: int | None, message: Message, context: Context) -> int:
    """The seed of one reply's noise: fresh OS entropy without ``seed``; with it, a hash of (seed,
    the server round, the node, how many train replies this node's mod treated before). Noise that
    repeated from round to round would cancel in the difference of two rounds' updates; the round
    comes from the other side (the train config's ``server-round``, else the message's group id), so
    the node's own count — kept in ``context.state``, which never leaves the node — is mixed in too:
    a server that sends the same round twice still gets fresh noise. The same seed, round, node and
    count give the same noise (a federation re-run draws it again)."""
    if seed is None:
        return secrets.randbits(63)
    config = next(iter(message.content.config_records.values()), ConfigRecord())
    server_round = config.get("server-round", message.metadata.group_id)
    state = context.state.config_records.get(COUNT_KEY, ConfigRecord({"count": 0}))
    count = int(cast(int, state.get("count", 0)))  # this mod writes an int
    context.state[COUNT_KEY] = ConfigRecord({"count": count + 1})
    key = json.dumps([int(seed), str(server_round), int(context.node_id), count])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def obfuscation_mod(model: nn.Module | Callable[[], nn.Module], spec: str | None = None,
                    keys: TrainKeys = TrainKeys(), seed: int | None = None) -> Mod:
    """A client mod applying defense ``spec`` (or the train config's ``keys.defense`` entry when
    ``spec`` is None; no defense when neither is set) to each train reply's update. ``model`` (a
    module or a function building one) says which arrays are trainable parameters; the defense
    runs on its device (its noise drawn there), the reply's arrays go back through the host."""
    architecture = model() if callable(model) and not isinstance(model, nn.Module) else copy.deepcopy(model)
    fixed = update_defense(spec) if spec is not None else None
    params = [n for n, _ in trainable(architecture)]

    def obfuscate(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        if not is_train(message) or reply.has_error():
            return reply
        try:
            config = next(iter(message.content.config_records.values()), ConfigRecord())
            pipeline = fixed if fixed is not None else update_defense(cast(str | None, config.get(keys.defense)))  # the server sends a spec
            if not pipeline.stages:
                return reply
            sent = state_dict(only(message.content, ArrayRecord, "the train message"), architecture, "the global model")
            record_key, record = next((k, r) for k, r in reply.content.items() if isinstance(r, ArrayRecord))
            names = state_names(record, architecture, "the reply")
            returned = state_dict(record, architecture, "the reply")
            draws = generator(round_seed(seed, message, context), device_of(architecture))
            update = pipeline.on_client({n: sent[n] - returned[n] for n in params}, draws)
            arrays = {}
            for key, name in names.items():
                value = sent[name] - update[name] if name in update else returned[name]
                arrays[key] = Array(np.asarray(value.to(returned[name].dtype).cpu().numpy()))
            reply.content[record_key] = ArrayRecord(arrays)
        except Exception as exc:  # an update the defense could not treat does not leave untreated
            return refusal(message, f"fedleak obfuscation mod could not apply the defense, so the update was "
                                    f"withheld: {exc}")
        return reply

    return obfuscate
