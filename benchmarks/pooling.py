"""Inverting Gradients against an untrained ConvNet with max- and with average-pooling.

Why ``convnet``'s default is ``pool="avg"`` (:mod:`fedleak.models.convnet`): with max-pooling the
gradient of an untrained ConvNet depends on which position wins each pool, and inversion from a
random start stalls. This runs the default job (scikit-image's samples, ConvNet-16, FedSGD, one
image, IG with its default settings) once per pooling, seed and image, at ``--iterations``, and
prints PSNR / SSIM per pooling and the difference average − max within this run. Prints a table and
writes JSON.

    python benchmarks/pooling.py [--iterations 600] [--images 4] [--seeds 0] [--out benchmarks/pooling.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fedleak.config import build_config
from fedleak.pipeline import run

POOLS = ("max", "avg")


def attack(pool: str, image: int, seed: int, iterations: int) -> dict:
    config = build_config(overrides=["device=cpu", f"data.index=[{image}]", f"seed={seed}", "client.seed=0",
                                     f"attack.iterations={iterations}", f"model.options={{pool: {pool}}}",
                                     "metrics.lpips=[]"])
    result = run(config)
    return {"pool": pool, "image": image, "seed": seed, "iterations": iterations, "psnr": result.evaluation.psnr,
            "ssim": result.evaluation.ssim, "attack_seconds": round(result.reconstruction.seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--images", type=int, nargs="+", default=[4], help="samples indices (4: the default job's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="benchmarks/pooling.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = [attack(pool, image, seed, args.iterations) for image in args.images for seed in args.seeds
            for pool in POOLS]
    summary = {pool: {m: statistics.fmean(r[m] for r in runs if r["pool"] == pool) for m in ("psnr", "ssim")}
               for pool in POOLS}
    print(f"IG, {args.iterations} iterations, images {args.images}, seeds {args.seeds}")
    print(f"{'pool':<6}{'PSNR dB':>9}{'SSIM':>8}")
    for pool in POOLS:
        print(f"{pool:<6}{summary[pool]['psnr']:>9.2f}{summary[pool]['ssim']:>8.3f}")
    gain = summary["avg"]["psnr"] - summary["max"]["psnr"]
    print(f"avg − max: {gain:+.2f} dB")
    Path(args.out).write_text(json.dumps({
        "device": "cpu", "torch": torch.__version__, "seconds": round(time.perf_counter() - start, 1),
        "iterations": args.iterations, "summary": summary, "avg_minus_max_psnr": gain, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
