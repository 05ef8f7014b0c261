"""Realistic FL clients (issue #23): how well the audit's simulation explains what they send.

Clients as a Flower app written by others has them: ``--examples`` CIFAR-10 training images each (from
``../shared/data``), a ``DataLoader`` over them with batches of 32, ``torch.optim.SGD(momentum=0.9)``
(or Adam), ``--epochs`` local epochs, batch norm in train mode. For each client the benchmark reads
the training the way the Flower audit does (:func:`fedleak.integrations.flower.records.read_training`)
from what the server sent, and measures the cosine between the client's real update and the update the
attacker's simulation computes from the client's *own true examples* — 1 means the simulation is the
client's training; anything less is what the attack can never get past. Three declarations:

* ``declared, known order``: the train config sends every setting, the client orders each epoch with
  the public ``shuffle-seed`` (a ``DistributedSampler``);
* ``declared, private order``: same settings, the client's ``DataLoader(shuffle=True)`` draws its own
  order (the audit simulates its own order: the issue's "unknown order");
* ``nothing declared``: the train config sends only the lr (the audit assumes one epoch of one
  full-batch SGD step without momentum — the mis-specification the issue found).

Prints a table, writes ``benchmarks/realistic_clients.json``. Goal: cosine ≥ 0.999 with a known order.
Run: ``python benchmarks/realistic_clients.py [--clients 3 --examples 500 --epochs 2]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fedleak.attacks import AttackerKnowledge
from fedleak.attacks.simulation import Simulation
from fedleak.data import load_dataset
from fedleak.fl import Payload
from fedleak.integrations.flower.records import read_training
from fedleak.models import create_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def client_round(model, x, y, optimizer, epochs, batch, seed, private):
    """The app's client, plain PyTorch: returns its state dict after ``epochs`` over a DataLoader."""
    local = copy.deepcopy(model).train()
    dataset = TensorDataset(x, y)
    if private:
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(10_000 + seed))
        sampler = None
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler)
    opt = (torch.optim.SGD(local.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) if optimizer == "sgd"
           else torch.optim.Adam(local.parameters(), lr=1e-3))
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(local(xb), yb).backward()
            opt.step()
    return local.state_dict()


def cosine(a: dict, b: dict) -> float:
    u = torch.cat([t.flatten() for t in a.values()])
    v = torch.cat([b[n].flatten() for n in a])
    return float(torch.dot(u, v) / (u.norm() * v.norm()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "realistic_clients.json"))
    args = ap.parse_args()
    if not (DATA / "cifar-10-batches-py").is_dir():
        raise SystemExit(f"needs CIFAR-10 under {DATA}")
    data = load_dataset("cifar10", root=DATA, split="train")
    model = create_model(args.model, 10, 3, 32, width=0.5, seed=0)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 32, 32), 10, MEAN, STD)
    rows = []
    for optimizer in ("sgd", "adam"):
        sent = {"lr": 0.05 if optimizer == "sgd" else 1e-3, "optimizer": optimizer, "local-epochs": args.epochs,
                "batch-size": 32, "model-mode": "train", "drop-last": False, "fedleak-defense": "none"}
        if optimizer == "sgd":
            sent |= {"momentum": 0.9, "weight-decay": 5e-4, "nesterov": False, "dampening": 0}
        else:
            sent |= {"weight-decay": 0.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
        for case in ("declared, known order", "declared, private order", "nothing declared"):
            scores, seconds = [], 0.0
            for k in range(args.clients):
                idx = list(range(k * args.examples, (k + 1) * args.examples))
                x = (data.images(idx) - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
                y = data.label_of(idx)
                after = client_round(model, x, y, optimizer, args.epochs, 32, seed=k, private=case != "declared, known order")
                before = model.state_dict()
                update = {n: before[n] - after[n] for n, _ in model.named_parameters()}
                config = ({**sent, "shuffle-seed": k} if case == "declared, known order"
                          else {**sent, "shuffle": True} if case == "declared, private order" else {"lr": sent["lr"]})
                reading = read_training(config, args.examples, model)
                buffers = {n: after[n] for n, _ in model.named_buffers()}
                payload = Payload(before, update, reading.hyper, buffers)
                start = time.perf_counter()
                simulated = Simulation(payload, knowledge).replay(x, y)
                seconds += time.perf_counter() - start
                scores.append(cosine({n: t.detach() for n, t in simulated.items()}, update))
            rows.append({"optimizer": optimizer, "case": case, "clients": args.clients, "examples": args.examples,
                         "epochs": args.epochs, "cosine_min": min(scores), "cosine_mean": sum(scores) / len(scores),
                         "assumed": reading.assumed, "simulation_s": seconds / args.clients})
            print(f"{optimizer:5} {case:26} cosine mean {rows[-1]['cosine_mean']:.6f} min {rows[-1]['cosine_min']:.6f}"
                  f"  ({seconds / args.clients:.1f} s per simulated client)", flush=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
