"""The model, the data and the local training of the example — what a Flower user writes, in plain
PyTorch. Nothing here knows about fedleak except :func:`record_batch`, which tells the client mods
which examples this round trained on."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from flwr.app import Context, Message
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fedleak.data import ImageDataset, load_dataset
from fedleak.integrations.flower import record_batch


class Net(nn.Module):
    """A small CNN with batch norm (its running statistics travel with the weights, as in any Flower app)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 5, padding=2, stride=2), nn.BatchNorm2d(12), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
        )
        self.classifier = nn.Linear(12 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def build_model() -> Net:
    """The initial global model (seeded, so every run starts from the same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Net()


@lru_cache(maxsize=2)
def dataset(name: str, root: str) -> ImageDataset:
    """The photographs that ship with scikit-image (``samples``) or CIFAR-10's test split, at 32 px."""
    return load_dataset(name, root or None, split="test", image_size=32, channels=3)


def partition(run_config: dict, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``partition_id``'s examples: ``examples-per-client`` consecutive images of the set."""
    data = dataset(str(run_config["data"]), str(run_config["data-root"]))
    n = int(run_config["examples-per-client"])
    indices = [(partition_id * n + k) % len(data) for k in range(n)]
    return data.images(indices), data.label_of(indices)


def normalisation(run_config: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    data = dataset(str(run_config["data"]), str(run_config["data-root"]))
    return tuple(data.mean), tuple(data.std)


def train(message: Message, context: Context) -> tuple[Net, int, float]:
    """One round of local training: epochs over a DataLoader (ordered by the public shuffle seed),
    torch.optim.SGD with momentum and weight decay, batch norm in train mode."""
    config = message.content["config"]
    model = build_model()
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    images, labels = partition(context.run_config, int(context.node_config["partition-id"]))
    mean, std = normalisation(context.run_config)
    inputs = (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    data = TensorDataset(inputs, labels)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=int(config["shuffle-seed"]))
    loader = DataLoader(data, batch_size=int(config["batch-size"]), sampler=sampler)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=float(config["momentum"]),
                                weight_decay=float(config["weight-decay"]))
    model.train()
    total, steps = 0.0, 0
    for epoch in range(int(config["local-epochs"])):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
    record_batch(context, message, images, labels)  # for the client mods: which examples this round used
    return model, len(labels), total / max(1, steps)


def results_folder(run_config: dict) -> Path:
    """``out`` from the run config (default ``flower-audit-report`` where the ServerApp runs)."""
    return Path(str(run_config["out"]) or "flower-audit-report").expanduser().resolve()


def shared_folder(run_config: dict) -> Path:
    """Where simulated clients leave their batch for scoring (beside the results; removed at the end)."""
    folder = results_folder(run_config)
    return folder.with_name(folder.name + ".shared-batches")
