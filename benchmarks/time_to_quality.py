"""Time to quality of Inverting Gradients: how long fedleak takes to reach the PSNR that a plain
inversefed-style loop reaches after ``--iterations`` steps, on the same images and weights.

For each model (full width, seeded untrained weights, FedSGD, eval-mode BN, true labels known), each
of ``--images`` CIFAR-10 training images is attacked on its own (B = 1):

- **reference**: a simple loop in this script, one image after another — x ~ N(0, 1) in input
  space, Adam lr 0.1 ×0.1 at 3/8, 5/8, 7/8, signed gradient, box to the valid pixel range, loss
  1 − cos(∇θ CE(x, y), observed update) over all layers + ``--tv`` · TV(x) — for ``--iterations``
  steps; its mean PSNR is the target and its wall time the reference time;
- **fedleak**: ``attack: ig`` with each setting of :data:`SETTINGS` (all images in one
  ``run_many``), at iteration budgets ``--budgets`` × ``--iterations`` tried from the smallest; the
  time to quality is the wall time of the first budget whose mean PSNR reaches the target (PSNR is
  measured after each run by the auditor's side, never seen by the attack).

Both run in this process with ``--threads`` torch threads. Prints a table and writes JSON; the claim
is the ratio within one run (fedleak time / reference time), not the seconds.

    python benchmarks/time_to_quality.py [--models convnet,resnet18] [--images 8] [--iterations 1200]
        [--budgets 0.0625,0.125,0.25,0.5] [--settings plain,halving,coarse,early-stop,combined]
        [--tv 0.001] [--threads 1] [--root ../shared/data] [--out benchmarks/time_to_quality.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.optimization import step_milestones
from fedleak.attacks.regularizers import total_variation
from fedleak.data import load_dataset
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientData
from fedleak.metrics import psnr
from fedleak.models import create_model

HALVING = {"restarts": 8, "halving": [0.125, 0.25, 0.5]}
COARSE = {"coarse": {"scale": 0.5, "share": 0.3}}
COARSE_LONG = {"coarse": {"scale": 0.5, "share": 0.6}}
EARLY = {"patience": 50, "min_delta": 1e-3, "log_every": 10}
SETTINGS: dict[str, dict] = {
    "plain": {},
    "halving": HALVING,
    "coarse": COARSE,
    "coarse-long": COARSE_LONG,
    "early-stop": EARLY,
    "combined": {**HALVING, **COARSE},
}
"""fedleak's attack settings measured (beyond ``iterations`` and ``tv``)."""


def reference(model: torch.nn.Module, norm: Normalization, shape: torch.Size, label: torch.Tensor,
              update: dict[str, torch.Tensor], iterations: int, tv: float, seed: int) -> torch.Tensor:
    """The plain inversefed-style loop on one image; returns the reconstruction in [0, 1]."""
    params = [p for _, p in model.named_parameters()]
    targets = [update[n] for n, _ in model.named_parameters()]
    target_norm = torch.sqrt(sum((t * t).sum() for t in targets))
    lower, upper = norm.bounds()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, step_milestones(iterations), gamma=0.1)
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), label)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, targets))
        cost = 1 - dot / (torch.sqrt(sum((g * g).sum() for g in grads)) * target_norm)
        (cost + tv * total_variation(x)).backward()
        assert x.grad is not None
        x.grad.sign_()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, upper), lower))
    return norm.to_pixels(x)


def mean_psnr(reconstructions: list[torch.Tensor], originals: torch.Tensor) -> float:
    return statistics.mean(float(psnr(r, originals[i:i + 1])) for i, r in enumerate(reconstructions))


def measure(model_name: str, args: argparse.Namespace) -> dict:
    ds = load_dataset("cifar10", root=args.root, split="train")
    indices = list(range(args.images))
    originals, labels = ds.images(indices), ds.label_of(indices)
    norm = Normalization(ds.mean, ds.std)
    model = create_model(model_name, ds.num_classes, 3, 32, width=1.0, seed=0)
    client = Client(model, norm)
    payloads = [client.update(ClientData(originals[i:i + 1], labels[i:i + 1])) for i in indices]
    knowledges = [AttackerKnowledge(copy.deepcopy(model), ds.image_shape, ds.num_classes, ds.mean, ds.std,
                                    labels=labels[i:i + 1]) for i in indices]
    net = copy.deepcopy(model).eval()
    start = time.perf_counter()
    ref = [reference(net, norm, originals[i:i + 1].shape, labels[i:i + 1], payloads[i].update,
                     args.iterations, args.tv, seed=i) for i in indices]
    ref_seconds = time.perf_counter() - start
    target = mean_psnr(ref, originals)
    print(f"{model_name}: reference {args.iterations} it × {args.images} images: PSNR {target:.2f} in "
          f"{ref_seconds:.1f} s", flush=True)
    out: dict = {"model": model_name, "images": args.images, "reference": {
        "iterations": args.iterations, "psnr": target, "seconds": ref_seconds}, "settings": {}}
    for name in args.settings.split(","):
        tries = []
        for share in sorted(float(b) for b in args.budgets.split(",")):
            iterations = max(8, round(share * args.iterations))
            attack = build_attack("ig", {"iterations": iterations, "tv": args.tv, **SETTINGS[name]})
            start = time.perf_counter()
            recs = attack.run_many(payloads, knowledges, indices)
            seconds = time.perf_counter() - start
            value = mean_psnr([r.images for r in recs], originals)
            tries.append({"iterations": iterations, "psnr": value, "seconds": seconds,
                          "steps": statistics.mean(r.iterations for r in recs)})
            print(f"  {name:11} {iterations:5} it: PSNR {value:6.2f} in {seconds:7.1f} s "
                  f"({seconds / ref_seconds:.3f} of the reference)", flush=True)
            if value >= target:
                break
        reached = [t for t in tries if t["psnr"] >= target]
        first = reached[0] if reached else None
        out["settings"][name] = {"settings": SETTINGS[name], "tries": tries, "reached": first is not None,
                                 "seconds": first["seconds"] if first else None,
                                 "ratio": first["seconds"] / ref_seconds if first else None,
                                 "psnr": first["psnr"] if first else max(t["psnr"] for t in tries)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="convnet,resnet18")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=1200, help="the reference loop's iterations")
    parser.add_argument("--budgets", default="0.0625,0.125,0.25,0.5",
                        help="fedleak's iteration budgets tried, as fractions of --iterations")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--tv", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (1: fair on a shared CPU)")
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--out", default="benchmarks/time_to_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(m, args) for m in args.models.split(",")]
    print(f"\n{'model':9} {'setting':11} {'ref PSNR':>8} {'PSNR':>6} {'iters':>5} {'seconds':>8} {'ratio':>6}")
    for row in rows:
        ref = row["reference"]
        print(f"{row['model']:9} {'reference':11} {ref['psnr']:8.2f} {ref['psnr']:6.2f} {ref['iterations']:5} "
              f"{ref['seconds']:8.1f} {1:6.3f}")
        for name, s in row["settings"].items():
            t = next((t for t in s["tries"] if t["psnr"] >= ref["psnr"]), s["tries"][-1])
            ratio = f"{s['ratio']:6.3f}" if s["reached"] else "   n/r"
            print(f"{row['model']:9} {name:11} {ref['psnr']:8.2f} {t['psnr']:6.2f} {t['iterations']:5} "
                  f"{t['seconds']:8.1f} {ratio}")
    with open(args.out, "w") as f:
        json.dump({"command": vars(args), "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    print(f"wrote {args.out} (n/r: the PSNR was not reached at any budget tried)")


if __name__ == "__main__":
    main()
