"""False positives and detections of ``fedleak inspect-model`` (:mod:`fedleak.inspect`).

Honest models: every registered family, untrained at several seeds and input shapes, and small ones
trained on CIFAR-10 and MNIST from ../shared/data (a few epochs on a few thousand 16-px images, SGD
with momentum and weight decay). Malicious models: every modification fedleak's server builds, at
several settings, on every registered family; trap weights (which need a fully connected first
layer: the families that have none are counted as refused) on ``mlp`` at several settings, widths,
datasets and server seeds. Prints a table and writes JSON.

    python benchmarks/detector.py [--root ../shared/data] [--seeds 5] [--device auto] [--json benchmarks/detector.json]

Models are built, trained and inspected on ``--device`` (the counts do not depend on it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from scipy.stats import binomtest

from fedleak.config import build_config
from fedleak.device import device_name, resolve_device
from fedleak.errors import ConfigError
from fedleak.fl.server import server_flags
from fedleak.inspect import (
    Thresholds,
    aligned_rows,
    classifier,
    classifiers,
    inspect_model,
    magnitude_excess,
    sent_model,
    weight_matrices,
)
from fedleak.models import create_model
from fedleak.models.registry import MODELS
from fedleak.training import TrainSettings, train_target

SHAPES = [(10, 3, 32), (10, 1, 28), (100, 3, 32), (2, 1, 16), (40, 1, 64)]  # classes, channels, side
TRAINED = [("mlp", "mnist", 1), ("lenet5", "mnist", 1), ("convnet", "cifar10", 3), ("lenet", "cifar10", 3),
           ("resnet18", "cifar10", 3), ("vgg7", "cifar10", 3), ("densenet121", "cifar10", 3)]
MALICIOUS = ["imprint:bins=16", "imprint:bins=128", "imprint:bins=512,measure=random", "imprint:bins=64,fit=gaussian",
             "imprint:bins=256,gain=1,scale=1", "fishing:target=0", "fishing:target=7,margin=5",
             "fishing:target=3,margin=100"]
TRAP = ["trap", "trap:scale=1.05", "trap:scale=1.3", "trap:rate=0.125,split=test", "trap:rate=0.3,split=test",
        "trap:rows=24"]  # split=test: ../shared/data holds no MNIST training split
TRAP_SETS = [("cifar10", 32), ("mnist", 28)]  # dataset, side
TRAP_WIDTHS = (0.125, 0.25, 1.0)


def alignment(matrix: torch.Tensor, limits: Thresholds) -> float:
    """The cosine to their mean direction that 90 % of a layer's nonzero rows reach (what the imprint
    check compares with its 0.999); 0 for layers it skips."""
    rows = matrix[matrix.norm(dim=1) > 0]
    if len(rows) < limits.min_rows or matrix.shape[1] < limits.min_rows:
        return 0.0
    unit = rows / rows.norm(dim=1, keepdim=True)
    mean = unit.sum(0)
    return float(torch.quantile(unit @ (mean / mean.norm()), 1 - limits.aligned_share)) if mean.norm() > 0 else 0.0


def margins(model: torch.nn.Module, classes: int) -> dict[str, float]:
    """How close an honest model comes to each threshold: the largest share of aligned rows (or columns)
    of any layer, and the classifier's row-norm dominance and bias gap."""
    limits, weights = Thresholds(), weight_matrices(model.state_dict())
    aligned = max((aligned_rows(m, limits)[0] for w, _ in weights.values() for m in (w, w.T)), default=0.0)
    cosine = max((alignment(m, limits) for w, _ in weights.values() for m in (w, w.T)), default=0.0)
    _, w, b = classifier(weights, classes)
    norms = w.norm(dim=1)
    return {"aligned_share": aligned, "alignment_q10": cosine, "dominance": float(norms.max() / norms.median()),
            "bias_gap": float(b.max() - b.min()) if b is not None else 0.0, **trap_margins(weights, classes, limits)}


