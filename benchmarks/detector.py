"""False positives and detections of ``fedleak inspect-model`` (:mod:`fedleak.inspect`).

Honest models: every registered family, untrained at several seeds and input shapes, and small ones
trained on CIFAR-10 and MNIST from ../shared/data (a few epochs on a few thousand 16-px images, SGD
with momentum and weight decay). Malicious models: every modification fedleak's server builds, at
several settings, on every registered family. Prints a table and writes JSON.

    python benchmarks/detector.py [--root ../shared/data] [--seeds 5] [--device auto] [--json benchmarks/detector.json]

Models are built, trained and inspected on ``--device`` (the counts do not depend on it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedleak.config import build_config
from fedleak.device import device_name, resolve_device
from fedleak.fl.server import server_flags
from fedleak.inspect import Thresholds, aligned_rows, classifier, inspect_model, sent_model, weight_matrices
from fedleak.models import create_model
from fedleak.models.registry import MODELS
from fedleak.training import TrainSettings, train_target

SHAPES = [(10, 3, 32), (10, 1, 28), (100, 3, 32), (2, 1, 16), (40, 1, 64)]  # classes, channels, side
TRAINED = [("mlp", "mnist", 1), ("lenet5", "mnist", 1), ("convnet", "cifar10", 3), ("lenet", "cifar10", 3),
           ("resnet18", "cifar10", 3), ("vgg7", "cifar10", 3), ("densenet121", "cifar10", 3)]
MALICIOUS = ["imprint:bins=16", "imprint:bins=128", "imprint:bins=512,measure=random", "imprint:bins=64,fit=gaussian",
             "imprint:bins=256,gain=1,scale=1", "fishing:target=0", "fishing:target=7,margin=5",
             "fishing:target=3,margin=100"]


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
            "bias_gap": float(b.max() - b.min()) if b is not None else 0.0}


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
    summary = {
        "untrained_models": sum(not r["trained"] for r in honest),
        "untrained_flagged": sum(r["flagged"] for r in honest if not r["trained"]),
        "trained_models": sum(r["trained"] for r in honest),
        "trained_flagged": sum(r["flagged"] for r in honest if r["trained"]),
        "malicious_models": len(evil),
        "malicious_flagged": sum(r["flagged"] for r in evil),
        "malicious_right_kind": sum(r["right_kind"] for r in evil),
        **{f"honest_max_{k}": max(r[k] for r in honest)
           for k in ("aligned_share", "alignment_q10", "dominance", "bias_gap")},
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
    print(f"{'malicious':<22}{summary['malicious_models']:>8}{summary['malicious_flagged']:>9}"
          f"  (right kind: {summary['malicious_right_kind']})")
    Path(args.json).write_text(json.dumps({"summary": summary, "honest": honest, "malicious": evil}, indent=1))


if __name__ == "__main__":
    main()
