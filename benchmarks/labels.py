"""Label recovery accuracy on CIFAR-10 for batch sizes 1, 4 and 8, per method.

Random batches (labels may repeat) from ../shared/data; FedSGD gradients of untrained models.
Accuracy compares recovered and true labels as multisets. Prints a table and writes JSON.

    python benchmarks/labels.py [--root ../shared/data] [--batches 25] [--out benchmarks/labels.json]
"""

from __future__ import annotations

import argparse
import json

from fedleak.attacks.labels import LABEL_METHODS
from fedleak.data import load_dataset, pick_indices
from fedleak.errors import FedleakError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientData
from fedleak.metrics import label_accuracy
from fedleak.models import create_model

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--models", default="convnet,resnet18")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--out", default="benchmarks/labels.json")
    args = parser.parse_args()
    ds = load_dataset("cifar10", args.root, split="train")
    rows = []
    for model_name in args.models.split(","):
        model = create_model(model_name, 10, 3, 32, width=args.width, seed=0)
        client = Client(model, Normalization(ds.mean, ds.std))
        for b in (1, 4, 8):
            scores: dict[str, list[float]] = {m: [] for m in LABEL_METHODS.names()}
            for k in range(args.batches):
                idx = pick_indices(ds, b, seed=1000 * b + k)
                data = ClientData(ds.images(idx), ds.label_of(idx))
                payload = client.update(data)
                for method in scores:
                    try:
                        scores[method].append(label_accuracy(LABEL_METHODS.get(method)(payload, 10), data.labels))
                    except FedleakError:
                        pass
            for method, values in scores.items():
                if values:
                    rows.append({"model": model_name, "width": args.width, "batch": b, "method": method,
                                 "accuracy": sum(values) / len(values), "batches": len(values)})
    print(f"{'model':10} {'B':>2} {'method':8} {'accuracy':>8}")
    for r in rows:
        print(f"{r['model']:10} {r['batch']:2} {r['method']:8} {r['accuracy']:8.3f}")
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