def trap_margins(weights: dict, classes: int | None, limits: Thresholds) -> dict[str, float]:
    """How close a model comes to the trap check: over the layers it reads (linear, not a classifier,
    at least ``trap_columns`` inputs, ``min_rows`` rows), the smallest sign-test p-value and the
    largest median magnitude excess (the check flags p ≤ trap_p with excess ≥ trap_excess together)."""
    heads, p, excess = set(classifiers(weights, classes)), 1.0, 0.0
    for name, entry in weights.items():
        if entry.ndim != 2 or name in heads or entry.matrix.shape[1] < limits.trap_columns:
            continue
        e = magnitude_excess(entry.matrix)
        if len(e) < limits.min_rows:
            continue
        p = min(p, float(binomtest(int((e > 0).sum()), len(e), 0.5, alternative="greater").pvalue))
        excess = max(excess, float(e.median()))
    return {"trap_min_p": p, "trap_max_excess": excess}


def untrained(seeds: int, device: torch.device) -> list[dict]:
    rows = []
    for name in MODELS.names():
        for classes, channels, side in SHAPES:
            for seed in range(seeds):
                try:
                    model = create_model(name, classes, channels, side, width=0.25, seed=seed).to(device)
                except Exception:  # this family cannot take this shape
                    break
                f = inspect_model(model, classes)
                rows.append({"model": name, "shape": [classes, channels, side], "seed": seed, "trained": False,
                             "flagged": f.suspicious, "findings": f.as_dict()["findings"], **margins(model, classes)})
    return rows


def trained(root: str, device: torch.device) -> list[dict]:
    rows = []
    for name, dataset, channels in TRAINED:
        start = time.perf_counter()
        run = train_target(name, dataset, root, 0.25, {}, 16, channels, None, 3000,
                           TrainSettings(epochs=3, lr=0.05, batch_size=64, seed=0, device=device_name(device)),
                           progress=False)
        f = inspect_model(run.model, run.info.num_classes)
        rows.append({"model": name, "dataset": dataset, "trained": True, "test_accuracy": run.info.test_accuracy,
                     "seconds": round(time.perf_counter() - start, 1), "flagged": f.suspicious,
                     "findings": f.as_dict()["findings"], **margins(run.model, run.info.num_classes)})
    return rows


def malicious(root: str, device: torch.device) -> list[dict]:
    rows = []
    for name in MODELS.names():
        for spec in MALICIOUS:
            flags = {"data.name": "cifar10", "data.root": root, "data.image_size": 32, "model.name": name,
                     "model.width": 0.125, "device": device_name(device), **server_flags(spec)}
            model, classes = sent_model(build_config(flags=flags))
            f = inspect_model(model, classes)
            rows.append({"model": name, "modification": spec, "flagged": f.suspicious, "kinds": f.kinds,
                         "right_kind": f.kinds == [spec.partition(":")[0]]})
    return rows


