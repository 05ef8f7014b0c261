"""LPIPS (Zhang et al., 2018) with AlexNet or VGG-16 backbones, from local weight files only.

The distance is Σ_l mean_{h,w} ‖w_l ⊙ (φ̂_l(x) − φ̂_l(y))‖² where φ̂_l are a backbone's ReLU activations
(five taps), unit-normalised along channels, and w_l ≥ 0 the learned per-channel weights ("linear
layers", version 0.1). Images in [0, 1] are mapped to [−1, 1] and through LPIPS's scaling layer; grey
images are repeated to three channels; images smaller than the backbone can take are upsampled
(bilinear) to its minimum side — AlexNet needs 31 px, so MNIST's 28 px images are scored at 31 px.

Weights are never downloaded during a run; ``fedleak weights fetch alex|vgg`` (:mod:`fedleak.weights`)
fetches them on request. Two files per backbone:

- the backbone in torchvision's layout (``features.N.weight``): ``alexnet-owt-7be5be79.pth`` /
  ``vgg16-397923af.pth`` as torchvision caches them (any ``alexnet-*.pth`` / ``vgg16-*.pth``);
- LPIPS's linear layers (``lin0.model.1.weight`` …): ``alex.pth`` / ``vgg.pth`` from the ``lpips``
  package (``lpips_alex.pth`` / ``lpips_vgg.pth`` are accepted too).

They are looked for, in order, in an explicit folder (``metrics.lpips_weights``), ``$FEDLEAK_LPIPS``,
torch's hub cache (``$TORCH_HOME/hub/checkpoints``) and an installed ``lpips`` package's
``weights/v0.1`` (found without importing it). Without them the score is ``None`` ("n/a") and
:func:`missing_hint` says what to place where.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedleak.errors import FedleakError

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


@dataclass(frozen=True)
class Backbone:
    """A torchvision ``features`` stack as (kind, args) per index, and the ReLU indices LPIPS taps."""

    layers: tuple[tuple, ...]
    taps: tuple[int, ...]
    min_side: int
    file_glob: str
    linear_names: tuple[str, ...]

    def build(self) -> nn.Sequential:
        make: dict[str, Callable[[Any], nn.Module]] = {"conv": lambda a: nn.Conv2d(a[0], a[1], a[2], stride=a[3], padding=a[4]),
                "relu": lambda a: nn.ReLU(), "pool": lambda a: nn.MaxPool2d(a[0], a[1])}
        return nn.Sequential(*(make[kind](args) for kind, *args in self.layers))

    def channels(self) -> list[int]:
        out, c = [], 3
        for i, (kind, *args) in enumerate(self.layers):
            c = args[1] if kind == "conv" else c
            if i in self.taps:
                out.append(c)
        return out


def _vgg16_layers() -> tuple[tuple, ...]:
    layers: list[tuple[Any, ...]] = []
    c: int | str = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(("pool", 2, 2))
        else:
            layers += [("conv", c, v, 3, 1, 1), ("relu",)]
            c = v
    return tuple(layers)


BACKBONES: dict[str, Backbone] = {
    "alex": Backbone(
        layers=(("conv", 3, 64, 11, 4, 2), ("relu",), ("pool", 3, 2), ("conv", 64, 192, 5, 1, 2), ("relu",),
                ("pool", 3, 2), ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",),
                ("conv", 256, 256, 3, 1, 1), ("relu",), ("pool", 3, 2)),
        taps=(1, 4, 7, 9, 11), min_side=31, file_glob="alexnet-*.pth", linear_names=("alex.pth", "lpips_alex.pth")),
    "vgg": Backbone(layers=_vgg16_layers(), taps=(3, 8, 15, 22, 29), min_side=16, file_glob="vgg16-*.pth",
                    linear_names=("vgg.pth", "lpips_vgg.pth")),
}


def backbone_spec(net: str) -> Backbone:
    if net not in BACKBONES:
        raise FedleakError(f"unknown LPIPS backbone {net!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[net]


class LPIPS(nn.Module):
    """LPIPS distance between batches of [0, 1] images; weights from :func:`load_lpips` or given."""

    shift: Tensor  # buffers (registered in __init__)
    scale: Tensor

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        self.net = net
        self.spec = backbone_spec(net)
        stack = self.spec.build()
        self.features = cast(nn.Sequential, stack[: max(self.spec.taps) + 1])  # a slice of a Sequential is one
        self.lins = nn.ParameterList(nn.Parameter(torch.ones(c)) for c in self.spec.channels())
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def load_backbone(self, state: dict[str, Tensor]) -> None:
        """Take ``features.*`` from a torchvision state dict (the classifier is ignored)."""
        own = self.features.state_dict()
        picked = {k.removeprefix("features."): v for k, v in state.items() if k.removeprefix("features.") in own}
        missing = sorted(set(own) - set(picked))
        if missing:
            raise FedleakError(f"LPIPS {self.net} backbone weights lack {missing[0]} (expected torchvision's layout)")
        try:
            self.features.load_state_dict(picked)
        except RuntimeError as exc:
            raise FedleakError(f"LPIPS {self.net} backbone weights do not fit: {str(exc).splitlines()[-1].strip()}") from None

    def load_linear(self, state: dict[str, Tensor]) -> None:
        """Take ``lin{i}.…weight`` (1×C×1×1) for each tap from LPIPS's weight file."""
        for i, p in enumerate(self.lins):
            keys = [k for k in state if k.startswith(f"lin{i}.") and k.endswith("weight")]
            if len(keys) != 1 or state[keys[0]].numel() != p.numel():
                raise FedleakError(f"LPIPS {self.net} linear weights: no lin{i} weight with {p.numel()} channels")
            p.copy_(state[keys[0]].reshape(-1))

    def _prepare(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        side = min(x.shape[-2:])
        if side < self.spec.min_side:
            f = self.spec.min_side / side
            size = (round(x.shape[-2] * f), round(x.shape[-1] * f))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return ((x.clamp(0, 1) * 2 - 1) - self.shift) / self.scale

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.spec.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Distance of each pair of two B×C×H×W batches in [0, 1]; 0 for identical images."""
        fx, fy = self._taps(self._prepare(x)), self._taps(self._prepare(y))
        total = torch.zeros(len(x), device=x.device)
        for w, a, b in zip(self.lins, fx, fy):
            total = total + ((a - b).pow(2) * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
        return total


class WeightsMissing(FedleakError):
    """The local weight files for an LPIPS backbone were not found."""


def hub_checkpoints() -> Path:
    """torch's hub cache of checkpoints (``$TORCH_HOME/hub/checkpoints``), where torchvision keeps its
    downloads and ``fedleak weights fetch`` writes."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def search_dirs(folder: str | Path | None = None) -> list[Path]:
    """Where weight files are looked for, in order."""
    dirs = [Path(folder)] if folder else []
    if os.environ.get("FEDLEAK_LPIPS"):
        dirs.append(Path(os.environ["FEDLEAK_LPIPS"]))
    dirs.append(hub_checkpoints())
    spec = importlib.util.find_spec("lpips")
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "weights" / "v0.1")
    return dirs


