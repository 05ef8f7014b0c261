"""Realistic FL clients (issue #23): how well the audit's simulation explains what they send, and what
the audit makes of them.

The clients are ``examples/flower_realistic``'s (``--model realistic``, the default: its ``Net`` and its
disjoint shards of CIFAR-10's ``data_batch_1``, ``partition-seed`` 0, from ``../shared/data``; any
fedleak model name instead takes fedleak's model at width 0.5 on the same shards): ``--examples``
images each, a ``DataLoader`` over them with batches of 32, ``torch.optim.SGD`` (lr 0.05, momentum 0.9,
weight decay 5e-4) or Adam (lr 1e-3), ``--epochs`` local epochs, batch norm in train mode. For each
client the benchmark reads the training the way the Flower audit does
(:func:`fedleak.integrations.flower.records.read_training`) from what the server sent, under three
declarations:

* ``declared, known order``: the train config sends every setting, the client orders each epoch with
  the public ``shuffle-seed`` (a ``DistributedSampler``);
* ``declared, private order``: same settings, the client's ``DataLoader(shuffle=True)`` draws its own
  order (the audit simulates its own order: the issue's "unknown order");
* ``nothing declared``: the train config sends only the lr (the audit assumes one full-batch SGD step
  without momentum — the mis-specification the issue found).

Per client and declaration it measures:

* ``cosine``: between the client's real update and the update the attacker's simulation
  (:meth:`fedleak.attacks.simulation.Simulation.replay`) computes from the client's *own true
  examples*, in float64 — 1 means the simulation is the client's training; anything less is what no
  attack can get past (goal ≥ 0.999 with a known order);
* the mis-specification check (:func:`fedleak.specification.check_specification` on the payload, the
  server's public images: the first 2,000 of the test split with their labels): consistent or not,
  ``norm_z``, ``profile_z`` (goal: ``nothing declared`` flagged);
* ``tv``: the total-variation error of :func:`fedleak.attacks.label_counts.recover_label_counts`
  (defaults: simulated softmax means, the same public images) against the client's true class counts
  (goal ≤ 0.1 at 500 examples); Adam's updates are refused by the count, and the reason is kept;
* the verdict of :func:`fedleak.audit.audit_update` (truth = the client's batch, for scoring after the
  attack) with IG at ``--budget`` iterations; ``image verdict`` is :func:`fedleak.verdicts.decide` on
  the same record's findings without the label-histogram evidence (what the image attack alone
  concluded: at a budget under IG's stated minimum it can only be ``inconclusive``). IG at its stated
  minimum (:data:`fedleak.verdicts.MIN_ITERATIONS`, 1000) costs about 0.75 s an iteration for 500
  images on a shared 2-core CPU (12+ minutes an audit), so it runs only on the first ``--at-minimum``
  clients of the SGD, known-order row set (rows marked ``at minimum``).

The federation's slowdown with auditing (goal ≤ 1.2×) is measured in ``examples/flower_realistic``,
not here.

How to run (needs ../shared/data; the issue's scale takes ~40 minutes on 2 shared cores)::

    python benchmarks/realistic_clients.py --clients 10 --examples 500 --epochs 2   # the issue's scale
    python benchmarks/realistic_clients.py --clients 2 --examples 100 --epochs 1 --at-minimum 0 --out /tmp/r.json

Prints a table (one line per optimizer and declaration) and writes ``benchmarks/realistic_clients.json``
(the per-client rows and the summary), rewritten after every row set.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fedleak.attacks import AttackerKnowledge
from fedleak.attacks.base import build_attack
from fedleak.attacks.label_counts import histogram_error, label_histogram, recover_label_counts
from fedleak.attacks.simulation import Simulation
from fedleak.audit import AuditRecord, audit_update
from fedleak.calibration import calibrated
from fedleak.data import load_dataset
from fedleak.errors import FedleakError
from fedleak.fl import Payload
from fedleak.fl.payload import ClientData
from fedleak.integrations.flower.records import read_training
from fedleak.models import create_model
from fedleak.specification import check_specification
from fedleak.verdicts import Findings, decide, minimum_iterations, order_unknown

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TASK = ROOT / "examples" / "flower_realistic" / "flower_realistic" / "task.py"
CASES = ("declared, known order", "declared, private order", "nothing declared")
AUDIT_ERROR = "audit error"  # audit_update raised instead of giving a verdict
PUBLIC = 2000  # the server's labelled public images: the first of the test split


def example_task() -> Any:
    """``examples/flower_realistic``'s task module (model, shards, normalisation), loaded by path."""
    spec = importlib.util.spec_from_file_location("flower_realistic_task", TASK)
    if spec is None or spec.loader is None or not TASK.is_file():
        raise SystemExit(f"needs {TASK}")
    task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task)
    return task


