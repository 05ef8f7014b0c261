"""Pass and fail rates of the audit's mis-specification check (fedleak.specification).

Each client holds its own CIFAR-10 training images (disjoint across clients) and trains one FedAvg
round with torch.optim (fedleak.fl.Client); the server declares one training — SGD, the declared lr,
one epoch in order, no momentum — and checks each update against simulations on public images (the
test split, or smooth random images). A client that trains as declared must pass; one that used
momentum 0.9, 3 epochs, another lr (×3, ×1/3), batch norm in eval mode, Adam, an undeclared top-k
sparsification or a private shuffle should fail. Clients draw IID
batches, and label-skewed ones (two classes only) to see what non-IID data does to a correct client.
Model states: the initial model and one trained for a few epochs (later rounds of a federation).
Prints a table and writes JSON.

    python benchmarks/specification_check.py [--root ../shared/data] [--clients 12] [--size 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import torch
import torch.nn.functional as F

from fedleak.attacks import AttackerKnowledge
from fedleak.data import load_dataset
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientData, ClientTraining
from fedleak.models import create_model
from fedleak.specification import NORM_Z, PROFILE_Z, compare, simulate_reference, update_shares

DECLARED = {"protocol": "fedavg", "model_mode": "train", "lr": 0.05, "local_batch_size": 16, "epochs": 1}
VARIANTS = {  # what the client really did, beside what it declared
    "as declared": {},
    "momentum 0.9": {"momentum": 0.9},
    "3 epochs": {"epochs": 3},
    "lr x3": {"lr": 0.15},
    "lr x1/3": {"lr": 0.05 / 3},
    "private shuffle": {"shuffle": True},
    "batch norm eval": {"model_mode": "eval"},
    "adam lr 1e-3": {"optimizer": "adam", "lr": 1e-3},
    "top-k 90 %": {"defense": "topk:sparsity=0.9"},
}


def pretrained(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: Normalization,
               epochs: int) -> torch.nn.Module:
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=g).split(32):
            optimizer.zero_grad()
            F.cross_entropy(model(norm.to_input(images[batch])), labels[batch]).backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--labels", choices=("uniform", "update"), default="update",
                        help="reference labels: uniform, or drawn from the update's class shares (the audit's default)")
    parser.add_argument("--sources", default="public,random")
    parser.add_argument("--size", type=int, default=16, help="image side (CIFAR-10 resized)")
    parser.add_argument("--out", default="benchmarks/specification_check.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = load_dataset("cifar10", args.root, split="train", image_size=args.size)
    test = load_dataset("cifar10", args.root, split="test", image_size=args.size)
    norm = Normalization(train.mean, train.std)
    public_idx = list(range(2000))
    public, public_labels = test.images(public_idx), test.label_of(public_idx)
    base = create_model(args.model, 10, 3, args.size, width=args.width, seed=0)
    pre_idx = list(range(9000, 10000))
    states = {"initial": base.eval(),
              "trained 3 epochs": pretrained(base, train.images(pre_idx), train.label_of(pre_idx), norm, 3)}
    all_labels = train.label_of(list(range(9000)))
    rows, started = [], time.perf_counter()
    for state_name, model in states.items():
        knowledge = AttackerKnowledge(copy.deepcopy(model), (3, args.size, args.size), 10, train.mean, train.std)
        for skew in ("iid", "two classes"):
            for c in range(args.clients):
                g = torch.Generator().manual_seed(1000 * c + (skew == "two classes"))
                if skew == "iid":
                    idx = (torch.randperm(9000, generator=g)[:args.examples]).tolist()
                else:
                    pair = torch.randperm(10, generator=g)[:2]
                    pool = torch.nonzero((all_labels == pair[0]) | (all_labels == pair[1])).flatten()
                    idx = pool[torch.randperm(len(pool), generator=g)[:args.examples]].tolist()
                data = ClientData(train.images(idx), train.label_of(idx))
                declared = ClientTraining(**DECLARED).public(args.examples)
                payloads = {}
                for variant, change in VARIANTS.items():
                    settings = {**DECLARED, **change}
                    defense = settings.pop("defense", None)
                    payload = Client(model, norm, ClientTraining(**settings), defense, seed=c + 1).update(data)
                    payloads[variant] = dataclasses.replace(payload, hyper=declared)  # what the server believes
                sources = {"public": (public, public_labels), "random": (None, None)}
                for source in args.sources.split(","):
                    images, labels = sources[source]
                    reference = None
                    for variant, payload in payloads.items():
                        if args.labels == "update":  # each update's own shares: one reference per update
                            shares = update_shares(payload, knowledge, images, labels)
                            reference = simulate_reference(payload, knowledge, images, labels, samples=args.samples,
                                                           seed=c, shares=shares)
                        elif reference is None:
                            reference = simulate_reference(payload, knowledge, images, labels,
                                                           samples=args.samples, seed=c)
                        check = compare(payload, reference)
                        rows.append({"state": state_name, "labels": skew, "client": c, "variant": variant,
                                     "source": source, "consistent": check.consistent, "norm_z": check.norm_z,
                                     "profile_z": check.profile_z, "profile_cosine": check.profile_cosine})
        print(f"{state_name}: {time.perf_counter() - started:.0f} s", flush=True)
    summary = []
    for state_name in states:
        for skew in ("iid", "two classes"):
            for source in args.sources.split(","):
                for variant in VARIANTS:
                    sel = [r for r in rows if (r["state"], r["labels"], r["source"], r["variant"])
                           == (state_name, skew, source, variant)]
                    passed = sum(r["consistent"] for r in sel) / len(sel)
                    summary.append({"state": state_name, "labels": skew, "source": source, "variant": variant,
                                    "pass_rate": passed, "n": len(sel),
                                    "median_norm_z": float(torch.tensor([r["norm_z"] for r in sel]).median()),
                                    "median_profile_z": float(torch.tensor([r["profile_z"] for r in sel]).median())})
    print(f"thresholds |norm_z| ≤ {NORM_Z}, profile_z ≤ {PROFILE_Z}; {args.model} width {args.width}, "
          f"{args.examples} examples, batches of 16, {args.samples} reference updates")
    print(f"{'state':17} {'labels':11} {'source':7} {'client did':16} {'pass':>5} {'norm z':>7} {'prof z':>7}")
    for s in summary:
        print(f"{s['state']:17} {s['labels']:11} {s['source']:7} {s['variant']:16} {s['pass_rate']:5.2f} "
              f"{s['median_norm_z']:7.1f} {s['median_profile_z']:7.1f}")
    with open(args.out, "w") as f:
        json.dump({"settings": vars(args) | {"declared": DECLARED, "norm_z": NORM_Z, "profile_z": PROFILE_Z},
                   "summary": summary, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
