"""One IG image gradient (simulated update, cost, the double backward to the image: what one IG
iteration spends), each time computed two ways in the same run, alternating, with a check that both
give the same gradient. The claims are the ratios within this run, not the absolute seconds.

- ``differentiation``: a lone trial (one payload, one restart) through plain autograd — what
  :class:`fedleak.attacks.matching.GradientMatching` does for it (``trial(..., batched=False)``
  differentiated by ``torch.autograd.grad``) — against ``torch.func.grad``, the path several trials
  take under ``vmap``. Ratio: ``torch.func.grad`` ÷ plain autograd seconds per gradient.
- ``cost``: the cosine cost summed per layer (one dot product and one squared norm per matched
  layer, :mod:`fedleak.attacks.objectives`) against a reference written here that concatenates the
  layers into one vector and takes one dot product and one norm (the same number). Ratio:
  concatenated ÷ per-layer seconds per gradient.

Setting: the default job's (IG's cosine matching + TV, FedSGD, one samples image at 32 px,
known labels) on ConvNet-16, a quarter-width and a full-width ResNet-18, and ConvNet-16 under FedAvg
with 3 local steps. Prints a table and writes JSON.

    python benchmarks/image_gradient.py [--steps 12] [--threads 1] [--out benchmarks/image_gradient.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedleak.attacks.matching import GradientMatching
from fedleak.attacks.objectives import COSTS, Cost
from fedleak.config import build_config
from fedleak.pipeline import prepare

MODELS = {
    "convnet16": ["model.name=convnet", "model.width=0.25"],
    "resnet18w.25": ["model.name=resnet18", "model.width=0.25"],
    "resnet18": ["model.name=resnet18", "model.width=1.0"],
    "convnet16-fedavg3": ["model.name=convnet", "model.width=0.25", "client.protocol=fedavg", "client.local_steps=3"],
}
PARTS = {"differentiation": ("plain autograd", "torch.func.grad"), "cost": ("per-layer", "concatenated")}


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


COSTS.register("cosine-concatenated")(Cost(  # this process's own entry: the cost part's reference
    prepare=lambda targets: {"target": _flat(targets), "norm": _flat(targets).norm()},
    evaluate=lambda grads, state: 1 - torch.dot(_flat(grads), state["target"])
    / (_flat(grads).norm() * state["norm"]).clamp_min(torch.finfo(state["norm"].dtype).tiny),
))


def autograd_gradient(objective: GradientMatching, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    xr = x.detach().requires_grad_(True)
    total, _ = objective.trial(xr, labels, batched=False)
    (gx,) = torch.autograd.grad(total, xr)
    return gx


def functional_gradient(objective: GradientMatching, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    gx, _ = torch.func.grad(lambda xr: objective.trial(xr, labels, batched=True), has_aux=True)(x.detach())
    return gx


def compare(ways: dict[str, Callable[[], torch.Tensor]], steps: int) -> dict:
    """Median seconds of each way (the first is the reference), alternating, and how far apart the
    two gradients are (largest difference ÷ largest entry of the reference)."""
    (ref, first), (_, second) = ((name, fn()) for name, fn in ways.items())  # warm-up, and the check
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(steps):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ms = [1e3 * statistics.median(times[name]) for name in ways]
    return {"reference_ms": ms[0], "variant_ms": ms[1], "ratio": ms[1] / ms[0],
            "max_relative_difference": float((first - second).abs().max() / first.abs().max().clamp_min(1e-30))}


def measure(model: str, overrides: list[str], steps: int) -> list[dict]:
    config = build_config(overrides=["device=cpu", "data.image_size=32", "client.seed=3", "knowledge.labels=true",
                                     *overrides])
    p = prepare(config)
    labels = p.knowledge.labels
    x = torch.randn(1, *p.knowledge.input_shape, generator=torch.Generator().manual_seed(0))
    per_layer = GradientMatching(p.payload, p.knowledge, "cosine", regularizers={"tv": 1e-3})
    concatenated = GradientMatching(p.payload, p.knowledge, "cosine-concatenated", regularizers={"tv": 1e-3})
    ways = {
        "differentiation": {"plain autograd": lambda: autograd_gradient(per_layer, x, labels),
                            "torch.func.grad": lambda: functional_gradient(per_layer, x, labels)},
        "cost": {"per-layer": lambda: autograd_gradient(per_layer, x, labels),
                 "concatenated": lambda: autograd_gradient(concatenated, x, labels)},
    }
    return [{"part": part, "model": model, "layers": len(per_layer.names), "reference": PARTS[part][0],
             "variant": PARTS[part][1], "steps": steps, **compare(ways[part], steps)} for part in PARTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed gradients per way and case")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/image_gradient.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = [r for model, overrides in MODELS.items() for r in measure(model, overrides, args.steps)]
    print(f"{'part':<16}{'model':<19}{'reference':<16}{'ms':>8}  {'variant':<16}{'ms':>8}{'variant ÷ ref.':>16}"
          f"{'max rel. diff':>15}")
    for r in sorted(rows, key=lambda r: r["part"]):
        print(f"{r['part']:<16}{r['model']:<19}{r['reference']:<16}{r['reference_ms']:>8.1f}  {r['variant']:<16}"
              f"{r['variant_ms']:>8.1f}{r['ratio']:>16.2f}{r['max_relative_difference']:>15.1e}")
    Path(args.out).write_text(json.dumps({
        "device": "cpu", "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
        "seconds": round(time.perf_counter() - start, 1), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