def find_weights(net: str, folder: str | Path | None = None) -> tuple[Path, Path]:
    """(backbone file, linear-layer file) for ``net``; :class:`WeightsMissing` with a hint if absent."""
    spec = BACKBONES[net]
    dirs = search_dirs(folder)
    backbone = next((p for d in dirs for p in sorted(d.glob(spec.file_glob))), None)
    linear = next((d / n for d in dirs for n in spec.linear_names if (d / n).is_file()), None)
    if backbone is None or linear is None:
        raise WeightsMissing(missing_hint(net))
    return backbone, linear


def missing_hint(net: str) -> str:
    """What to do about missing weights, in words that hold on any machine: the hint ends up in
    metrics.json and reports that others read, so it names settings, not this machine's folders."""
    spec = BACKBONES[net]
    return (f"LPIPS-{net} is n/a: run `fedleak weights fetch {net}`, or place torchvision's "
            f"{spec.file_glob.replace('*', '<hash>')} and LPIPS's {spec.linear_names[0]} in torch's hub cache "
            f"($TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/checkpoints) or in a folder named by metrics.lpips_weights or $FEDLEAK_LPIPS")


def _read(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unreadable file is one clear line
        raise FedleakError(f"cannot read LPIPS weights {path}: {type(exc).__name__}") from None
    if not isinstance(state, dict):
        raise FedleakError(f"LPIPS weights {path} hold no state dict")
    return state


@functools.lru_cache(maxsize=4)
def _load(net: str, backbone: Path, linear: Path) -> LPIPS:
    model = LPIPS(net)
    model.load_backbone(_read(backbone))
    model.load_linear(_read(linear))
    return model


def load_lpips(net: str = "alex", folder: str | Path | None = None) -> LPIPS:
    """The LPIPS model for ``net`` from local files (cached); raises :class:`WeightsMissing`."""
    backbone_spec(net)  # an unknown name is one clear error before any file lookup
    return _load(net, *find_weights(net, folder))


def lpips_scorers(nets: Sequence[str], folder: str | Path | None = None) -> tuple[dict[str, LPIPS | None], list[str]]:
    """One scorer per requested backbone (``None`` where its files are missing) and the hints."""
    scorers: dict[str, LPIPS | None] = {}
    hints: list[str] = []
    for net in nets:
        try:
            scorers[net] = load_lpips(net, folder)
        except WeightsMissing as exc:
            scorers[net] = None
            hints.append(str(exc))
    return scorers, hints
