"""Calibrate the audit's risk score against the truth (fedleak.calibration) and store the table.

For each batch size, protocol (a FedSGD gradient; one FedAvg epoch in minibatches of half the batch,
lr 0.1) and model state (initial weights; trained two epochs on 2,000 other training images),
``--updates`` clients each hold a batch of distinct CIFAR-10 training images; the audit's attack (IG at its stated minimum of iterations,
labels recovered from the update) reconstructs every batch (all of one batch size attacked together,
``run_many``). Per update: the update fit (observable, fedleak.audit.update_fit) and whether the
reconstruction is recognisable (ground truth: at least one matched image beats its own mean-colour
guess by fedleak.verdicts.PSNR_MARGIN dB). The isotonic regression of recognisable on the fit per
batch size (pooled over protocols and states) is the calibration (fedleak.calibration.fit_calibration), written to
src/fedleak/risk_calibration.json; every measurement goes to benchmarks/calibrate_risk.json. Each
batch size's measurements are kept as they finish, so a killed run resumes where it stopped.

    python benchmarks/calibrate_risk.py [--root ../shared/data] [--batches 1,2,4,8] [--updates 16]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.audit import update_fit
from fedleak.calibration import fit_calibration
from fedleak.data import load_dataset
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientData, ClientTraining
from fedleak.metrics.evaluate import evaluate
from fedleak.models import create_model
from fedleak.verdicts import MIN_ITERATIONS, PSNR_MARGIN, psnr_gains

TABLE = Path(__file__).resolve().parents[1] / "src" / "fedleak" / "risk_calibration.json"


PROTOCOLS = {"fedsgd": lambda b: ClientTraining(),
             "fedavg": lambda b: ClientTraining("fedavg", lr=0.1, local_batch_size=max(1, b // 2), epochs=1)}


def trained(model: torch.nn.Module, dataset, epochs: int = 2) -> torch.nn.Module:
    """``model`` after ``epochs`` of SGD (lr 0.05, momentum 0.9) on training images 8000–9999."""
    model = copy.deepcopy(model).train()
    norm = Normalization(dataset.mean, dataset.std)
    idx = list(range(8000, 10000))
    images, labels = dataset.images(idx), dataset.label_of(idx)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for part in torch.randperm(len(idx), generator=g).split(32):
            optimizer.zero_grad()
            F.cross_entropy(model(norm.to_input(images[part])), labels[part]).backward()
            optimizer.step()
    return model.eval()


def measure(batch: int, protocol: str, state: str, args: argparse.Namespace, dataset, model) -> list[dict]:
    norm = Normalization(dataset.mean, dataset.std)
    knowledge = AttackerKnowledge(copy.deepcopy(model), dataset.image_shape, dataset.num_classes, dataset.mean,
                                  dataset.std)
    g = torch.Generator().manual_seed(1000 * batch + 10 * list(PROTOCOLS).index(protocol) + (state == "trained"))
    order = torch.randperm(8000, generator=g)[: batch * args.updates].view(args.updates, batch)
    truths = [ClientData(dataset.images(idx.tolist()), dataset.label_of(idx.tolist()), tuple(idx.tolist()))
              for idx in order]
    payloads = [Client(model, norm, PROTOCOLS[protocol](batch), seed=i).update(t) for i, t in enumerate(truths)]
    attack = build_attack("ig", {"iterations": args.iterations})
    started = time.perf_counter()
    recs = attack.run_many(payloads, [knowledge] * len(payloads), list(range(len(payloads))))
    seconds = time.perf_counter() - started
    rows = []
    for payload, truth, rec in zip(payloads, truths, recs):
        ev = evaluate(rec, truth)
        gains = psnr_gains(rec.images[ev.order], truth.images)
        rows.append({"batch_size": batch, "protocol": protocol, "state": state, "indices": list(truth.indices),
                     "update_fit": update_fit(payload, knowledge, rec.images, rec.labels),
                     "matching_loss": rec.matching_loss, "psnr": ev.psnr, "ssim": ev.ssim,
                     "label_accuracy": ev.label_accuracy, "best_gain": float(gains.max()),
                     "recognisable_images": int((gains >= PSNR_MARGIN).sum()),
                     "recognisable": bool((gains >= PSNR_MARGIN).any()), "iterations": rec.iterations})
    print(f"B={batch} {protocol} {state}: {len(rows)} updates in {seconds:.0f} s, {sum(r['recognisable'] for r in rows)} recognisable",
          flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--updates", type=int, default=16)
    parser.add_argument("--protocols", default="fedsgd,fedavg")
    parser.add_argument("--states", default="initial,trained")
    parser.add_argument("--iterations", type=int, default=MIN_ITERATIONS.get("ig"))
    parser.add_argument("--out", default="benchmarks/calibrate_risk.json")
    parser.add_argument("--table", default=str(TABLE), help="where the calibration table goes")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the shared CPU: one thread is faster than two contending ones
    dataset = load_dataset("cifar10", args.root, split="train", image_size=args.size)
    initial = create_model(args.model, dataset.num_classes, 3, args.size, width=args.width, seed=0).eval()
    models = {"initial": initial, "trained": trained(initial, dataset)}
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "table")}
    if done.get("settings", settings) != settings:
        done = {"rows": []}  # another calibration: start afresh
    for batch in [int(b) for b in args.batches.split(",")]:
        for protocol in args.protocols.split(","):
            for state in args.states.split(","):
                if any((r["batch_size"], r.get("protocol"), r.get("state")) == (batch, protocol, state)
                       for r in done["rows"]):
                    continue
                done["rows"] += measure(batch, protocol, state, args, dataset, models[state])
                out.write_text(json.dumps({"settings": settings, "rows": done["rows"]}, indent=1))
    tables = []
    for batch in sorted({r["batch_size"] for r in done["rows"]}):
        rows = [r for r in done["rows"] if r["batch_size"] == batch]
        steps = fit_calibration([r["update_fit"] for r in rows], [r["recognisable"] for r in rows])
        tables.append({"batch_size": batch, "updates": len(rows), "recognisable": sum(r["recognisable"] for r in rows),
                       **steps})
        print(f"B={batch}: " + ", ".join(f"fit {x:.3f} → {p:.2f}" for x, p in zip(steps["fit"], steps["probability"])))
    table = {"target": f"at least one image of the batch beats its own mean-colour guess by {PSNR_MARGIN:g} dB PSNR "
                       "(after Hungarian matching)",
             "observable": "update fit",
             "conditions": {"dataset": f"CIFAR-10 train, {args.size} px", "model": f"{args.model} (width {args.width}), "
                            "eval mode; initial weights, and trained 2 epochs on 2,000 other images",
                            "protocol": "fedsgd; fedavg, one epoch in minibatches of B/2 (lr 0.1)",
                            "updates_per_batch_size": len(done["rows"]) // max(1, len(tables)), "attack": f"ig, {args.iterations} "
                            "iterations, labels recovered from the update (auto)", "script": "benchmarks/calibrate_risk.py"},
             "tables": tables}
    Path(args.table).write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.table} and {out}")


if __name__ == "__main__":
    main()
