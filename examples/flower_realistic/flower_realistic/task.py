"""The model, the data and the local training — plain PyTorch, as an FL engineer writes it for Flower.
Nothing here knows about fedleak (the ClientApp adds one line, :func:`record_batch`, for the simulated
scoring). The model class lives here, at module level: the audit's worker process imports it by path."""

from __future__ import annotations

import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10's per-channel mean and std (the usual constants)
STD = (0.2470, 0.2435, 0.2616)
TRAIN_FILE = "data_batch_1"  # 10,000 training images, 1,000 per class
TEST_FILE = "test_batch"


class MissingData(RuntimeError):
    """The CIFAR-10 folder is not where the run config says."""


class Net(nn.Module):
    """A small CNN with batch norm: two 3×3 conv blocks (conv, BN, ReLU, 2×2 max-pool), then a linear
    classifier. About 16 k parameters, so that a CPU trains (and audits) it in seconds."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def build_model() -> Net:
    """The initial global model (seeded: every run starts from the same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Net()


def cifar_folder(run_config: dict) -> Path:
    """``data-root`` of the run config (relative paths against this app's folder)."""
    root = Path(str(run_config["data-root"])).expanduser()
    return root if root.is_absolute() else (Path(__file__).resolve().parents[1] / root).resolve()


@lru_cache(maxsize=4)
def load_batch(folder: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One file of CIFAR-10's python layout: uint8 images N×3×32×32 and their labels."""
    path = Path(folder) / name
    if not path.is_file():
        raise MissingData(f"CIFAR-10 not found: {path} is missing (set data-root to the folder holding "
                          "cifar-10-batches-py's files)")
    with path.open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    images = torch.from_numpy(np.asarray(raw[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
    return images, torch.tensor(raw[b"labels"], dtype=torch.long)


def shard_indices(partition_id: int, num_partitions: int, per_client: int, total: int, seed: int) -> torch.Tensor:
    """Client ``partition_id``'s examples: its slice of one seeded permutation of the ``total`` training
    images, ``per_client`` each — disjoint across clients by construction."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition {partition_id} of {num_partitions}")
    if per_client * num_partitions > total:
        raise ValueError(f"{num_partitions} clients × {per_client} images exceed the {total} training images")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[partition_id * per_client:(partition_id + 1) * per_client]


def client_data(run_config: dict, partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The client's shard: images in [0, 1] (N×3×32×32) and labels."""
    images, labels = load_batch(str(cifar_folder(run_config)), TRAIN_FILE)
    index = shard_indices(partition_id, num_partitions, int(run_config["examples-per-client"]), len(labels),
                          int(run_config["partition-seed"]))
    return images[index].float() / 255.0, labels[index]


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def train_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> DataLoader:
    """What the client trains on: the normalised shard, reshuffled every epoch (a private order)."""
    return DataLoader(TensorDataset(normalise(images), labels), batch_size=batch_size, shuffle=True)


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float, momentum: float,
          weight_decay: float) -> float:
    """Local training: ``epochs`` passes of SGD with momentum and weight decay, batch norm in train
    mode. Returns the mean training loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
    return total / max(1, steps)


@torch.no_grad()
def test_accuracy(model: nn.Module, run_config: dict, examples: int = 1000) -> float:
    """Accuracy of ``model`` on the first ``examples`` CIFAR-10 test images (the server's check)."""
    images, labels = load_batch(str(cifar_folder(run_config)), TEST_FILE)
    model.eval()
    logits = model(normalise(images[:examples].float() / 255.0))
    return float((logits.argmax(1) == labels[:examples]).float().mean())


def results_folder(run_config: dict) -> Path:
    """``out`` from the run config (default ``report`` beside this app)."""
    out = Path(str(run_config["out"]) or Path(__file__).resolve().parents[1] / "report").expanduser()
    return out.resolve()


def shared_folder(run_config: dict) -> Path:
    """Where simulated clients leave their batch for scoring (beside the results; emptied by the server)."""
    folder = results_folder(run_config)
    return folder.with_name(folder.name + ".shared-batches")