def trapped(root: str, seeds: int, device: torch.device) -> tuple[list[dict], list[str]]:
    """Trap weights on ``mlp`` (every setting × width × dataset × server seed), and the families
    whose first layer is not fully connected (refused with one line)."""
    rows = []
    for dataset, side in TRAP_SETS:
        for spec in TRAP:
            for width in TRAP_WIDTHS:
                for seed in range(seeds):
                    flags = {"data.name": dataset, "data.root": root, "data.image_size": side, "model.name": "mlp",
                             "model.width": width, "seed": seed, "device": device_name(device), **server_flags(spec)}
                    model, classes = sent_model(build_config(flags=flags))
                    f = inspect_model(model, classes)
                    rows.append({"dataset": dataset, "modification": spec, "width": width, "seed": seed,
                                 "flagged": f.suspicious, "kinds": f.kinds, "right_kind": f.kinds == ["trap"],
                                 **trap_margins(weight_matrices(model.state_dict()), classes, Thresholds())})
    refused = []
    for name in MODELS.names():
        flags = {"data.name": "cifar10", "data.root": root, "data.image_size": 32, "model.name": name,
                 "model.width": 0.125, "device": device_name(device), **server_flags("trap")}
        try:
            sent_model(build_config(flags=flags))
        except ConfigError:
            refused.append(name)
    return rows, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--json", default="benchmarks/detector.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    honest = untrained(args.seeds, device) + trained(args.root, device)
    evil = malicious(args.root, device)
    traps, refused = trapped(args.root, min(args.seeds, 3), device)
    summary = {
        "untrained_models": sum(not r["trained"] for r in honest),
        "untrained_flagged": sum(r["flagged"] for r in honest if not r["trained"]),
        "trained_models": sum(r["trained"] for r in honest),
        "trained_flagged": sum(r["flagged"] for r in honest if r["trained"]),
        "malicious_models": len(evil),
        "malicious_flagged": sum(r["flagged"] for r in evil),
        "malicious_right_kind": sum(r["right_kind"] for r in evil),
        "trap_models": len(traps),
        "trap_flagged": sum(r["flagged"] for r in traps),
        "trap_right_kind": sum(r["right_kind"] for r in traps),
        "trap_flagged_by_setting": {spec: sum(r["flagged"] for r in traps if r["modification"] == spec)
                                    for spec in TRAP},
        "trap_models_per_setting": len(traps) // len(TRAP),
        "trap_refused_families": refused,
        **{f"honest_max_{k}": max(r[k] for r in honest)
           for k in ("aligned_share", "alignment_q10", "dominance", "bias_gap", "trap_max_excess")},
        "honest_min_trap_min_p": min(r["trap_min_p"] for r in honest),
        "thresholds": vars(Thresholds()),
        "device": device_name(device),
    }
    print(f"{'set':<22}{'models':>8}{'flagged':>9}")
    print(f"{'honest, untrained':<22}{summary['untrained_models']:>8}{summary['untrained_flagged']:>9}")
    print(f"{'honest, trained':<22}{summary['trained_models']:>8}{summary['trained_flagged']:>9}")
    for r in honest:
        if r["trained"]:
            print(f"  {r['model']:<12} {r['dataset']:<8} test accuracy {r['test_accuracy']:.3f}  "
                  f"flagged {r['flagged']}")
    print(f"honest maxima: aligned share {summary['honest_max_aligned_share']:.3f} (flag ≥ 0.9), cosine 90 % of "
          f"rows reach {summary['honest_max_alignment_q10']:.3f} (flag ≥ 0.999), row dominance "
          f"{summary['honest_max_dominance']:.2f} (≥ 10), bias gap {summary['honest_max_bias_gap']:.2f} (≥ 10)")
    print(f"honest trap margins: smallest sign-test p {summary['honest_min_trap_min_p']:.2g} (flag ≤ "
          f"{Thresholds().trap_p:g}), largest median excess {summary['honest_max_trap_max_excess']:.3f} "
          f"(with ≥ {Thresholds().trap_excess:g})")
    print(f"{'malicious':<22}{summary['malicious_models']:>8}{summary['malicious_flagged']:>9}"
          f"  (right kind: {summary['malicious_right_kind']})")
    print(f"{'trap weights (mlp)':<22}{summary['trap_models']:>8}{summary['trap_flagged']:>9}"
          f"  (right kind: {summary['trap_right_kind']})")
    for r in TRAP:
        print(f"  {r:<20}{summary['trap_models_per_setting']:>8}{summary['trap_flagged_by_setting'][r]:>9}")
    for dataset, side in TRAP_SETS:
        for width in TRAP_WIDTHS:
            sel = [r for r in traps if r["dataset"] == dataset and r["width"] == width]
            print(f"  {dataset} {side}px width {width:<6}{len(sel):>6}{sum(r['flagged'] for r in sel):>9}")
    print(f"trap refused (first layer not fully connected): {', '.join(refused)}")
    Path(args.json).write_text(json.dumps({"summary": summary, "honest": honest, "malicious": evil, "trap": traps},
                                          indent=1))


if __name__ == "__main__":
    main()
