"""ROG's semantic-level variant (Yue et al., USENIX Security 2023): a class-conditional generator
that turns ROG's coarse gradient-matched image into a natural image of the recovered class
(``fedleak train-prior --kind semantic``; ``attack.prior`` of ``rog`` then applies it with the labels
the attack recovered).

The generator is a small U-Net whose normalisation layers are *class-conditional* (group norm
without its own affine part, its scale and shift read off an embedding of the class, as in
conditional batch norm / SPADE's class-wise variant): the class decides what the restored image
looks like, the coarse image where things are. It is trained on public images (never the attacked
client's) with ROG's degradation (:func:`fedleak.attacks.restoration_prior.degrade`: downsampled
by the attack's scale, noise of random strength) as input and two losses: L1 reconstruction of the
clean image and a hinge adversarial loss against a projection discriminator (Miyato & Koyama 2018:
the class enters the critic as an inner product with its features), weighted ``adversarial``.
Score what it gives with the ``semantic`` metric (:mod:`fedleak.metrics.semantic`), not pixels.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from fedleak import __version__
from fedleak.attacks.restoration_prior import (
    PRIOR_KEY,
    PROVENANCE_FIELDS,
    PriorProvenance,
    PriorTraining,
    degrade,
    network_from,
    public_images,
    training_start,
    upsample,
)
from fedleak.errors import ConfigError, FedleakError
from fedleak.models.checkpoint import save_tensors
from fedleak.pixels import psnr
from fedleak.validate import Check, check_fields, integer, number, one_of


class ClassNorm(nn.Module):
    """Group norm whose per-channel scale and shift come from the class (starting at 1 and 0)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(8, channels), channels, affine=False)
        self.embed = nn.Embedding(classes, 2 * channels)
        nn.init.ones_(self.embed.weight[:, :channels])
        nn.init.zeros_(self.embed.weight[:, channels:])

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        gamma, beta = self.embed(labels).chunk(2, dim=1)
        return self.norm(x) * gamma[:, :, None, None] + beta[:, :, None, None]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, classes: int) -> None:
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(cin, cout, 3, padding=1), ClassNorm(cout, classes)
        self.conv2, self.norm2 = nn.Conv2d(cout, cout, 3, padding=1), ClassNorm(cout, classes)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        x = F.relu(self.norm1(self.conv1(x), labels))
        return F.relu(self.norm2(self.conv2(x), labels))


class SemanticNet(nn.Module):
    """A two-level U-Net with class-conditional normalisation: bicubic upsampling of the coarse
    image, then a residual the class shapes. Fully convolutional (sides divisible by 2)."""

    def __init__(self, channels: int, classes: int, width: int = 32) -> None:
        super().__init__()
        self.enc1 = _Block(channels, width, classes)
        self.enc2 = _Block(width, 2 * width, classes)
        self.mid = _Block(2 * width, 2 * width, classes)
        self.dec = _Block(3 * width, width, classes)
        self.out = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.out.weight)  # start as plain bicubic upsampling
        if self.out.bias is not None:  # a Conv2d made with its bias
            nn.init.zeros_(self.out.bias)

    def forward(self, low: Tensor, labels: Tensor, size: tuple[int, int]) -> Tensor:
        up = upsample(low, size)
        e1 = self.enc1(up, labels)
        e2 = self.mid(self.enc2(F.avg_pool2d(e1, 2, ceil_mode=True), labels), labels)
        d = self.dec(torch.cat([e1, F.interpolate(e2, size=e1.shape[-2:], mode="nearest")], 1), labels)
        return up + self.out(d)


class Critic(nn.Module):
    """A projection discriminator: strided convolutions, summed features h, score w·h + ⟨e_y, h⟩."""

    def __init__(self, channels: int, classes: int, width: int = 32) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.body = nn.Sequential(sn(nn.Conv2d(channels, width, 3, 2, 1)), nn.LeakyReLU(0.2),
                                  sn(nn.Conv2d(width, 2 * width, 3, 2, 1)), nn.LeakyReLU(0.2),
                                  sn(nn.Conv2d(2 * width, 2 * width, 3, 1, 1)), nn.LeakyReLU(0.2))
        self.linear = sn(nn.Linear(2 * width, 1))
        self.embed = sn(nn.Embedding(classes, 2 * width))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        h = self.body(2 * x - 1).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(1)


@dataclass(kw_only=True)
class SemanticPriorInfo(PriorProvenance):
    """A trained semantic prior's settings and provenance (the file's ``fedleak_prior`` metadata)."""

    channels: int
    classes: int
    scale: int
    kind: str = "semantic"
    width: int = 32
    noise: float = 0.1
    adversarial: float = 0.01


@dataclass
class SemanticPrior:
    """A trained generator; call it on [0, 1] coarse images with their classes."""

    net: SemanticNet
    info: SemanticPriorInfo
    needs_labels = True

    def __call__(self, low: Tensor, size: tuple[int, int], labels: Tensor | None = None) -> Tensor:
        if labels is None:
            raise FedleakError("a semantic prior needs the images' classes (the attack's recovered labels)")
        with torch.no_grad():
            net = self.net.to(low.device)
            return net(low, labels.to(low.device).long().clamp(0, self.info.classes - 1), size).clamp(0, 1)


@dataclass(kw_only=True)
class SemanticPriorSettings(PriorTraining):
    """How ``fedleak train-prior --kind semantic`` trains the generator."""

    adversarial: float = 0.01
    batch_size: int = 32
    lr: float = 2e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adversarial < 0:
            raise ConfigError("semantic prior training needs adversarial ≥ 0")


