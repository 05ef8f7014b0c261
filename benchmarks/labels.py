"""Label recovery accuracy on CIFAR-10 per method, batch size and model state (issue #24).

Random batches of distinct images of ../shared/data's CIFAR-10 training subset (labels repeat: B is
up to 256 with 10 classes); FedSGD gradients of a LeNet-5 at width 4 (a small ReLU convnet, 32 px), once
at its seeded initialisation (``untrained``) and once trained (``trained``: ``--checkpoint``, trained here
with fedleak's own training loop when the file is absent, its test accuracy printed and recorded).
Accuracy compares recovered and true labels as multisets (:func:`fedleak.metrics.label_accuracy`;
for counts, 1 − Σ_c |n̂_c − n_c| / 2B). A method that refuses a batch (iDLG beyond one image, Yin
et al. beyond B = 10) has no row there. ``uniform`` is a reference, not a method: the counts
B/C − B·∂L/∂b, exact when every image's posterior is the uniform one. Two draws of the batch: ``iid``
(any images: counts near B/C, where a uniform guess already scores high) and ``skewed`` (a non-IID
client: every image from 3 classes drawn per batch, the label skew of realistic federations), where a
method must read the counts from the update. Prints a table and writes JSON.

    python benchmarks/labels.py [--root ../shared/data] [--sizes 1,4,8,64,256] [--batches 10]
        [--checkpoint checkpoints/lenet5-cifar10-labels.safetensors] [--out benchmarks/labels.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedleak.attacks.labels import LABEL_METHODS, classifier_names, integer_counts
from fedleak.data import load_dataset, pick_indices
from fedleak.data.normalization import Normalization
from fedleak.errors import FedleakError
from fedleak.fl import Client, ClientData
from fedleak.fl.payload import Payload
from fedleak.metrics import label_accuracy
from fedleak.models import create_model
from fedleak.models.checkpoint import load_into, read_info, save_checkpoint
from fedleak.training import TrainSettings, train_target

MODEL, WIDTH, CLASSES = "lenet5", 4.0, 10  # classifier input d = 336 ≥ 256, so `auto` may pick iLRG


def uniform_labels(payload: Payload, num_classes: int) -> torch.Tensor:
    """The reference counts B/C − B·∂L/∂b (every posterior taken as uniform), as labels."""
    b = payload.hyper.observed_images
    _, bias = classifier_names(payload, num_classes)
    assert bias is not None  # LeNet-5's classifier has one
    counts = integer_counts(b / num_classes - b * payload.update[bias].double(), b)
    return torch.repeat_interleave(torch.arange(num_classes), counts)


def trained_model(path: Path, root: str, epochs: int) -> tuple[torch.nn.Module, float]:
    """The trained LeNet-5 at ``path`` (trained on ``root``'s CIFAR-10 first when absent) and its
    test accuracy on the test split."""
    if not path.exists():
        run = train_target(MODEL, "cifar10", root, WIDTH, settings=TrainSettings(epochs=epochs, seed=0),
                           progress=False)
        save_checkpoint(path, run.model, run.info)
        print(f"trained {path} in {run.history.seconds:.0f} s", flush=True)
    info = read_info(path)
    assert info is not None and info.test_accuracy is not None  # written by save_checkpoint above
    model = create_model(MODEL, CLASSES, 3, 32, width=WIDTH, seed=0)
    load_into(model, path)
    return model.eval(), info.test_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--sizes", default="1,4,8,64,256")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--checkpoint", default="checkpoints/lenet5-cifar10-labels.safetensors")
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--skew-classes", type=int, default=3, help="classes per batch of the skewed draw")
    parser.add_argument("--out", default="benchmarks/labels.json")
    args = parser.parse_args()
    ds = load_dataset("cifar10", args.root, split="train")
    trained, test_accuracy = trained_model(Path(args.checkpoint), args.root, args.train_epochs)
    models = {"untrained": (create_model(MODEL, CLASSES, 3, 32, width=WIDTH, seed=0).eval(), None),
              "trained": (trained, test_accuracy)}
    methods = {**{m: LABEL_METHODS.get(m) for m in LABEL_METHODS.names()}, "uniform": uniform_labels}
    rows = []
    for state, (model, accuracy) in models.items():
        client = Client(model, Normalization(ds.mean, ds.std))
        for draw, b in ((d, int(s)) for d in ("iid", "skewed") for s in args.sizes.split(",")):
            scores: dict[str, list[float]] = {m: [] for m in methods}
            seconds: dict[str, float] = {m: 0.0 for m in methods}
            for k in range(args.batches):
                picked = torch.randperm(CLASSES, generator=torch.Generator().manual_seed(7000 * b + k))
                classes = picked[: args.skew_classes].tolist() if draw == "skewed" else None
                idx = pick_indices(ds, b, classes=classes, seed=1000 * b + k)
                data = ClientData(ds.images(idx), ds.label_of(idx))
                payload = client.update(data)
                for method, recover in methods.items():
                    start = time.perf_counter()
                    try:
                        scores[method].append(label_accuracy(recover(payload, CLASSES), data.labels))
                    except FedleakError:
                        pass
                    seconds[method] += time.perf_counter() - start
            for method, values in scores.items():
                if values:
                    rows.append({"model": MODEL, "width": WIDTH, "state": state, "test_accuracy": accuracy,
                                 "draw": draw, "batch": b, "method": method, "accuracy": sum(values) / len(values),
                                 "min_accuracy": min(values), "batches": len(values),
                                 "seconds_per_batch": seconds[method] / args.batches})
            print(f"{state} {draw} B={b} done", flush=True)
    print(f"\ntrained {MODEL} (width {WIDTH}): test accuracy {test_accuracy:.3f} ({args.checkpoint})")
    print(f"{'state':9} {'draw':6} {'B':>3} {'method':8} {'accuracy':>8} {'min':>6} {'batches':>7}")
    for r in rows:
        print(f"{r['state']:9} {r['draw']:6} {r['batch']:3} {r['method']:8} {r['accuracy']:8.3f} {r['min_accuracy']:6.3f} "
              f"{r['batches']:7}")
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
