"""Obfuscated updates on CIFAR-10: every defense × {IG, ROG, ROG aware, ROG + prior} → PSNR, SSIM, seconds.

Yue et al.'s question: do compressed and noisy updates still leak? Each case attacks the first
``--images`` CIFAR-10 test images, one at a time (B = 1) and in batches of 4, sent by an untrained
model under FedSGD and FedAvg (τ = 5 local steps, lr 0.01, local batch = B). Attacks:

- ``ig``: Inverting Gradients (cosine + TV, ``--ig-iterations``);
- ``rog``: ROG as published (squared L2, scale 2, Adam 0.05 → 0.005, ``--rog-iterations``);
- ``rog-aware``: ROG with masked matching after top-k / pruning, sign-aware matching after signSGD
  (only those defenses);
- ``rog+prior``: ``rog-aware``'s matching plus the restoration prior (``fedleak train-prior`` on the
  CIFAR-10 training batch — public data, disjoint from the attacked test images).

Labels are recovered (iDLG for one image, Wainakh for more, aggregation included). DP-SGD needs per-sample gradients, so its
rows use the variant of a model with batch norm without normalisation layers ("+nonorm"; GroupNorm
would confound them: IG does not invert a GroupNorm ConvNet at all, 8.6 dB without any defense), and
the same variant without defense is run beside them as their baseline. ``aggregate:clients=K`` attacks
the mean of K clients' batches (the first K·B test images) in a single run. Runs are appended to the JSON as
they finish; re-running skips them. Needs ../shared/data.

    python benchmarks/obfuscation.py --prior checkpoints/prior-cifar10-x2.safetensors
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch

from fedleak.attacks.objectives import auto_matching
from fedleak.config import build_config
from fedleak.data import load_dataset
from fedleak.defenses import parse_defense
from fedleak.models.registry import without_batch_norm
from fedleak.pipeline import run

DEFENSES = [
    "none", "quantize:bits=3", "qsgd:levels=4", "topk:sparsity=0.95", "sign", "noise:snr_db=0",
    "clip:c=1", "dpsgd:clip=1,noise_multiplier=1.1", "prune:ratio=0.9", "aggregate:clients=8",
]
PROTOCOLS = {
    "fedsgd": {"client.protocol": "fedsgd"},
    "fedavg": {"client.protocol": "fedavg", "client.local_steps": 5, "client.lr": 0.01},
}


def attacks(defense: str, args: argparse.Namespace) -> dict[str, dict]:
    rog = {"attack.name": "rog", "attack.iterations": args.rog_iterations}
    out = {"ig": {"attack.name": "ig", "attack.iterations": args.ig_iterations},
           "rog": rog}
    if auto_matching(None if defense == "none" else defense) != "plain":
        out["rog-aware"] = {**rog, "attack.matching": "auto"}
    if args.prior:
        out["rog+prior"] = {**rog, "attack.matching": "auto", "attack.prior": args.prior}
    return out


def cases(model: str, defenses: list[str]) -> list[tuple[str, dict, str]]:
    """(variant label, config flags, defense): DP-SGD needs per-sample gradients, so models with batch
    norm run it without normalisation layers, with that variant's no-defense baseline first."""
    no_norm = without_batch_norm(model, {})
    out = []
    for defense in defenses:
        if defense.startswith("dpsgd") and no_norm is not None:
            flags = {"model.options": no_norm}
            out += [(f"{model}+nonorm", flags, "none"), (f"{model}+nonorm", flags, defense)]
        else:
            out.append((model, {}, defense))
    return out


