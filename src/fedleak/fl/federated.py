"""In-process federated training (FedAvg over K simulated clients) to measure a defense's utility.

Every round each client starts from the global model, trains ``local_epochs`` over its own shard with
plain SGD through :class:`Client` — so its defense is applied exactly as in an attack run — and sends a
:class:`Payload`. The server sees only the payloads: it averages their updates (weighted by shard
size) and steps θ ← θ − η_s · mean Δ; the model's buffers (batch-norm running statistics) become the
aggregate of the buffers the clients sent (:func:`~fedleak.fl.aggregation.aggregate_buffers`), so a
batch-norm model is evaluated with statistics of the data it was trained on. Test accuracy is measured
after every round.

Seeds: ``settings.seed`` fixes the partition and derives each client's shuffling and private defense
seed per round, so utility numbers are reproducible. No attack ever sees these clients' updates (this
is utility training only), so deriving their seeds from ``settings.seed`` leaks nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fedleak.data.normalization import Normalization
from fedleak.device import device_of
from fedleak.errors import ConfigError
from fedleak.fl.aggregation import aggregate_buffers
from fedleak.fl.client import Client
from fedleak.fl.payload import ClientData, ClientTraining, Payload
from fedleak.training import accuracy


@dataclass
class FederatedSettings:
    clients: int = 10
    rounds: int = 10
    local_epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    server_lr: float = 1.0
    defense: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.clients < 1 or self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ConfigError("federated training needs clients, rounds, local epochs and batch size ≥ 1")
        if self.lr <= 0 or self.server_lr <= 0:
            raise ConfigError("federated training needs positive client and server learning rates")


@dataclass
class FederatedHistory:
    test_accuracy: list[float] = field(default_factory=list)  # after each round
    seconds: float = 0.0

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[-1]


def shards(n: int, clients: int, seed: int) -> list[list[int]]:
    """An IID, seeded partition of ``range(n)`` into ``clients`` shards of (almost) equal size."""
    if n < clients:
        raise ConfigError(f"{n} training images cannot be shared among {clients} clients")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed), device="cpu").tolist()  # host-side
    return [sorted(order[k::clients]) for k in range(clients)]


def server_step(model: nn.Module, payloads: list[Payload], weights: list[float], server_lr: float) -> None:
    """θ ← θ − η_s · Σ_k w_k Δ_k / Σ_k w_k over the parameters the payloads carry; the buffers the
    payloads carry are replaced by their aggregate (weighted mean, counters' increments summed)."""
    total = sum(weights)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    merged = aggregate_buffers({n: buffers[n] for n in payloads[0].buffers}, [p.buffers for p in payloads], weights)
    with torch.no_grad():
        for name in payloads[0].update:
            mean = sum(w * p.update[name] for w, p in zip(weights, payloads)) / total
            params[name].sub_(server_lr * mean)
        for name, value in merged.items():
            buffers[name].copy_(value)


def federated_train(model: nn.Module, images: Tensor, labels: Tensor, test_images: Tensor, test_labels: Tensor,
                    mean: tuple[float, ...], std: tuple[float, ...], settings: FederatedSettings,
                    progress: bool = False) -> FederatedHistory:
    """Train ``model`` in place with FedAvg, on the device its parameters are on (the data goes
    there); returns test accuracy per round."""
    device = device_of(model)
    normalization = Normalization(mean, std)
    images, labels, test_images, test_labels = (t.to(device) for t in (images, labels, test_images, test_labels))
    start = time.perf_counter()
    parts = shards(len(images), settings.clients, settings.seed)
    history = FederatedHistory()
    for r in tqdm(range(settings.rounds), disable=not progress, desc="FL rounds", unit="round", leave=False):
        payloads, weights = [], []
        for k, part in enumerate(parts):
            steps = settings.local_epochs * math.ceil(len(part) / settings.batch_size)
            training = ClientTraining("fedavg", "train", lr=settings.lr, local_steps=steps,
                                      local_batch_size=settings.batch_size,
                                      shuffle_seed=settings.seed * 100_003 + r * 1009 + k)
            client = Client(model, normalization, training, settings.defense,
                            seed=(settings.seed * 1_000 + r) * settings.clients + k)
            payloads.append(client.update(ClientData(images[part], labels[part], ())))
            weights.append(float(len(part)))
        server_step(model, payloads, weights, settings.server_lr)
        with torch.no_grad():
            history.test_accuracy.append(accuracy(model, test_images, test_labels, mean, std))
    history.seconds = time.perf_counter() - start
    return history
