"""Training target models: SGD with momentum, a cosine schedule, optional flip/crop augmentation.

Datasets without a separate test split (the MNIST test set alone, ORL) are split into train and test
by a seeded fraction. The result is a checkpoint with the test accuracy in its metadata.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from fedleak.data import ImageDataset, load_dataset
from fedleak.data.normalization import normalize
from fedleak.device import device_name, device_of, resolve_device
from fedleak.errors import ConfigError, DataError
from fedleak.models import create_model
from fedleak.models.checkpoint import CheckpointInfo


@dataclass
class TrainSettings:
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    augment: bool = False
    seed: int = 0
    device: str = "cpu"  # where to train: a ``device`` setting (auto | cpu | cuda[:N] | mps), resolved when set

    def __post_init__(self) -> None:
        self.device = device_name(resolve_device(self.device))  # recorded resolved, in the checkpoint too
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("training needs epochs ≥ 1, batch size ≥ 1 and a positive lr")


@dataclass
class History:
    test_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def materialize(dataset: ImageDataset, indices: list[int]) -> tuple[Tensor, Tensor]:
    """Decode the chosen images once into tensors (training revisits them every epoch)."""
    if not indices:
        raise ConfigError(f"no images selected from {dataset.name}")
    return dataset.images(indices), dataset.label_of(indices)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded (train, test) split of ``range(n)`` with ``fraction`` of the items in test."""
    if not 0 < fraction < 1:
        raise ConfigError(f"the test fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed), device="cpu").tolist()  # host-side
    cut = max(1, int(round(n * fraction)))
    return sorted(order[cut:]), sorted(order[:cut])


def augment(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random horizontal flips and random crops after zero padding (per image), drawn with
    ``generator`` on its device and cut by one gather there (no per-image loop, no host read)."""
    b, c, h, w = x.shape
    device = generator.device
    flip = torch.rand(b, generator=generator, device=device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=device)
    rows = (dy.view(b, 1) + torch.arange(h, device=device)).view(b, 1, h, 1)
    cols = (dx.view(b, 1) + torch.arange(w, device=device)).view(b, 1, 1, w)
    return padded[torch.arange(b, device=device).view(b, 1, 1, 1), torch.arange(c, device=device).view(1, c, 1, 1),
                  rows, cols]


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, mean, std, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(normalize(images[start : start + batch_size], mean, std))
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / max(1, len(images))


def train(
    model: nn.Module,
    train_data: tuple[Tensor, Tensor],
    test_data: tuple[Tensor, Tensor],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    settings: TrainSettings,
    progress: bool = True,
) -> History:
    """Train ``model`` in place, on the device its parameters are on (data and random draws go
    there); report test accuracy after each epoch."""
    device = device_of(model)
    images, labels = (t.to(device) for t in train_data)
    test_data = (test_data[0].to(device), test_data[1].to(device))
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(images) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.epochs * steps_per_epoch)
    history = History()
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator, device=device)
        total, seen = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False,
                   disable=not progress)
        for step in bar:
            batch = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            x, y = images[batch], labels[batch]
            if settings.augment:
                x = augment(x, generator)
            loss = F.cross_entropy(model(normalize(x, mean, std)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
            bar.set_postfix(loss=f"{total / seen:.3f}", refresh=False)
        history.train_loss.append(total / seen)
        history.test_accuracy.append(accuracy(model, *test_data, mean, std))
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{settings.epochs}: loss {total / seen:.3f}, "
                       f"test accuracy {history.test_accuracy[-1]:.3f}")
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


@dataclass
class TargetRun:
    info: CheckpointInfo
    history: History
    model: nn.Module


def _same(a: ImageDataset, b: ImageDataset) -> bool:
    return a.name == b.name and len(a) == len(b) and torch.equal(a.labels, b.labels)


def train_target(
    model_name: str,
    dataset: str,
    root: str | None = None,
    width: float | None = None,
    options: dict | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float | None = None,
    limit: int | None = None,
    settings: TrainSettings | None = None,
    progress: bool = True,
) -> TargetRun:
    """Load the data (splitting off a seeded test set where the dataset has none), build and train
    the model, and describe it for a checkpoint.

    ``width`` unset is the model's own default (1 for registered models). The checkpoint records the
    image size as an int for square images and ``[H, W]`` otherwise."""
    settings = settings or TrainSettings()
    kw: dict[str, Any] = dict(image_size=image_size, channels=channels)
    test = load_dataset(dataset, root, split="test", **kw)
    try:
        train_set = load_dataset(dataset, root, split="train", **kw)
    except DataError:
        train_set = test  # e.g. only the MNIST test files are present
    if test_fraction is not None or _same(train_set, test):
        pool = test if train_set is test else train_set
        train_idx, test_idx = holdout_split(len(pool), test_fraction or 0.2, settings.seed)
        train_set = test = pool
    else:
        train_idx, test_idx = list(range(len(train_set))), list(range(len(test)))
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}")
        g = torch.Generator().manual_seed(settings.seed)
        pick = torch.randperm(len(train_idx), generator=g, device="cpu")[:limit].tolist()  # host-side indices
        train_idx = sorted(train_idx[i] for i in pick)
    c, h, w = train_set.image_shape
    model = create_model(model_name, train_set.num_classes, c, (h, w), width=width, seed=settings.seed,
                         **(options or {}))
    model.to(settings.device)
    history = train(model, materialize(train_set, train_idx), materialize(test, test_idx),
                    train_set.mean, train_set.std, settings, progress)
    model.to("cpu")  # a checkpoint is written from host memory
    info = CheckpointInfo(
        architecture=model_name, num_classes=train_set.num_classes, in_channels=c,
        image_size=h if h == w else [h, w], width=1.0 if width is None else width, options=dict(options or {}), dataset=train_set.name, mean=train_set.mean,
        std=train_set.std, classes=list(train_set.classes), epochs=settings.epochs,
        test_accuracy=history.test_accuracy[-1], seed=settings.seed,
        training={**vars(settings), "train_images": len(train_idx), "test_images": len(test_idx),
                  "seconds": round(history.seconds, 1)},
    )
    return TargetRun(info, history, model)
