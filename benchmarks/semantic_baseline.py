"""What "nothing leaked" scores on the ``semantic`` metric (ROG's Jaccard index of an independent
classifier's top-k label sets on original and reconstruction).

PSNR and SSIM have their no-leak guesses in every run (:mod:`fedleak.metrics.baselines`); the semantic
metric needs one too, because a 10-class tagger's top-3 sets overlap often by chance. For the first
``--images`` CIFAR-10 test images this scores, with the same tagger a study uses:

- **other image**: each original against the next one (index i + 1) — an unrelated natural image;
- **mean colour**: each original against a flat image of its own mean colour;
- **random k-set**: the exact expectation of the Jaccard index between the original's set and a
  uniformly random k-subset of the classes (no model involved).

Prints a table and writes JSON.

    python benchmarks/semantic_baseline.py [--tagger checkpoints/resnet18-cifar10-full.safetensors]
        [--images 1000] [--k 3] [--root ../shared/data] [--out benchmarks/semantic_baseline.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch

from fedleak.data import load_dataset
from fedleak.metrics.semantic import jaccard, load_semantic


def random_set_expectation(classes: int, k: int) -> float:
    """E[J(A, R)] for a fixed k-set A and R uniform over the k-subsets of ``classes`` (exact)."""
    a = set(range(k))
    values = [jaccard(a, r) for r in itertools.combinations(range(classes), k)]
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tagger", default="checkpoints/resnet18-cifar10-full.safetensors")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--out", default="benchmarks/semantic_baseline.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = load_dataset("cifar10", args.root, split="test")
    scorer = load_semantic(args.tagger, 10, 3, k=args.k)
    images = torch.stack([dataset.image(i) for i in range(args.images + 1)])
    originals = scorer.labels(images[:-1])  # labels() classifies in eval mode without gradients
    others = scorer.labels(images[1:])
    means = scorer.labels(images[:-1].mean((2, 3), keepdim=True).expand_as(images[:-1]).contiguous())
    rows = {
        "other image": statistics.mean(jaccard(a, b) for a, b in zip(originals, others)),
        "mean colour": statistics.mean(jaccard(a, b) for a, b in zip(originals, means)),
        "random k-set": random_set_expectation(10, args.k),
    }
    first16 = statistics.mean(jaccard(a, b) for a, b in zip(originals[:16], others[:16]))
    print(f"semantic (Jaccard of top-{args.k} sets, tagger {args.tagger}, {args.images} CIFAR-10 test images)")
    print(f"{'guess':<14} {'semantic':>8}")
    for name, value in rows.items():
        print(f"{name:<14} {value:8.3f}")
    print(f"{'other image, images 0-15':<14} {first16:8.3f}")
    with open(args.out, "w") as f:
        json.dump({"command": vars(args), "baselines": rows, "other_image_first16": first16}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
