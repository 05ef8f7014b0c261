"""Audit real Flower federations (``pip install 'fedleak[flower]'``, Flower's Message API, 1.42).

Server side, :class:`LeakageAudit` wraps the ServerApp's strategy and attacks the updates it
receives — in a worker off the round thread (a spawned process by default, or Ray tasks:
:mod:`~fedleak.integrations.flower.worker`), so the rounds do not wait for the attacks — writing a
results folder that ``fedleak runs`` and ``fedleak report`` read (the report when the federation
ends, or on demand). Client side,
:func:`leakage_gate` is a mod that scores an update's leakage against the client's own batch before
it leaves (and can withhold it), :func:`obfuscation_mod` applies a fedleak defense to what a client
sends, and :func:`record_batch` is how the ClientApp's train function tells the mods which examples
it trained on. :class:`SharedBatches` lets a *simulated* client share its batch with the auditor for
scoring only.

    from fedleak.integrations.flower import LeakageAudit

    strategy = LeakageAudit(FedAvg(), model=Net, input_shape=(3, 32, 32), num_classes=10,
                            mean=MEAN, std=STD, rounds=[1, 3], clients=1, out="/abs/path/audit")
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3, train_config=ConfigRecord({"lr": 0.05}))
"""

from fedleak.integrations.flower.batches import SharedBatches, record_batch, recorded_batch
from fedleak.integrations.flower.gate import GATE_SCORES, leakage_gate
from fedleak.integrations.flower.obfuscation import obfuscation_mod
from fedleak.integrations.flower.records import TrainKeys
from fedleak.integrations.flower.strategy import LeakageAudit

__all__ = ["GATE_SCORES", "LeakageAudit", "SharedBatches", "TrainKeys", "leakage_gate", "obfuscation_mod",
           "record_batch", "recorded_batch"]
