"""Inverting Gradients on CIFAR-10 images: PSNR / SSIM per model and protocol.

Each CIFAR-10 training image is attacked on its own (B = 1, iDLG labels) with the default IG settings,
untrained models (FedSGD and FedAvg with τ local steps) or, with --checkpoints, the trained targets.
Needs ../shared/data. Prints a table and writes JSON.

    python benchmarks/attack_quality.py [--images 4] [--iterations 1200] [--out benchmarks/attack_quality.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

from fedleak.config import build_config
from fedleak.pipeline import run

CASES = {
    "convnet-fedsgd": {"model.name": "convnet", "client.protocol": "fedsgd"},
    "resnet18-fedsgd": {"model.name": "resnet18", "client.protocol": "fedsgd"},
    "convnet-fedavg": {"model.name": "convnet", "client.protocol": "fedavg", "client.local_steps": 5,
                       "client.lr": 0.01},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=1200)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--cases", default=None, help="comma-separated; default: every case available")
    parser.add_argument("--checkpoints", default=None,
                        help="folder of benchmarks/train_targets.py checkpoints: adds the trained CIFAR-10 targets")
    parser.add_argument("--out", default="benchmarks/attack_quality.json")
    args = parser.parse_args()
    cases = dict(CASES)
    if args.checkpoints:
        from pathlib import Path

        for name in ("resnet18-cifar10", "densenet121-cifar10"):
            path = Path(args.checkpoints) / f"{name}.safetensors"
            if path.is_file():
                cases[f"{name.split('-')[0]}-trained"] = {"model.checkpoint": str(path), "client.protocol": "fedsgd"}
    if args.cases is None:
        args.cases = ",".join(k for k in cases if k.endswith("-trained") or not args.checkpoints)
    rows = []
    for case in args.cases.split(","):
        for image in range(args.images):
            flags = {"data.name": "cifar10", "data.root": args.root, "data.split": "train",
                     "data.index": [image], "model.width": args.width,
                     "attack.iterations": args.iterations, **cases[case]}
            result = run(build_config(flags=flags))
            m = result.metrics()
            rows.append({"case": case, "index": image, "psnr": m["psnr"], "ssim": m["ssim"],
                         "label_accuracy": m["label_accuracy"], "seconds": m["attack_seconds"]})
            print(f"{case:16} image {image}: PSNR {m['psnr']:.2f}  SSIM {m['ssim']:.3f}  {m['attack_seconds']:.0f} s",
                  flush=True)
    print(f"\n{'case':16} {'PSNR':>6} {'SSIM':>6} {'s/image':>8}")
    summary = {}
    for case in dict.fromkeys(r["case"] for r in rows):
        sel = [r for r in rows if r["case"] == case]
        summary[case] = {k: statistics.mean(r[k] for r in sel) for k in ("psnr", "ssim", "seconds")}
        s = summary[case]
        print(f"{case:16} {s['psnr']:6.2f} {s['ssim']:6.3f} {s['seconds']:8.1f}")
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "summary": summary, "iterations": args.iterations, "width": args.width}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
