"""ROG's restoration prior: a small learned denoising + super-resolution network (``fedleak
train-prior``, ``attack.prior`` / ``--prior``).

A *prior* in fedleak's names means this network. The hand-written image penalties that the papers
also call priors (TV, L2, BN statistics) are regularisers (:mod:`fedleak.attacks.regularizers`).

Trained by fedleak on public images (data the attacker may hold — never the attacked client's): a
clean image is downsampled by the ROG scale, degraded with Gaussian noise of random strength, and
the network learns to restore it. ROG then applies it to its low-resolution reconstruction. Weights
and settings live in one safetensors file.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from fedleak import __version__
from fedleak.data import load_dataset
from fedleak.device import device_name, resolve_device
from fedleak.errors import ConfigError, FedleakError
from fedleak.models.checkpoint import load_state, read_metadata, refuse_oversized, save_tensors
from fedleak.pixels import psnr
from fedleak.training import holdout_split
from fedleak.validate import ECHO, Check, check_fields, integer, mapping, number, one_of, size, text

PRIOR_KEY = "fedleak_prior"
NetT = TypeVar("NetT", bound=nn.Module)


def upsample(low: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic upsampling (the ROG parametrisation and the prior's first step)."""
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False)


def downsample(x: Tensor, scale: int) -> Tensor:
    """Area downsampling by ``scale`` (the degradation the prior learns to undo)."""
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(max(1, h // scale), max(1, w // scale)), mode="area")


class RestorationNet(nn.Module):
    """Bicubic upsampling, then a residual stack of 3×3 convolutions (VDSR-like, small).

    Fully convolutional: it works at any image size with the scale it was trained for."""

    def __init__(self, channels: int, width: int = 32, depth: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        last = nn.Conv2d(width, channels, 3, padding=1)
        layers.append(last)
        self.body = nn.Sequential(*layers)
        nn.init.zeros_(last.weight)  # start as plain bicubic upsampling
        if last.bias is not None:  # a Conv2d made with its bias
            nn.init.zeros_(last.bias)

    def forward(self, low: Tensor, size: tuple[int, int]) -> Tensor:
        up = upsample(low, size)
        return up + self.body(up)


@dataclass(kw_only=True)
class PriorProvenance:
    """What every learned prior's file records of how it was trained (with its own settings)."""

    dataset: str = ""
    split: str = ""
    image_size: int | list[int] = 0
    images: int = 0
    epochs: int = 0
    seed: int = 0
    validation: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    fedleak_version: str = ""


@dataclass(kw_only=True)
class RestorationPriorInfo(PriorProvenance):
    """A trained prior's settings and provenance, stored as the file's ``fedleak_prior`` metadata."""

    channels: int
    scale: int
    width: int = 32
    depth: int = 6
    noise: float = 0.1


@dataclass
class RestorationPrior:
    """A trained restoration network and its settings; call it on [0, 1] low-resolution images."""

    net: RestorationNet
    info: RestorationPriorInfo

    def __call__(self, low: Tensor, size: tuple[int, int]) -> Tensor:
        with torch.no_grad():
            return self.net.to(low.device)(low, size).clamp(0, 1)  # the prior runs where the attack ran


def degrade(x: Tensor, scale: int, noise: float, generator: torch.Generator) -> Tensor:
    """Downsample by ``scale`` and add Gaussian noise with σ drawn uniformly in [0, noise] per image."""
    low = downsample(x, scale)
    sigma = torch.rand(low.shape[0], 1, 1, 1, generator=generator, device=generator.device) * noise
    return (low + sigma * torch.randn(low.shape, generator=generator, device=generator.device)).clamp(0, 1)


ROG_MAX_SCALE = 8  # the largest downsampling factor ROG takes (attacks/rog.py's ``scale`` bound)


@dataclass(kw_only=True)
class PriorTraining:
    """What every learned prior's training takes (checked when made)."""

    scale: int = 2
    width: int = 32
    noise: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    validation_fraction: float = 0.1
    device: str = "cpu"  # where to train: a ``device`` setting (auto | cpu | cuda[:N] | mps), resolved when set

    def __post_init__(self) -> None:
        self.device = device_name(resolve_device(self.device))
        if self.scale < 1 or self.width < 1:
            raise ConfigError("the prior needs scale ≥ 1 and width ≥ 1")
        if self.scale > ROG_MAX_SCALE:
            raise ConfigError(f"scale {self.scale} is more than ROG's largest, {ROG_MAX_SCALE}: "
                              "no attack could use this prior")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.noise < 0:
            raise ConfigError("prior training needs epochs ≥ 1, batch size ≥ 1, lr > 0 and noise ≥ 0")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError("the validation fraction must lie strictly between 0 and 1")


@dataclass(kw_only=True)
class RestorationPriorSettings(PriorTraining):
    """How ``fedleak train-prior`` trains a restoration prior."""

    depth: int = 6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth < 2:
            raise ConfigError("the prior needs depth ≥ 2")


def evaluate_prior(net: RestorationNet, images: Tensor, settings: RestorationPriorSettings) -> dict[str, float]:
    """Mean PSNR on held-out images degraded with a fixed seed: bicubic alone vs. the network."""
    g = torch.Generator(device=images.device).manual_seed(settings.seed + 1)
    low = degrade(images, settings.scale, settings.noise, g)
    size = (images.shape[-2], images.shape[-1])
    with torch.no_grad():
        restored = net(low, size).clamp(0, 1)
    bicubic = upsample(low, size).clamp(0, 1)
    return {"bicubic_psnr": float(psnr(bicubic, images).mean()), "prior_psnr": float(psnr(restored, images).mean())}


def training_start(images: Tensor, settings: PriorTraining) -> tuple[torch.device, torch.Generator, list[int], list[int]]:
    """A prior's training set-up: at least 2 public images, the seeds, the device, the seeded
    generator of its degradations and order, and the train / validation split."""
    if images.shape[0] < 2:
        raise ConfigError("training a prior needs at least 2 public images")
    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    train_idx, val_idx = holdout_split(images.shape[0], settings.validation_fraction, settings.seed)
    return device, torch.Generator(device=device).manual_seed(settings.seed), list(train_idx), list(val_idx)


def train_prior(images: Tensor, settings: RestorationPriorSettings,
                progress: bool = False) -> tuple[RestorationNet, dict[str, float]]:
    """Train a restoration network on public ``images`` (N×C×H×W in [0, 1]) on ``settings.device``;
    the trained network is returned in host memory."""
    device, g, train_idx, val_idx = training_start(images, settings)
    images = images.to(device)
    train, val = images[train_idx], images[val_idx]
    net = RestorationNet(images.shape[1], settings.width, settings.depth).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    steps = settings.epochs * math.ceil(train.shape[0] / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    size = tuple(images.shape[-2:])
    bar = tqdm(total=steps, disable=not progress, desc="prior", unit="step", leave=False)
    for _ in range(settings.epochs):
        for batch in torch.randperm(train.shape[0], generator=g, device=device).split(settings.batch_size):
            x = train[batch]
            if torch.rand((), generator=g, device=device) < 0.5:  # horizontal flips double the public data
                x = x.flip(-1)
            loss = F.mse_loss(net(degrade(x, settings.scale, settings.noise, g), size), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    validation = evaluate_prior(net.eval(), val, settings)
    return net.cpu(), validation


def save_prior(path: str | os.PathLike[str], net: RestorationNet, info: RestorationPriorInfo) -> Path:
    info.fedleak_version = info.fedleak_version or __version__
    return save_tensors(path, net.state_dict(), {PRIOR_KEY: json.dumps(asdict(info))})


PROVENANCE_FIELDS = {
    "dataset": text(),
    "split": text(),
    "image_size": Check(lambda v: integer(0, 4096).test(v) or size(4096).test(v),
                        "an integer from 0 to 4096 or an [H, W] pair of positive ones"),
    "images": integer(0),
    "epochs": integer(0),
    "seed": integer(-(2**63), 2**64 - 1),
    "validation": Check(lambda v: mapping().test(v) and all(type(x) in (int, float) for x in v.values()),
                        "an object of numbers"),
    "seconds": number(0, 1e9),
    "fedleak_version": text(),
}
_PRIOR_FIELDS = {"channels": one_of(1, 3), "scale": integer(1, 64), "width": integer(1, 1024),
                 "depth": integer(2, 256), "noise": number(0, 100), **PROVENANCE_FIELDS}


def prior_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``fedleak_prior`` metadata of a prior file; one clear error for anything else."""
    meta = read_metadata(path)
    if PRIOR_KEY not in meta:
        raise FedleakError(f"{path} is not a fedleak prior (train one with `fedleak train-prior`)")
    try:
        data = json.loads(meta[PRIOR_KEY])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise FedleakError(f"prior {path} has unreadable metadata: {str(exc)[:ECHO]}") from None
    if not isinstance(data, dict):
        raise FedleakError(f"prior {path} metadata is not a JSON object")
    return data


def restoration_from(path: str | os.PathLike[str], data: dict[str, Any]) -> RestorationPrior:
    """A restoration prior from its file and its parsed metadata, checked field by field (types and
    ranges) before the network is built."""
    fields = check_fields(data, _PRIOR_FIELDS, ("channels", "scale"), f"prior {path} metadata")
    info = RestorationPriorInfo(**fields)
    net = network_from(path, lambda: RestorationNet(info.channels, info.width, info.depth))
    return RestorationPrior(net, info)


def network_from(path: str | os.PathLike[str], make: Callable[[], NetT]) -> NetT:
    """The network ``make`` builds (refused first if its size is out of bounds) with the file's
    weights, in eval mode; one clear error when they do not fit its settings."""
    refuse_oversized(make, path, f"prior {path}")
    net = make()
    try:
        net.load_state_dict(load_state(path))
    except RuntimeError as exc:
        raise FedleakError(f"prior {path} does not fit its own settings: {str(exc).splitlines()[0]}") from None
    return net.eval()


def public_images(dataset_name: str, root: str | None, split: str, image_size: int | None, channels: int | None,
                  limit: int | None, scale: int) -> tuple[Any, int, Tensor]:
    """The public dataset a prior trains on, how many of its images, and those images (checked:
    at least 2, and large enough for ``scale``)."""
    if limit is not None and limit < 2:
        raise ConfigError(f"--limit must be at least 2 (a prior trains on some images and validates on others), got {limit}")
    dataset = load_dataset(dataset_name, root, split=split, image_size=image_size, channels=channels)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    images = dataset.images(list(range(n)))
    h, w = images.shape[-2:]
    if h // scale < 1 or w // scale < 1:
        raise ConfigError(f"scale {scale} is too large for {h}×{w} images (downsampled, a side would have no pixel "
                          f"left); choose a scale of at most {min(h, w, ROG_MAX_SCALE)}")
    return dataset, n, images


def load_prior(path: str | os.PathLike[str]) -> RestorationPrior:
    """Load a restoration prior written by ``fedleak train-prior``; anything else is one clear error."""
    return restoration_from(path, prior_metadata(path))


def train_prior_on(dataset_name: str, root: str | None, split: str, image_size: int | None, channels: int | None,
                   limit: int | None, settings: RestorationPriorSettings,
                   progress: bool = False) -> tuple[RestorationNet, RestorationPriorInfo]:
    """Load public images of a dataset and train a prior on them; returns the net and its info."""
    start = time.perf_counter()
    dataset, n, images = public_images(dataset_name, root, split, image_size, channels, limit, settings.scale)
    net, validation = train_prior(images, settings, progress)
    info = RestorationPriorInfo(channels=images.shape[1], scale=settings.scale, width=settings.width,
                                depth=settings.depth, noise=settings.noise, dataset=dataset.name, split=split,
                                image_size=int(images.shape[-1]), images=n, epochs=settings.epochs,
                                seed=settings.seed, validation=validation,
                                seconds=round(time.perf_counter() - start, 1))
    return net, info
