"""The ServerApp: FedAvg, wrapped in fedleak's LeakageAudit — once as the clients send their updates,
once with the clients applying a defense (announced in the train config, so the audit knows it)."""

from __future__ import annotations

import shutil
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedleak.integrations.flower import LeakageAudit, SharedBatches
from flower_audit.task import build_model, normalisation, results_folder, shared_folder

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    out = results_folder(cfg)
    mean, std = normalisation(cfg)
    shared = SharedBatches(shared_folder(cfg)) if cfg["evaluation"] else None
    rounds = [int(r) for r in str(cfg["audit-rounds"]).split(",") if r.strip()]
    train_config = {k: cfg[k] for k in ("lr", "momentum", "weight-decay", "local-epochs", "batch-size", "shuffle-seed")}
    for variant, defense in (("no-defense", "none"), ("defense", str(cfg["defense"]))):
        config = ConfigRecord(train_config | {"fedleak-defense": defense})  # announced: the audit knows it
        strategy = LeakageAudit(
            FedAvg(fraction_evaluate=0.0),
            model=build_model, input_shape=(3, 32, 32), num_classes=10, mean=mean, std=std,
            attack={"name": "ig", "iterations": int(cfg["attack-iterations"]), "matching": "auto"},
            rounds=rounds, evaluation=shared, out=out / variant, overwrite=True, device=str(cfg["device"]),
        )
        strategy.start(grid=grid, initial_arrays=ArrayRecord(build_model().state_dict()),
                       num_rounds=int(cfg["num-server-rounds"]), train_config=config)
        log(INFO, "fedleak audit (%s): report at %s", variant, out / variant / "report.html")
    if shared is not None:
        shutil.rmtree(shared.folder, ignore_errors=True)
