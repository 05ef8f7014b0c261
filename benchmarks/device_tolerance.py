"""How far a run moves when the observed update moves by float-rounding amounts — the basis of the
CPU-vs-CUDA tolerances in docs/devices.md.

CPU and CUDA kernels sum in other orders, so the same client update comes out a few float32 ulps
apart (relative 1e-7 … 1e-6 per tensor; more through a long reduction). This runs the default job
(ConvNet, 16 px, one image, fixed client seed) with IG and with ROG on the CPU, once with the
payload as it is and once with every entry multiplied by (1 + rel·ε), ε ~ N(0, 1) — a stand-in for
the other device's rounding — from the same initial candidates, and reports how much PSNR, SSIM,
the matching loss and the pixels move. Prints a table and writes JSON.

    python benchmarks/device_tolerance.py [--iterations 24 100] [--rel 1e-6 1e-5 1e-4] [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from fedleak.config import build_config
from fedleak.pipeline import finish, prepare

ATTACKS = {"ig": ["attack.name=ig"], "rog": ["attack.name=rog", "attack.scale=2"]}


def perturbed(update: dict[str, torch.Tensor], rel: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: t * (1 + rel * torch.randn(t.shape, generator=g, dtype=t.dtype)) for n, t in update.items()}


def measure(attack: str, iterations: int, rels: list[float], seed: int) -> list[dict]:
    config = build_config(overrides=["device=cpu", "model.width=0.25", "data.image_size=16", "client.seed=3",
                                     f"seed={seed}", f"attack.iterations={iterations}", *ATTACKS[attack]])
    p = prepare(config)
    base = finish(p, p.attack.run(p.payload, p.knowledge, seed=config.seed))
    rows = []
    for rel in rels:
        q = dataclasses.replace(p, payload=dataclasses.replace(p.payload, update=perturbed(p.payload.update, rel, 99)))
        other = finish(q, q.attack.run(q.payload, q.knowledge, seed=config.seed))
        b, o = base.reconstruction, other.reconstruction
        rows.append({
            "attack": attack, "iterations": iterations, "rel": rel, "seed": seed,
            "psnr": base.evaluation.psnr, "psnr_delta": other.evaluation.psnr - base.evaluation.psnr,
            "ssim_delta": other.evaluation.ssim - base.evaluation.ssim,
            "loss_rel_delta": abs(o.matching_loss - b.matching_loss) / max(abs(b.matching_loss), 1e-12),
            "max_pixel_delta": float((b.images - o.images).abs().max()),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, nargs="+", default=[24, 100])
    parser.add_argument("--rel", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/device_tolerance.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = [r for attack in ATTACKS for n in args.iterations for s in range(args.seeds)
            for r in measure(attack, n, args.rel, s)]
    print(f"{'attack':<6}{'iters':>6}{'rel':>8}{'max |ΔPSNR| dB':>16}{'max |ΔSSIM|':>13}{'max loss Δ':>12}"
          f"{'max pixel Δ':>13}")
    summary = []
    for attack in ATTACKS:
        for n in args.iterations:
            for rel in args.rel:
                sel = [r for r in rows if (r["attack"], r["iterations"], r["rel"]) == (attack, n, rel)]
                row = {"attack": attack, "iterations": n, "rel": rel,
                       "max_abs_psnr_delta": max(abs(r["psnr_delta"]) for r in sel),
                       "max_abs_ssim_delta": max(abs(r["ssim_delta"]) for r in sel),
                       "max_loss_rel_delta": max(r["loss_rel_delta"] for r in sel),
                       "max_pixel_delta": max(r["max_pixel_delta"] for r in sel)}
                summary.append(row)
                print(f"{attack:<6}{n:>6}{rel:>8.0e}{row['max_abs_psnr_delta']:>16.4f}{row['max_abs_ssim_delta']:>13.5f}"
                      f"{row['max_loss_rel_delta']:>12.2e}{row['max_pixel_delta']:>13.2e}")
    Path(args.json).write_text(json.dumps({"device": "cpu", "seconds": round(time.perf_counter() - start, 1),
                                           "summary": summary, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
