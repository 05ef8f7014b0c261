"""The ClientApp: plain local training, plus the fedleak mods the run config switches on."""

from __future__ import annotations

from functools import lru_cache

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedleak.integrations.flower import SharedBatches, leakage_gate, obfuscation_mod
from flower_audit.task import build_model, normalisation, shared_folder, train


@lru_cache(maxsize=4)
def client_mods(gate: bool, threshold: float, shared: str, mean: tuple, std: tuple) -> tuple[Mod, ...]:
    """Outermost first: the gate sees the update as it finally leaves, after the defense."""
    mods: list[Mod] = []
    if gate:
        mods.append(leakage_gate(build_model, num_classes=10, mean=mean, std=std, budget_s=20.0,
                                 threshold=threshold if threshold >= 0 else None))
    if shared:
        mods.append(SharedBatches(shared).mod())
    mods.append(obfuscation_mod(build_model))  # applies the train config's fedleak-defense, if any
    return tuple(mods)


def configured_mods(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The fedleak mods, built from the run config (which a mod only sees at call time)."""
    cfg = context.run_config
    mean, std = normalisation(cfg)
    shared = str(shared_folder(cfg)) if cfg["evaluation"] else ""
    chain = call_next
    for mod in reversed(client_mods(bool(cfg["gate"]), float(cfg["gate-threshold"]), shared, mean, std)):
        chain = (lambda m, nxt: lambda msg, ctx: m(msg, ctx, nxt))(mod, chain)
    return chain(message, context)


app = ClientApp(mods=[configured_mods])


@app.train()
def fit(message: Message, context: Context) -> Message:
    model, examples, loss = train(message, context)
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord({"num-examples": examples, "train-loss": loss})}),
                   reply_to=message)