def batches(images: int, size: int) -> list[list[int]]:
    return [list(range(i, i + size)) for i in range(0, images - size + 1, size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--models", default="lenet,convnet")
    parser.add_argument("--protocols", default="fedsgd,fedavg")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--fedavg-images", type=int, default=4, help="images for FedAvg cases (5× the cost)")
    parser.add_argument("--defenses", default=";".join(DEFENSES), help="specs separated by ';'")
    parser.add_argument("--ig-iterations", type=int, default=300)
    parser.add_argument("--rog-iterations", type=int, default=100)
    parser.add_argument("--prior", default=None, help="prior from fedleak train-prior (adds rog+prior)")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/obfuscation.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    defenses = [d.strip() for d in args.defenses.split(";") if d.strip()]
    out = Path(args.out)
    rows = json.loads(out.read_text())["runs"] if out.is_file() else []
    done = {(r["model"], r["protocol"], r["batch_size"], r["defense"], r["attack"], tuple(r["indices"])) for r in rows}
    loader = functools.lru_cache(maxsize=2)(load_dataset)
    for model in args.models.split(","):
        for protocol in args.protocols.split(","):
            n = args.images if protocol == "fedsgd" else min(args.images, args.fedavg_images)
            for b in map(int, args.batch_sizes.split(",")):
                for variant, options, defense in cases(model, defenses):
                    groups = batches(n, b)
                    k = parse_defense(None if defense == "none" else defense).clients
                    if k > 1:  # K clients' batches behind one update: one run
                        groups = [list(range(k * b))]
                    for attack, settings in attacks(defense, args).items():
                        for indices in groups:
                            key = (variant, protocol, b, defense, attack, tuple(indices))
                            if key in done:
                                continue
                            flags = {"data.name": "cifar10", "data.root": args.root, "data.index": indices,
                                     "model.name": model, "model.width": args.width, "client.batch_size": b,
                                     "client.defense": None if defense == "none" else defense,
                                     "attack.labels": "idlg" if b * k == 1 else "wainakh",
                                     **PROTOCOLS[protocol], **options, **settings}
                            result = run(build_config(flags=flags), loader=loader)
                            m = result.metrics()
                            rows.append({"model": variant, "protocol": protocol, "batch_size": b, "defense": defense,
                                         "attack": attack, "indices": indices, "psnr": m["psnr"], "ssim": m["ssim"],
                                         "label_accuracy": m["label_accuracy"], "seconds": m["attack_seconds"]})
                            print(f"{variant:12} {protocol:6} B={b} {defense:34} {attack:10} {indices[0]:3}: "
                                  f"PSNR {m['psnr']:5.2f} SSIM {m['ssim']:.3f} {m['attack_seconds']:6.1f} s", flush=True)
                            save(out, rows, args)
    refs = references(loader, args.root, max(args.images, 8))
    save(out, rows, args, refs)
    print_table(rows)
    print("\nNo-leak references on the same images (what a reconstruction scores without any information):")
    for name, (p, s) in refs.items():
        print(f"  {name:34} PSNR {p:5.2f} dB  SSIM {s:.3f}")


def references(loader, root: str, n: int) -> dict[str, tuple[float, float]]:
    """PSNR/SSIM of guesses that need no leak: another CIFAR-10 image, flat grey, and the image's own
    mean colour (the last needs only the average colour, which a gradient gives away easily)."""
    from fedleak.metrics import psnr, ssim

    ds = loader("cifar10", root, split="test", image_size=None, channels=None)
    x, y = ds.images(list(range(n))), ds.images(list(range(n, 2 * n)))
    guesses = {"an unrelated test image": y, "flat grey (0.5)": torch.full_like(x, 0.5),
               "the image's mean colour": x.mean((2, 3), keepdim=True).expand_as(x)}
    return {k: (float(psnr(g, x).mean()), float(ssim(g, x).mean())) for k, g in guesses.items()}


def save(out: Path, rows: list[dict], args: argparse.Namespace, refs: dict | None = None) -> None:
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    data = {"settings": settings, "summary": summarize(rows), "runs": rows}
    if refs:
        data["references"] = {k: {"psnr": p, "ssim": s} for k, (p, s) in refs.items()}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out)


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["protocol"], r["batch_size"], r["defense"], r["attack"]), []).append(r)
    return [{"model": k[0], "protocol": k[1], "batch_size": k[2], "defense": k[3], "attack": k[4], "runs": len(v),
             "psnr": statistics.mean(r["psnr"] for r in v), "ssim": statistics.mean(r["ssim"] for r in v),
             "seconds": statistics.mean(r["seconds"] for r in v)} for k, v in groups.items()]


def print_table(rows: list[dict]) -> None:
    summary = summarize(rows)
    names = ["ig", "rog", "rog-aware", "rog+prior"]
    cases = sorted({(s["model"], s["protocol"], s["batch_size"]) for s in summary})
    for model, protocol, b in cases:
        print(f"\n{model} · {protocol} · B = {b}   (PSNR dB / SSIM / s per attack)")
        print(f"{'defense':34}" + "".join(f"{n:>22}" for n in names))
        for defense in dict.fromkeys(s["defense"] for s in summary):
            cells = []
            for name in names:
                hit = [s for s in summary if s["model"] == model and s["protocol"] == protocol
                       and s["batch_size"] == b and s["defense"] == defense and s["attack"] == name]
                cells.append(f"{hit[0]['psnr']:6.2f}/{hit[0]['ssim']:.3f}/{hit[0]['seconds']:5.1f}" if hit else "-")
            if any(c != "-" for c in cells):
                print(f"{defense:34}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
