"""The ServerApp: FedAvg, wrapped in fedleak's LeakageAudit (DAGER), which prints what it recovered."""

from __future__ import annotations

import shutil
import time
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedleak.audit import AuditRecord
from fedleak.integrations.flower import LeakageAudit, SharedBatches
from flower_text.task import Model, adapters, build_model, dataset, public_tokens, results_folder, shared_folder

app = ServerApp()


def describe(record: AuditRecord) -> str:
    """One audited update as text: its verdict, then each original beside what the server recovered
    (PII spans that came back verbatim in [brackets]); without a shared batch, the recovered sentences."""
    lines = [f"round {record.round}, client {record.client}: {record.verdict} — {record.verdict_reason}"]
    for seq in (record.scored or {}).get("texts", []):
        marked = seq["recovered"]
        for span in seq["pii"]:
            if span["recovered"]:
                marked = marked.replace(span["text"], f"[{span['text']}]")
        lines.append(f"  {'=' if seq['exact'] else '≈'} original : {seq['original']}")
        lines.append(f"    recovered: {marked}")
    if record.scored is None:
        lines += [f"    recovered: {t}" for t in record.scoring.preview(record)["texts"]]
    return "\n".join(lines)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    out = results_folder(cfg)
    shared = SharedBatches(shared_folder(cfg)) if cfg["evaluation"] else None
    rounds = [int(r) for r in str(cfg["audit-rounds"]).split(",") if r.strip()]
    tau = float(cfg["attack-tau"])
    strategy = LeakageAudit(
        FedAvg(fraction_evaluate=0.0), model=Model(dict(cfg)), tokenizer=dataset(cfg), public=public_tokens(cfg),
        attack={"name": "dager", "tau1": tau, "tau2": tau, "rank_tol": float(cfg["attack-rank-tol"])},
        rounds=rounds, evaluation=shared, out=out, overwrite=True, workers=int(cfg["workers"]),
    )
    train_config = ConfigRecord({k: cfg[k] for k in ("lr", "momentum", "local-steps", "batch-size")}
                                | {"optimizer": "sgd", "fedleak-defense": "none"})
    start = time.perf_counter()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(adapters(build_model(dict(cfg)))),
                   num_rounds=int(cfg["num-server-rounds"]), train_config=train_config)
    text = "\n\n".join(describe(r) for r in sorted(strategy.records, key=lambda r: (r.round, r.client)))
    (strategy.out / "audit.txt").write_text(text + "\n")
    log(INFO, "fedleak text audit (%.0f s):\n%s\nreport at %s", time.perf_counter() - start, text,
        strategy.out / "report.html")
    if shared is not None:
        shutil.rmtree(shared.folder, ignore_errors=True)
