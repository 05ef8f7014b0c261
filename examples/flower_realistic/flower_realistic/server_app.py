"""The ServerApp: FedAvg over every node, run twice from the same initial model — once plain, once
wrapped in fedleak's LeakageAudit (one seeded client audited per round, in a spawned worker process) —
timing the rounds of each, and the wait for the audits after the last round apart (``timings.json``)."""

from __future__ import annotations

import json
import shutil
import time
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.supercore import log

from fedleak.integrations.flower import LeakageAudit, SharedBatches, TrainKeys
from flower_realistic.task import (
    MEAN,
    STD,
    TEST_FILE,
    TRAIN_FILE,
    MissingData,
    build_model,
    cifar_folder,
    load_batch,
    results_folder,
    shared_folder,
    test_accuracy,
)

KEYS = TrainKeys({"lr": "learning-rate"})  # this app's name for the one entry fedleak reads under another

app = ServerApp()


def federation(strategy: Strategy, grid: Grid, context: Context, rounds: int) -> dict[str, float]:
    """Run ``rounds`` of ``strategy`` from the initial model; the seconds of the rounds (from the start
    of round 1 to the end of the last) and of what ``start`` did after them (a LeakageAudit waits for
    its audits and writes its report there), and the test accuracy after each round."""
    cfg = context.run_config
    stamps: dict[int, float] = {}
    accuracy: dict[int, float] = {}

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        stamps[server_round] = time.perf_counter()  # round 0: before the first round
        model = build_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        accuracy[server_round] = test_accuracy(model, cfg)
        return MetricRecord({"test-accuracy": accuracy[server_round]})

    strategy.start(grid=grid, initial_arrays=ArrayRecord(build_model().state_dict()), num_rounds=rounds,
                   train_config=ConfigRecord({"learning-rate": float(cfg["learning-rate"])}), evaluate_fn=after_round)
    end = time.perf_counter()
    return {"rounds_s": stamps[rounds] - stamps[0], "after_rounds_s": end - stamps[rounds],
            "per_round_s": [stamps[r] - stamps[r - 1] for r in range(1, rounds + 1)],
            "test_accuracy": [accuracy[r] for r in range(rounds + 1)]}


def plain() -> FedAvg:
    return FedAvg(fraction_train=1.0, fraction_evaluate=0.0)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    try:
        for name in (TRAIN_FILE, TEST_FILE):
            load_batch(str(cifar_folder(cfg)), name)
    except MissingData as exc:
        log(WARNING, "skipped: %s", exc)
        return
    out, rounds = results_folder(cfg), int(cfg["num-server-rounds"])
    shared = shared_folder(cfg)
    nodes = len(list(grid.get_node_ids()))
    timings: dict[str, object] = {"clients": nodes, "rounds": rounds,
                                  "examples_per_client": int(cfg["examples-per-client"])}
    for _ in range(int(cfg["warmup-rounds"])):  # untimed: the client processes import torch and load data once
        plain().start(grid=grid, initial_arrays=ArrayRecord(build_model().state_dict()), num_rounds=1,
                      train_config=ConfigRecord({"learning-rate": float(cfg["learning-rate"])}))
    shutil.rmtree(shared, ignore_errors=True)  # batches shared when nobody audits
    timings["without_audit"] = federation(plain(), grid, context, rounds)
    shutil.rmtree(shared, ignore_errors=True)
    started = time.perf_counter()
    audit = LeakageAudit(
        plain(), model=build_model, input_shape=(3, 32, 32), num_classes=10, mean=MEAN, std=STD,
        attack={"name": str(cfg["attack"]), "iterations": int(cfg["attack-iterations"])},
        clients=int(cfg["audited-clients"]), seed=int(cfg["audit-seed"]), keys=KEYS, run_config=cfg,
        evaluation=SharedBatches(shared) if cfg["evaluation"] else None, out=out / "audit", overwrite=True,
        device=str(cfg["device"]), workers=1,
    )
    timings["audit_setup_s"] = time.perf_counter() - started
    timings["with_audit"] = federation(audit, grid, context, rounds)
    timings["audited_updates"] = len(audit.records)
    shutil.rmtree(shared, ignore_errors=True)
    without, with_ = timings["without_audit"], timings["with_audit"]
    timings["ratio"] = with_["rounds_s"] / without["rounds_s"]  # type: ignore[index]
    out.mkdir(parents=True, exist_ok=True)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    log(INFO, "rounds without audit %.1f s, with audit %.1f s (ratio %.2f×); after the last round the audit "
        "waited %.1f s for its attacks; results in %s", without["rounds_s"], with_["rounds_s"],  # type: ignore[index]
        timings["ratio"], with_["after_rounds_s"], audit.out)  # type: ignore[index]