def client_round(model, x, y, optimizer, epochs, batch, seed, private):
    """The app's client, plain PyTorch: returns its state dict after ``epochs`` over a DataLoader."""
    local = copy.deepcopy(model).train()
    dataset = TensorDataset(x, y)
    if private:
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(10_000 + seed))
        sampler = None
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler)
    opt = (torch.optim.SGD(local.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) if optimizer == "sgd"
           else torch.optim.Adam(local.parameters(), lr=1e-3))
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(local(xb), yb).backward()
            opt.step()
    return local.state_dict()


def cosine(a: dict, b: dict) -> float:
    """Cosine between two updates over every tensor of ``a``, in float64."""
    u = torch.cat([t.detach().double().flatten() for t in a.values()])
    v = torch.cat([b[n].detach().double().flatten() for n in a])
    return float(torch.dot(u, v) / (u.norm() * v.norm()))


def sent_config(optimizer: str, epochs: int, case: str, seed: int) -> dict[str, Any]:
    """The train config the server sent under ``case``."""
    sent: dict[str, Any] = {"lr": 0.05 if optimizer == "sgd" else 1e-3, "optimizer": optimizer, "local-epochs": epochs,
                            "batch-size": 32, "model-mode": "train", "drop-last": False, "fedleak-defense": "none"}
    if optimizer == "sgd":
        sent |= {"momentum": 0.9, "weight-decay": 5e-4, "nesterov": False, "dampening": 0}
    else:
        sent |= {"weight-decay": 0.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    if case == "declared, known order":
        return sent | {"shuffle-seed": seed}
    if case == "declared, private order":
        return sent | {"shuffle": True}
    return {"lr": sent["lr"]}


def image_verdict(record: AuditRecord, attack: str, assumptions: list[str]) -> str:
    """:func:`decide` on the record's findings less the label-histogram evidence: the image attack's own."""
    probability, bound = calibrated(record.update_fit, record.hyper.observed_images) or (None, "estimate")
    ev = record.evaluation
    findings = Findings(attack, record.iterations_run, record.min_iterations, record.hyper.observed_images,
                        record.specification, record.truth_fit, record.recognisable,
                        ev.label_accuracy if ev is not None else None, probability, bound,
                        order_unknown(record.hyper, assumptions), None)
    return decide(findings).verdict


def measure(model, knowledge, public, x01, y, norm, optimizer, case, k, args, iterations) -> dict[str, Any]:
    """One client under one declaration: its round, then every measurement of the module docstring."""
    x = norm(x01)
    after = client_round(model, x, y, optimizer, args.epochs, 32, seed=k, private=case != CASES[0])
    before = model.state_dict()
    update = {n: before[n] - after[n] for n, _ in model.named_parameters()}
    reading = read_training(sent_config(optimizer, args.epochs, case, k), len(y), model)
    payload = Payload(before, update, reading.hyper, {n: after[n] for n, _ in model.named_buffers()})
    row: dict[str, Any] = {"optimizer": optimizer, "case": case, "client": k, "examples": len(y),
                           "epochs": args.epochs, "assumed": reading.assumptions}
    t = time.perf_counter()
    row["cosine"] = cosine(Simulation(payload, knowledge).replay(x, y), update)
    row["simulation_s"] = time.perf_counter() - t
    t = time.perf_counter()
    check = check_specification(payload, knowledge, *public, seed=k)
    row |= {"consistent": check.consistent, "norm_z": check.norm_z, "profile_z": check.profile_z,
            "check_reason": check.reason, "check_s": time.perf_counter() - t}
    t = time.perf_counter()
    try:
        counts = recover_label_counts(payload, knowledge, *public)
        true = label_histogram(y, knowledge.num_classes)
        row |= {"tv": histogram_error(counts, true), "counts": counts.tolist(), "true_counts": true.tolist()}
    except FedleakError as exc:
        row |= {"tv": None, "tv_reason": str(exc)}
    row["counts_s"] = time.perf_counter() - t
    attack = build_attack("ig", {"iterations": iterations})
    t = time.perf_counter()
    try:
        record = audit_update(payload, knowledge, attack, round=1, client=str(k), seed=k,
                              assumptions=reading.assumptions, truth=ClientData(x01, y), check=check,
                              public=public[0], public_labels=public[1], sources=reading.sources)
    except FedleakError as exc:  # the audit gave no verdict: recorded as such, never made up
        return row | {"iterations": iterations, "verdict": AUDIT_ERROR, "image_verdict": AUDIT_ERROR,
                      "verdict_reason": f"audit_update raised: {exc}", "audit_s": time.perf_counter() - t}
    row |= {"iterations": record.iterations_run, "min_iterations": record.min_iterations,
            "at_minimum": record.iterations_run >= minimum_iterations("ig"), "verdict": record.verdict,
            "verdict_reason": record.verdict_reason, "image_verdict": image_verdict(record, "ig", reading.assumptions),
            "truth_fit": record.truth_fit, "psnr": record.evaluation.psnr if record.evaluation else None,
            "audit_histogram_error": record.label_counts.error if record.label_counts else None,
            "audit_s": time.perf_counter() - t}
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row set (optimizer × declaration, same budget): means, extremes, counts, the verdict mix."""
    tv = [r["tv"] for r in rows if r["tv"] is not None]
    return {"optimizer": rows[0]["optimizer"], "case": rows[0]["case"], "clients": len(rows),
            "examples": rows[0]["examples"], "epochs": rows[0]["epochs"], "iterations": rows[0]["iterations"],
            "cosine_mean": statistics.mean(r["cosine"] for r in rows), "cosine_min": min(r["cosine"] for r in rows),
            "consistent": sum(r["consistent"] for r in rows),
            "norm_z_median": statistics.median(r["norm_z"] for r in rows),
            "profile_z_median": statistics.median(r["profile_z"] for r in rows),
            "tv_mean": statistics.mean(tv) if tv else None, "tv_max": max(tv) if tv else None,
            "tv_reason": None if tv else rows[0].get("tv_reason"),
            "verdicts": dict(Counter(r["verdict"] for r in rows)),
            "image_verdicts": dict(Counter(r["image_verdict"] for r in rows)),
            "seconds_per_client": statistics.mean(r["simulation_s"] + r["check_s"] + r["counts_s"] + r["audit_s"]
                                                  for r in rows)}


def mix(counts: dict[str, int]) -> str:
    short = {"leaks": "L", "no leak found": "N", "inconclusive": "I", AUDIT_ERROR: "E"}
    return " ".join(f"{short[v]}{n}" for v, n in sorted(counts.items()))


def line(s: dict[str, Any]) -> str:
    tv = "refused" if s["tv_mean"] is None else f"{s['tv_mean']:.3f}/{s['tv_max']:.3f}"
    return (f"{s['optimizer']:5} {s['case']:24} {s['iterations']:5} {s['clients']:3} {s['cosine_mean']:9.6f} "
            f"{s['cosine_min']:9.6f} {s['consistent']:3}/{s['clients']:<3} {s['norm_z_median']:+7.1f} "
            f"{s['profile_z_median']:6.1f} {tv:>12} {mix(s['verdicts']):>8} {mix(s['image_verdicts']):>8} "
            f"{s['seconds_per_client']:6.1f}")


HEADER = (f"{'opt':5} {'declaration':24} {'iters':>5} {'n':>3} {'cos mean':>9} {'cos min':>9} {'consist':>7} "
          f"{'norm z':>7} {'prof z':>6} {'TV mean/max':>12} {'verdict':>8} {'image':>8} {'s/cli':>6}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="realistic", help="realistic (the example's Net) or a fedleak model name")
    ap.add_argument("--optimizers", default="sgd,adam")
    ap.add_argument("--budget", type=int, default=5, help="IG iterations of every client's audit")
    ap.add_argument("--at-minimum", type=int, default=1,
                    help="clients (SGD, known order) audited again with IG at its stated minimum")
    ap.add_argument("--cases", default="0,1,2", help="declarations to run, as indices into CASES")
    ap.add_argument("--append", action="store_true", help="add the row sets to those already in --out")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "realistic_clients.json"))
    args = ap.parse_args()
    if not (DATA / "cifar-10-batches-py").is_dir():
        raise SystemExit(f"needs CIFAR-10 under {DATA}")
    started = time.perf_counter()
    task = example_task()
    model = task.build_model() if args.model == "realistic" else create_model(args.model, 10, 3, 32, width=0.5, seed=0)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 32, 32), 10, task.MEAN, task.STD)
    test = load_dataset("cifar10", root=DATA, split="test")
    public = (test.images(range(PUBLIC)), test.label_of(list(range(PUBLIC))))
    shard = {"data-root": str(DATA / "cifar-10-batches-py"), "examples-per-client": args.examples, "partition-seed": 0}
    shards = [task.client_data(shard, k, args.clients) for k in range(args.clients)]
    cases = [CASES[int(i)] for i in args.cases.split(",")]
    plan = [(o, c, args.clients, args.budget) for o in args.optimizers.split(",") for c in cases]
    if args.at_minimum:  # after the first optimizer's row sets: the main rows come first
        plan.insert(len(cases), ("sgd", CASES[0], min(args.at_minimum, args.clients), minimum_iterations("ig")))
    earlier = json.loads(Path(args.out).read_text()) if args.append else {"rows": [], "summary": [], "seconds": 0}
    rows, summary = earlier["rows"], earlier["summary"]
    print(HEADER, flush=True)
    for optimizer, case, clients, iterations in plan:
        done = [measure(model, knowledge, public, *shards[k], task.normalise, optimizer, case, k, args, iterations)
                for k in range(clients)]
        rows += done
        summary.append(summarise(done))
        print(line(summary[-1]), flush=True)
        settings = vars(args) | {"public": f"first {PUBLIC} test-split images with labels", "partition_seed": 0,
                                 "sgd": "lr 0.05, momentum 0.9, weight decay 5e-4", "adam": "lr 1e-3", "batch_size": 32}
        runs = earlier.get("runs", [earlier["settings"]] if "settings" in earlier else []) + [settings]
        Path(args.out).write_text(json.dumps({
            "runs": runs, "seconds": earlier["seconds"] + time.perf_counter() - started, "summary": summary,
            "rows": rows}, indent=1))
    print("verdict mix: L leaks, N no leak found, I inconclusive; image = the verdict without the label-histogram "
          "evidence. TV of recover_label_counts (mean/max). The federation's slowdown with auditing is measured in "
          f"examples/flower_realistic, not here.\n{time.perf_counter() - started:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
