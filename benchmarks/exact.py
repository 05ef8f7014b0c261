"""SPEAR's exact recovery rate and wall time against the batch size, clean and under Gaussian noise.

An untrained fully connected ReLU network (fedleak's ``mlp``: flatten → Linear(n, width) → ReLU →
Linear(width, width) → ReLU → Linear(width, 10)) over random batches (distinct images, labels may
repeat) of the MNIST and CIFAR-10 test sets in ../shared/data (a dataset that is absent is skipped);
FedSGD gradients; SPEAR attacks the first layer. After the best one-to-one matching (Hungarian on
pixel distances) an image is *exact* when its largest pixel error is below ``--tol`` (on [0, 1]
pixels); a batch is exact when all its images are. ``certified`` is the attacker's own check (the
zero pattern of ∂L/∂Z equals where W x + b ≤ 0), ``false_certs`` the certified images that were not
exact. Noise cells add the client defense ``noise:snr_db=S`` (Gaussian noise on each tensor of the
update, σ² = var / 10^(S/10)) and give the attack ``--noise-samples`` row subsets (it never certifies
there, so it always runs its whole budget). Seconds are the attack's own wall time on this machine.

    python benchmarks/exact.py [--root ../shared/data] [--sizes 2,4,8,16,24] [--batches 4] \
        [--snr 40,20] [--out benchmarks/exact.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from scipy.optimize import linear_sum_assignment

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.data import load_dataset, pick_indices
from fedleak.data.normalization import Normalization
from fedleak.errors import FedleakError
from fedleak.fl import Client, ClientData
from fedleak.models import create_model


def matched_errors(found: torch.Tensor, truth: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per true image after the best matching: the largest pixel error and the PSNR (peak 1)."""
    f, t = found.flatten(1).double(), truth.flatten(1).double()
    rows, cols = linear_sum_assignment(torch.cdist(f, t).numpy())
    diff = f[rows] - t[cols]
    mse = diff.pow(2).mean(dim=1).clamp_min(1e-20)
    return diff.abs().amax(dim=1).tolist(), (10 * torch.log10(1 / mse)).tolist()


def run_cell(ds, b: int, batches: int, width: int, snr: float | None, samples: int, tol: float) -> dict:
    c, h, w = ds.image_shape
    exact_batches, exact_images, certified, false_certs, seconds, psnrs = 0, 0, 0, 0, [], []
    for k in range(batches):
        net = create_model("mlp", 10, c, (h, w), hidden=width, seed=k)
        idx = pick_indices(ds, b, seed=1000 * b + k)
        data = ClientData(ds.images(idx), ds.label_of(idx))
        defense = None if snr is None else f"noise:snr_db={snr:g}"
        payload = Client(net, Normalization(ds.mean, ds.std), defense=defense, seed=k).update(data)
        knowledge = AttackerKnowledge(net, (c, h, w), 10, ds.mean, ds.std)
        rec = build_attack("spear", {"samples": samples}).run(payload, knowledge, seed=k)
        errors, psnr = matched_errors(rec.images, data.images)
        exact = [e < tol for e in errors]
        exact_images += sum(exact)
        exact_batches += all(exact)
        listed = rec.notes[1].rsplit(":", 1)[1].strip()  # "certified images (in reconstruction order): 0, 2"
        certs = [] if listed == "none" else [int(i) for i in listed.split(",")]
        certified += len(certs)
        false_certs += sum(not exact[i] for i in certs)  # matched_errors' rows are reconstruction order
        seconds.append(rec.seconds)
        psnrs.append(sum(psnr) / len(psnr))
    return {"dataset": ds.name, "batch": b, "snr_db": snr, "batches": batches, "samples": samples,
            "exact_batches": exact_batches / batches, "exact_images": exact_images / (batches * b),
            "certified_images": certified / (batches * b), "false_certs": false_certs,
            "mean_psnr": sum(psnrs) / len(psnrs), "mean_seconds": sum(seconds) / len(seconds),
            "max_seconds": max(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--datasets", default="mnist,cifar10")
    parser.add_argument("--sizes", default="2,4,8,16,24")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=2_000_000, help="row-subset budget, clean cells")
    parser.add_argument("--snr", default="40,20", help="noise levels in dB ('' for none)")
    parser.add_argument("--noise-sizes", default="2,4,8", help="batch sizes of the noise cells")
    parser.add_argument("--noise-samples", type=int, default=100_000, help="row-subset budget, noise cells")
    parser.add_argument("--tol", type=float, default=1e-3, help="largest pixel error of an exact image")
    parser.add_argument("--out", default="benchmarks/exact.json")
    args = parser.parse_args()
    rows, skipped = [], []
    for name in args.datasets.split(","):
        try:
            ds = load_dataset(name, args.root, split="test")
        except FedleakError as exc:
            skipped.append(f"{name}: {exc}")
            print(f"skip {name}: {exc}")
            continue
        cells = [(int(b), None) for b in args.sizes.split(",")]
        cells += [(int(b), float(s)) for s in filter(None, args.snr.split(",")) for b in args.noise_sizes.split(",")]
        for b, snr in cells:
            samples = args.samples if snr is None else args.noise_samples
            row = run_cell(ds, b, args.batches, args.width, snr, samples, args.tol)
            rows.append(row)
            snr_text = "clean" if snr is None else f"{snr:g} dB"
            print(f"{name:8} B={b:2} {snr_text:6} exact batches {row['exact_batches']:5.0%} images "
                  f"{row['exact_images']:5.0%} certified {row['certified_images']:5.0%} (false {row['false_certs']}) "
                  f"PSNR {row['mean_psnr']:6.1f} s/batch {row['mean_seconds']:6.1f} (max {row['max_seconds']:.1f})",
                  flush=True)
    result = {"setting": {**{k: v for k, v in vars(args).items() if k != "out"},
                          "machine": f"{platform.processor() or platform.machine()}, "
                                     f"{torch.get_num_threads()} torch threads", "skipped": skipped},
              "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2, default=lambda v: None if v != v else v) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
