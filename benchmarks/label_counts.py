"""Label histograms from multi-step FedAvg updates (issue #23, 2b) on CIFAR-10, and the
malicious-server figure beside them (2c).

Each client is a plain PyTorch loop: N images of ``data_batch_1`` drawn with a skewed (non-IID) class
mix, ``DataLoader(shuffle=True)`` with its own generator, batches of 32, ``torch.optim.SGD`` (lr 0.05,
momentum 0 or 0.9), 1–3 epochs, a LeNet-5 at 16 px from its seeded initialisation. The server knows
θ₀, θ₀ − θ_τ and the public hyperparameters, and holds 2,000 labelled images of the test split.
Printed per setting: the total-variation error of the recovered class histogram for each count
(``simulate``, the default; ``interpolate``, Geng/Dimitrov's; ``uniform``, no model) and the share of
the N examples an imprint server with ``--bins`` bins would recover exactly. Needs ../shared/data.

    python benchmarks/label_counts.py [--root ../shared/data] [--seeds 2] [--out benchmarks/label_counts.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedleak.attacks.base import AttackerKnowledge
from fedleak.attacks.imprint_yield import imprint_share
from fedleak.attacks.label_counts import (
    CountSettings,
    histogram_error,
    integer_counts,
    label_histogram,
    recover_label_counts,
)
from fedleak.data import load_dataset
from fedleak.data.normalization import Normalization
from fedleak.fl.payload import ClientTraining, Payload
from fedleak.models import create_model

SKEW = [0.26, 0.18, 0.14, 0.11, 0.09, 0.07, 0.06, 0.04, 0.03, 0.02]
COUNTS = {"simulate": CountSettings(method="simulate"), "interpolate": CountSettings(method="interpolate")}


def client(train, n: int, epochs: int, momentum: float, seed: int, lr: float = 0.05):
    """One PyTorch client round: its payload, its true labels and the architecture."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randperm(10, generator=g)  # which class is the client's most common one
    wanted = integer_counts([SKEW[int(k)] * n for k in torch.argsort(classes)], n)
    pools = [torch.nonzero(train.labels == k).flatten() for k in range(10)]
    idx = torch.cat([p[torch.randperm(len(p), generator=g)[: int(m)]] for p, m in zip(pools, wanted)])
    idx = idx[torch.randperm(len(idx), generator=g)].tolist()
    images, labels = train.images(idx), train.labels[idx]
    norm = Normalization(train.mean, train.std)
    model = create_model("lenet5", 10, 3, 16, seed=seed)
    architecture, start = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    loader = DataLoader(TensorDataset(norm.to_input(images), labels), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(10_000 + seed))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    update = {k: (start[k] - p.detach()).clone() for k, p in model.named_parameters()}
    hyper = ClientTraining(protocol="fedavg", model_mode="train", lr=lr, epochs=epochs, local_batch_size=32,
                           momentum=momentum).public(n)
    return Payload(model_state=start, update=update, hyper=hyper), labels, architecture, norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--seeds", type=int, default=2, help="clients per setting")
    parser.add_argument("--bins", type=int, default=128, help="the imprint server's bins")
    parser.add_argument("--out", default="benchmarks/label_counts.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # many small steps: one thread is fastest on a shared CPU
    started = time.perf_counter()
    train = load_dataset("cifar10", args.root, split="train", image_size=16)
    test = load_dataset("cifar10", args.root, split="test", image_size=16)
    public = test.images(range(2000)), test.labels[:2000]
    rows = []
    for n in (100, 500, 800):
        for epochs in (1, 2, 3):
            for momentum in (0.0, 0.9):
                errors: dict[str, list[float]] = {m: [] for m in (*COUNTS, "uniform")}
                seconds: list[float] = []
                for seed in range(args.seeds):
                    payload, labels, architecture, norm = client(train, n, epochs, momentum, seed)
                    truth = label_histogram(labels, 10)
                    knowledge = AttackerKnowledge(architecture=architecture, input_shape=(3, 16, 16), num_classes=10,
                                                  mean=norm.mean, std=norm.std)
                    for name, settings in COUNTS.items():
                        t = time.perf_counter()
                        counts = recover_label_counts(payload, knowledge, *public, settings=settings)
                        if name == "simulate":
                            seconds.append(time.perf_counter() - t)
                        errors[name].append(histogram_error(counts, truth))
                    errors["uniform"].append(histogram_error(recover_label_counts(payload, 10), truth))
                row = {"examples": n, "epochs": epochs, "momentum": momentum, "clients": args.seeds,
                       **{f"tv_{m}": statistics.mean(v) for m, v in errors.items()},
                       "tv_simulate_max": max(errors["simulate"]), "simulate_seconds": statistics.mean(seconds),
                       "imprint_bins": args.bins, "imprint_share": imprint_share(n, args.bins)}
                rows.append(row)
                print(f"N={n:3} epochs={epochs} momentum={momentum:.1f}  TV simulate {row['tv_simulate']:.3f} "
                      f"(max {row['tv_simulate_max']:.3f})  interpolate {row['tv_interpolate']:.3f}  "
                      f"uniform {row['tv_uniform']:.3f}  [{row['simulate_seconds']:.1f} s]  "
                      f"imprint@{args.bins}: {row['imprint_share']:.3f}", flush=True)
    summary = {"rows": rows, "seconds": time.perf_counter() - started, "model": "lenet5 16px", "lr": 0.05,
               "skew": SKEW, "public": "2000 labelled test-split images"}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"{summary['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
