"""APRIL's closed form on fedleak's ViT (issue #24): exactness and time at B = 1, with Inverting
Gradients on the same images for comparison.

For MNIST (1×28×28, patches of 7: 16 patches) and CIFAR-10 (3×32×32, patches of 4: 64 patches), the
``vit`` model (dim 192, depth 6, 3 heads) untrained (its seeded initialisation) and briefly trained
(``--steps`` Adam steps, lr 1e-3, batches of 32 from test images 2,000–9,999 — ../shared/data holds MNIST's
test split only, so both datasets use theirs; its accuracy on test images 1,000–1,999 printed), each of ``--images`` test images is one FedSGD client's update (B = 1, labels not
known). Attacks: ``april`` via the patch embedding on the standard pre-norm ViT; ``april`` via the first
qkv layer (the paper's derivation) on the same family built with ``first_block=plain``; ``ig``
(``--ig-iterations`` steps, Lim & Chan's cosine matching, signed Adam lr 0.1, TV 1e-3, one restart, all
images in one batched optimisation, labels from the head's bias gradient like APRIL's) on the pre-norm ViT. Printed per row: PSNR on [0, 1] pixels
(mean and minimum, uncapped: 10·log10(1/MSE)), the largest absolute pixel error, label accuracy and
seconds per image. Needs ../shared/data.

    python benchmarks/april.py [--root ../shared/data] [--images 8] [--steps 60] [--ig-iterations 200]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.data import load_dataset
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientData
from fedleak.models import create_model

DATASETS = {"mnist": {"patch": 7, "side": 28}, "cifar10": {"patch": 4, "side": 32}}
ATTACKS = [  # (row name, model's first block, attack settings)
    ("april (patch)", "pre-norm", ("april", {"via": "patch"})),
    ("april (qkv, plain ViT)", "plain", ("april", {"via": "embedding"})),
    ("ig", "pre-norm", ("ig", {})),
]


def train(model: torch.nn.Module, data, norm: Normalization, steps: int, seed: int) -> None:
    """``steps`` Adam steps (lr 1e-3) on batches of 32 drawn from images 2,000 onwards of ``data``."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        idx = (2000 + torch.randint(len(data.labels) - 2000, (32,), generator=g)).tolist()
        loss = F.cross_entropy(model(norm.to_input(data.images(idx))), data.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def accuracy(model: torch.nn.Module, test, norm: Normalization, n: int = 1000) -> float:
    model.eval()
    with torch.no_grad():
        idx = list(range(1000, 1000 + n))
        return float((model(norm.to_input(test.images(idx))).argmax(1) == test.labels[idx]).float().mean())


def psnr(rec: torch.Tensor, truth: torch.Tensor) -> float:
    mse = float((rec - truth).double().pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60, help="training steps of the 'trained' models")
    parser.add_argument("--ig-iterations", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/april.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared CPU: one thread is fastest (docs/models.md)
    started = time.perf_counter()
    rows = []
    for dataset, spec in DATASETS.items():
        test = load_dataset(dataset, args.root, split="test")
        norm = Normalization(test.mean, test.std)
        c, side = test.images([0]).shape[1], spec["side"]
        idx = list(range(args.images))
        batches = [ClientData(test.images([i]), test.labels[[i]]) for i in idx]
        for state in ("untrained", "trained"):
            models = {}
            for block in ("pre-norm", "plain"):
                net = create_model("vit", 10, c, side, seed=0, patch=spec["patch"], first_block=block)
                t = time.perf_counter()
                if state == "trained":
                    train(net, test, norm, args.steps, seed=1)
                models[block] = (net, accuracy(net, test, norm), time.perf_counter() - t)
            for row_name, block, (attack_name, settings) in ATTACKS:
                net, acc, train_s = models[block]
                net.eval()
                payloads = [Client(net, norm).update(b) for b in batches]
                knowledge = AttackerKnowledge(copy.deepcopy(net), (c, side, side), 10, norm.mean, norm.std)
                if attack_name == "ig":
                    settings = {"iterations": args.ig_iterations, "labels": "bias"}
                attack = build_attack(attack_name, settings)
                t = time.perf_counter()
                recs = attack.run_many(payloads, [knowledge] * len(payloads), list(idx))
                seconds = (time.perf_counter() - t) / len(payloads)
                psnrs = [psnr(r.images, b.images) for r, b in zip(recs, batches)]
                row = {"dataset": dataset, "input": f"{c}x{side}x{side}", "patch": spec["patch"], "state": state,
                       "first_block": block, "test_accuracy": acc, "train_seconds": train_s, "attack": row_name,
                       "images": len(batches), "psnr_mean": statistics.mean(psnrs), "psnr_min": min(psnrs),
                       "max_abs_error": max(float((r.images - b.images).abs().max()) for r, b in zip(recs, batches)),
                       "label_accuracy": statistics.mean(float(torch.equal(r.labels, b.labels))
                                                         for r, b in zip(recs, batches)),
                       "seconds_per_image": seconds}
                rows.append(row)
                print(f"{dataset:7} {row['input']:9} {state:9} acc {acc:.2f}  {row_name:23} PSNR mean "
                      f"{row['psnr_mean']:6.1f} min {row['psnr_min']:6.1f} dB  max |err| {row['max_abs_error']:.1e}"
                      f"  labels {row['label_accuracy']:.2f}  {seconds:.3f} s/image", flush=True)
    summary = {"rows": rows, "seconds": time.perf_counter() - started,
               "model": "vit (dim 192, depth 6, heads 3), FedSGD, B = 1, labels not known",
               "ig": {"iterations": args.ig_iterations, "restarts": 1, "tv": 1e-3, "cost": "cosine"},
               "training": {"steps": args.steps, "optimizer": "Adam lr 1e-3", "batch": 32}, "threads": 1}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"{summary['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
