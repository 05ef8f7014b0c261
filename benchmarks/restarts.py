"""Batched against sequential restarts of Inverting Gradients.

For each model, the same attack (same iterations, same 32-px image) runs once with R restarts
optimised together (one vmap-ed computation) and R times with one restart each (the plain loop).
Each measurement runs in a fresh subprocess so that its peak resident memory is its own.
Prints a table and writes JSON; the claim is the ratio within this run, not the absolute seconds.

    python benchmarks/restarts.py [--restarts 8] [--iterations 20] [--width 0.25] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time


def worker(model_name: str, width: float, restarts: int, iterations: int, batched: bool) -> dict:
    import torch

    from fedleak.attacks import AttackerKnowledge, build_attack
    from fedleak.data import load_dataset
    from fedleak.data.normalization import Normalization
    from fedleak.fl import Client, ClientData
    from fedleak.models import create_model

    ds = load_dataset("samples")
    data = ClientData(ds.images([1]), ds.label_of([1]))
    model = create_model(model_name, ds.num_classes, 3, 32, width=width, seed=0)
    payload = Client(model, Normalization(ds.mean, ds.std)).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), ds.image_shape, ds.num_classes, ds.mean, ds.std)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    losses = []
    start = time.perf_counter()
    if batched:
        rec = build_attack("ig", {"iterations": iterations, "restarts": restarts}).run(payload, knowledge)
        losses = rec.restart_losses
    else:
        for seed in range(restarts):
            rec = build_attack("ig", {"iterations": iterations}).run(payload, knowledge, seed=seed)
            losses += rec.restart_losses
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_rss_mb": peak / 1024, "attack_rss_mb": (peak - base_rss) / 1024,
            "best_loss": min(losses), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="convnet,resnet18")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--restarts", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/restarts.json")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model_name, mode = args.worker
        print(json.dumps(worker(model_name, args.width, args.restarts, args.iterations, mode == "batched")))
        return
    rows = []
    for model_name in args.models.split(","):
        result = {"model": model_name, "width": args.width, "restarts": args.restarts,
                  "iterations": args.iterations}
        for mode in ("sequential", "batched"):
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", model_name, mode, "--width", str(args.width),
                 "--restarts", str(args.restarts), "--iterations", str(args.iterations)],
                capture_output=True, text=True, check=True,
            )
            result[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        result["speedup"] = result["sequential"]["seconds"] / result["batched"]["seconds"]
        result["memory_ratio"] = result["batched"]["attack_rss_mb"] / max(result["sequential"]["attack_rss_mb"], 1e-9)
        rows.append(result)
    header = f"{'model':10} {'width':>5} {'R':>3} {'iters':>5} {'seq s':>8} {'batch s':>8} {'speedup':>8} {'seq MB':>8} {'batch MB':>9}"
    print(header)
    for r in rows:
        print(f"{r['model']:10} {r['width']:5} {r['restarts']:3} {r['iterations']:5} "
              f"{r['sequential']['seconds']:8.2f} {r['batched']['seconds']:8.2f} {r['speedup']:8.2f} "
              f"{r['sequential']['attack_rss_mb']:8.0f} {r['batched']['attack_rss_mb']:9.0f}")
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "python": sys.version.split()[0]}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