def _validate(net: SemanticNet, images: Tensor, labels: Tensor, settings: SemanticPriorSettings) -> dict[str, float]:
    """Held-out PSNR of bicubic upsampling and of the generator, the true class and a wrong one given
    (how much the class changes the image: the generator's semantic lever)."""
    g = torch.Generator(device=images.device).manual_seed(settings.seed + 1)
    low = degrade(images, settings.scale, settings.noise, g)
    size = (images.shape[-2], images.shape[-1])
    classes = net.enc1.norm1.embed.num_embeddings
    with torch.no_grad():
        right = net(low, labels, size).clamp(0, 1)
        wrong = net(low, (labels + 1) % classes, size).clamp(0, 1)
    bicubic = upsample(low, size).clamp(0, 1)
    return {"bicubic_psnr": float(psnr(bicubic, images).mean()), "prior_psnr": float(psnr(right, images).mean()),
            "wrong_class_psnr": float(psnr(wrong, images).mean())}


def train_semantic_prior(images: Tensor, labels: Tensor, classes: int, settings: SemanticPriorSettings,
                         progress: bool = False) -> tuple[SemanticNet, dict[str, float], list[dict[str, float]]]:
    """Train the generator on public ``images`` (N×C×H×W in [0, 1]) of ``labels``; returns it in
    host memory, its validation and the mean losses per epoch (``reconstruction``, ``generator``,
    ``critic``)."""
    device, g, train_idx, val_idx = training_start(images, settings)
    images, labels = images.to(device), labels.to(device).long()
    net = SemanticNet(images.shape[1], classes, settings.width).to(device)
    critic = Critic(images.shape[1], classes, settings.width).to(device)
    opt_g = torch.optim.Adam(net.parameters(), lr=settings.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.parameters(), lr=settings.lr, betas=(0.5, 0.999))
    size = (images.shape[-2], images.shape[-1])
    train = torch.as_tensor(train_idx, device=device)
    steps = settings.epochs * math.ceil(len(train) / settings.batch_size)
    bar = tqdm(total=steps, disable=not progress, desc="semantic prior", unit="step", leave=False)
    history: list[dict[str, float]] = []
    for _ in range(settings.epochs):
        sums = {"reconstruction": 0.0, "generator": 0.0, "critic": 0.0}
        batches = train[torch.randperm(len(train), generator=g, device=device)].split(settings.batch_size)
        for batch in batches:
            x, y = images[batch], labels[batch]
            if torch.rand((), generator=g, device=device) < 0.5:
                x = x.flip(-1)
            fake = net(degrade(x, settings.scale, settings.noise, g), y, size)
            if settings.adversarial > 0:  # the critic's hinge step on real and generated images
                d_loss = F.relu(1 - critic(x, y)).mean() + F.relu(1 + critic(fake.detach().clamp(0, 1), y)).mean()
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
                sums["critic"] += d_loss.item()
            rec = F.l1_loss(fake, x)
            adv = -critic(fake.clamp(0, 1), y).mean() if settings.adversarial > 0 else torch.zeros((), device=device)
            loss = rec + settings.adversarial * adv
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()
            sums["reconstruction"] += rec.item()
            sums["generator"] += adv.item()
            bar.update(1)
        history.append({k: v / max(1, len(batches)) for k, v in sums.items()})
    bar.close()
    net.eval()
    validation = _validate(net, images[val_idx], labels[val_idx], settings)
    return net.cpu(), validation, history


def save_semantic_prior(path: str | os.PathLike[str], net: SemanticNet, info: SemanticPriorInfo) -> Path:
    info.fedleak_version = info.fedleak_version or __version__
    return save_tensors(path, net.state_dict(), {PRIOR_KEY: json.dumps(asdict(info))})


_FIELDS = {"channels": one_of(1, 3), "classes": integer(1, 100_000), "scale": integer(1, 64),
           "kind": Check(lambda v: v == "semantic", '"semantic"'), "width": integer(1, 1024),
           "noise": number(0, 100), "adversarial": number(0, 1e6), **PROVENANCE_FIELDS}


def semantic_from(path: str | os.PathLike[str], data: dict) -> SemanticPrior:
    """A semantic prior from its file and its (already parsed) metadata, checked field by field."""
    fields = check_fields(data, _FIELDS, ("channels", "classes", "scale"), f"prior {path} metadata")
    info = SemanticPriorInfo(**fields)
    return SemanticPrior(network_from(path, lambda: SemanticNet(info.channels, info.classes, info.width)), info)


def train_semantic_prior_on(dataset_name: str, root: str | None, split: str, image_size: int | None,
                            channels: int | None, limit: int | None, settings: SemanticPriorSettings,
                            progress: bool = False) -> tuple[SemanticNet, SemanticPriorInfo]:
    """Load public labelled images of a dataset and train the generator on them."""
    start = time.perf_counter()
    dataset, n, images = public_images(dataset_name, root, split, image_size, channels, limit, settings.scale)
    h, w = images.shape[-2:]
    net, validation, history = train_semantic_prior(images, dataset.labels[:n], dataset.num_classes, settings,
                                                    progress)
    info = SemanticPriorInfo(channels=images.shape[1], classes=dataset.num_classes, scale=settings.scale,
                             width=settings.width, noise=settings.noise, adversarial=settings.adversarial,
                             dataset=dataset.name, split=split, image_size=[int(h), int(w)], images=n,
                             epochs=settings.epochs, seed=settings.seed,
                             validation={**validation, **{f"last_{k}": v for k, v in history[-1].items()}},
                             seconds=round(time.perf_counter() - start, 1))
    return net, info
