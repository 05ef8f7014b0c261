"""Checkpoints: weights in safetensors with fedleak's JSON metadata in the file's header.

The metadata says how to rebuild the model (architecture and its arguments) and what it was trained
on (dataset, normalisation, class names, epochs, test accuracy, seed, fedleak version). Plain PyTorch
state dicts (``.pt`` / ``.pth``) load with ``torch.load(weights_only=True)`` into a model the run
builds itself. Nothing is ever unpickled beyond tensors.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from fedleak.errors import FedleakError

METADATA_KEY = "fedleak"


@dataclass
class CheckpointInfo:
    architecture: str
    num_classes: int
    in_channels: int
    image_size: int
    width: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: list[str] = field(default_factory=list)
    epochs: int = 0
    test_accuracy: float | None = None
    seed: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    fedleak_version: str = ""


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, info: CheckpointInfo) -> Path:
    """Write weights and metadata atomically (a temporary file renamed into place)."""
    from fedleak import __version__

    info.fedleak_version = info.fedleak_version or __version__
    return save_tensors(path, model.state_dict(), {METADATA_KEY: json.dumps(asdict(info))})


def save_tensors(path: str | os.PathLike[str], state: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically: a temporary sibling renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata in a safetensors file's header; a broken file is one clear error."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise FedleakError(f"checkpoint {path} is corrupt or not a safetensors file: {exc}") from None


def read_info(path: str | os.PathLike[str]) -> CheckpointInfo | None:
    """The fedleak metadata of a safetensors checkpoint (``None`` for other files)."""
    path = _existing(path)
    if path.suffix != ".safetensors":
        return None
    meta = read_metadata(path)
    if METADATA_KEY not in meta:
        return None
    try:
        return CheckpointInfo(**json.loads(meta[METADATA_KEY]))
    except (json.JSONDecodeError, TypeError) as exc:
        raise FedleakError(f"checkpoint {path} has unreadable fedleak metadata: {exc}") from None


def load_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, or from a torch file with ``weights_only=True``."""
    path = _existing(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure of an untrusted file is the user's input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FedleakError(f"checkpoint {path} cannot be read: {first}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FedleakError(f"checkpoint {path} does not hold a state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str], architecture: str = "the model") -> nn.Module:
    """Load ``path`` into ``model`` strictly; a mismatch is one line naming what differs."""
    state = load_state(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        raise FedleakError(f"checkpoint {path} does not fit {architecture}: {', '.join(parts)}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise FedleakError(
                f"checkpoint {path} does not fit {architecture}: {k!r} is {tuple(v.shape)}, "
                f"the model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state)
    return model


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FedleakError(f"checkpoint {str(p)!r} not found")
    return p
