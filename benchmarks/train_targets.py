"""Train the target models the seed studies need, on ../shared/data, within a CPU budget.

Lim & Chan attack ResNet-18 and DenseNet-121 on MNIST, CIFAR-10 and faces and classify the
reconstructions with other architectures (transfer). Each target here is sized to train in at most
about 20 minutes on 2 CPU cores. Checkpoints go to --out-dir (build products, not in git); an
existing checkpoint is kept unless --force, so an interrupted run resumes. Prints a table and writes
JSON with every model's test accuracy and training time.

    python benchmarks/train_targets.py [--root ../shared/data] [--out-dir checkpoints] [--only NAME,...]
    python benchmarks/train_targets.py --only resnet18-cifar10-full --json benchmarks/train_targets_full.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedleak.models.checkpoint import read_info, save_checkpoint
from fedleak.training import TrainSettings, train_target

# name: (model, dataset, sub-folder of root, width, image size, channels, test fraction, epochs, lr, augment)
TARGETS = {
    "resnet18-mnist": ("resnet18", "mnist", "", 0.25, 28, 1, 0.2, 8, 0.05, False),
    "resnet18-orl": ("resnet18", "folder", "orl_faces", 0.25, 32, 1, 0.2, 40, 0.05, True),
    "resnet50-orl": ("resnet50", "folder", "orl_faces", 0.25, 32, 1, 0.2, 40, 0.05, True),
    "se_resnet50-orl": ("se_resnet50", "folder", "orl_faces", 0.25, 32, 1, 0.2, 40, 0.05, True),
    "inception_resnet_v1-orl": ("inception_resnet_v1", "folder", "orl_faces", 0.25, 32, 1, 0.2, 40, 0.05, True),
    "resnet18-cifar10": ("resnet18", "cifar10", "", 0.25, 32, 3, None, 12, 0.05, True),
    "densenet121-cifar10": ("densenet121", "cifar10", "", 0.25, 32, 3, None, 6, 0.1, True),
    # Full width, the papers' scale (issue #25): hours on 2 cores, trained only when named with --only
    "resnet18-cifar10-full": ("resnet18", "cifar10", "", 1.0, 32, 3, None, 5, 0.05, True),
    "densenet121-cifar10-full": ("densenet121", "cifar10", "", 1.0, 32, 3, None, 4, 0.1, True),
    "resnet18-mnist-full": ("resnet18", "mnist", "", 1.0, 28, 1, 0.2, 3, 0.05, False),
    "resnet18-orl-full": ("resnet18", "folder", "orl_faces", 1.0, None, 1, 0.2, 30, 0.05, True),
}
DEFAULT = [name for name in TARGETS if not name.endswith("-full")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--out-dir", default="checkpoints")
    parser.add_argument("--only", default=",".join(DEFAULT), help="targets to train (the -full ones only when named)")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--json", default="benchmarks/train_targets.json")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    results = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    for name in args.only.split(","):
        model, dataset, sub, width, size, channels, fraction, epochs, lr, aug = TARGETS[name]
        path = out_dir / f"{name}.safetensors"
        if path.exists() and not args.force:
            info = read_info(path)
            print(f"{name}: kept {path} (test accuracy {info.test_accuracy:.3f})", flush=True)
            results[name] = {"model": model, "dataset": info.dataset, "width": width,
                             "test_accuracy": info.test_accuracy, "epochs": info.epochs,
                             "seconds": info.training.get("seconds"),
                             "train_images": info.training.get("train_images"),
                             "test_images": info.training.get("test_images"), "checkpoint": str(path)}
            continue
        root = str(Path(args.root) / sub) if sub else args.root
        run = train_target(model, dataset, root, width, {}, size, channels, fraction, None,
                           TrainSettings(epochs=epochs, lr=lr, batch_size=64, augment=aug, seed=0),
                           progress=False)
        save_checkpoint(path, run.model, run.info)
        results[name] = {"model": model, "dataset": run.info.dataset, "width": width,
                         "test_accuracy": run.info.test_accuracy, "epochs": epochs,
                         "seconds": round(run.history.seconds, 1),
                         "train_images": run.info.training["train_images"],
                         "test_images": run.info.training["test_images"], "checkpoint": str(path)}
        print(f"{name}: test accuracy {run.info.test_accuracy:.3f} in {run.history.seconds:.0f} s", flush=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\n{'target':26} {'width':>5} {'train':>6} {'test':>5} {'epochs':>6} {'accuracy':>8} {'minutes':>7}")
    for name, r in results.items():
        print(f"{name:26} {r['width']:5} {r['train_images']:6} {r['test_images']:5} {r['epochs']:6} "
              f"{r['test_accuracy']:8.3f} {(r['seconds'] or 0) / 60:7.1f}")
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
