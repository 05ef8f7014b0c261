"""Checkpoints: weights in safetensors with fedleak's JSON metadata in the file's header.

The metadata says how to rebuild the model (architecture and its arguments) and what it was trained
on (dataset, normalisation, class names, epochs, test accuracy, seed, fedleak version); a text model's
also its ``modality`` (``"text"``; ``"image"`` where absent), the dataset options that reload the same
data (``data_options``: corpus size, tokenizer spec, sequence length, …) and its ``tokenizer``'s facts
(name, vocabulary size, pad/bos/eos ids, sequence length, sha256 of its serialised JSON). Plain PyTorch
state dicts (``.pt`` / ``.pth``) load with ``torch.load(weights_only=True)`` into a model the run
builds itself. Nothing is ever unpickled beyond tensors.

Metadata comes from files other people made, so :func:`parse_info` checks every field before it is
used: the architecture must be a registered fedleak model (a file never names code to import), its
options only those the builder declares, sizes and width of the right types and ranges; and
:func:`refuse_oversized` makes sure the described model is no larger than the weights in the file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from fedleak import __version__
from fedleak.errors import FedleakError
from fedleak.models.external import is_external, refuse_external
from fedleak.models.layouts import translate
from fedleak.models.registry import MODELS, create_model
from fedleak.validate import (
    ECHO,
    OPTION_TYPES,
    Check,
    check_fields,
    check_options,
    declared_options,
    integer,
    mapping,
    number,
    numbers,
    one_of,
    optional,
    short,
    size,
    text,
    texts,
)

METADATA_KEY = "fedleak"

# What a checkpoint's metadata may hold: each field's type and range (see fedleak.validate).
MAX_CLASSES = 100_000
MAX_SIDE = 1024
MAX_WIDTH = 16.0
_FIXED = ("num_classes", "in_channels", "image_size", "width")  # every builder's own parameters
MODALITY_NAMES = ("image", "text")  # what a checkpoint's ``modality`` may say (fedleak.modalities' entries)
_FIELDS = {
    "architecture": text(),
    "num_classes": integer(1, MAX_CLASSES),
    "in_channels": one_of(1, 3),
    "image_size": size(MAX_SIDE),
    "width": number(0, MAX_WIDTH, open_low=True),
    "options": mapping(),
    "dataset": text(),
    "mean": numbers(0, 1),
    "std": numbers(0, 1, open_low=True),
    "classes": texts(),
    "epochs": integer(0),
    "test_accuracy": optional(number(0, 1)),
    "seed": optional(integer(-(2**63), 2**64 - 1)),
    "training": mapping(),
    "fedleak_version": text(),
    "modality": Check(lambda v: v in MODALITY_NAMES, " or ".join(MODALITY_NAMES)),
    "data_options": mapping(),
    "tokenizer": mapping(),
}


@dataclass
class CheckpointInfo:
    architecture: str
    num_classes: int
    in_channels: int
    image_size: int | tuple[int, int] | list[int]  # (H, W) for non-square images; [H, W] as training writes it
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
    modality: str = "image"  # the dataset's modality; "text": image_size is the sequence length
    data_options: dict[str, Any] = field(default_factory=dict)  # the loader options it was trained with
    tokenizer: dict[str, Any] = field(default_factory=dict)  # a text dataset's tokenizer facts


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, info: CheckpointInfo) -> Path:
    """Write weights and metadata atomically (a temporary file renamed into place)."""
    info.fedleak_version = info.fedleak_version or __version__
    return save_tensors(path, model.state_dict(), {METADATA_KEY: json.dumps(asdict(info))})


def save_tensors(path: str | os.PathLike[str], state: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically: a temporary sibling renamed into place. Tensors that
    share memory (tied weights: GPT-2's output layer is its token embedding) are written as copies,
    one per name, which safetensors requires and :func:`load_into` loads back into the tied tensor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _unshared({k: v.detach().contiguous().cpu() for k, v in state.items()})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            save_file(state, tmp, metadata=metadata)
        except SafetensorError as exc:  # a write error (a full disk, say) is not a broken file
            reason = str(exc).removeprefix("Error while serializing: ").removeprefix("I/O error: ")
            raise FedleakError(f"could not write {str(path)!r}: {reason}") from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every tensor whose storage an earlier one uses replaced by a copy."""
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        storage = value.untyped_storage().data_ptr()
        out[key] = value.clone() if storage in seen and value.numel() else value
        seen.add(storage)
    return out


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata in a safetensors file's header; a broken file is one clear error."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise FedleakError(f"checkpoint {path} is corrupt or not a safetensors file: {exc}") from None


def read_info(path: str | os.PathLike[str], named: str | None = None) -> CheckpointInfo | None:
    """The validated fedleak metadata of a safetensors checkpoint (``None`` for other files).

    ``named`` is the model the user's own command line or Python names: the one external factory
    the metadata may name (the user asked for that import). See :func:`parse_info`."""
    path = _existing(path)
    if path.suffix != ".safetensors":
        return None
    meta = read_metadata(path)
    if METADATA_KEY not in meta:
        return None
    info = parse_info(meta[METADATA_KEY], f"checkpoint {path}", named)
    if not is_external(info.architecture):
        refuse_oversized(lambda: create_model(info.architecture, info.num_classes, info.in_channels, info.image_size,
                                              info.width, **info.options), path, f"checkpoint {path}")
    return info


def stored_values(path: str | os.PathLike[str]) -> int:
    """How many tensor elements a safetensors file holds (read from its header; nothing is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise FedleakError(f"{path} is corrupt or not a safetensors file: {str(exc)[:ECHO]}") from None


def refuse_oversized(build: Callable[[], nn.Module], path: str | os.PathLike[str], what: str) -> None:
    """Build the model a file's metadata describes on the meta device (shapes only, no memory) and
    refuse it when it needs more values than the file holds, so metadata cannot make fedleak
    allocate a model of any size before the weights are checked against it."""
    with torch.device("meta"):
        model = build()
    wanted = sum(t.numel() for t in model.state_dict().values())
    stored = stored_values(path)
    if wanted > stored:
        raise FedleakError(f"{what}: its metadata describes a model of {wanted:,} values but the file holds "
                           f"{stored:,}; the metadata does not match the weights")


def parse_info(raw: str, what: str, named: str | None = None) -> CheckpointInfo:
    """Validate a checkpoint's metadata JSON; every violation is one line naming the field.

    The architecture must be a registered fedleak model (or exactly the external factory ``named``
    by the user), its options only those the builder declares, of the declared types: a file never
    chooses code to import or arguments a builder does not take."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise FedleakError(f"{what} has unreadable fedleak metadata: {str(exc)[:ECHO]}") from None
    fields = check_fields(data, _FIELDS, ("architecture", "num_classes", "in_channels", "image_size"),
                          f"{what} metadata")
    name, options = fields["architecture"], fields.get("options", {})
    if is_external(name):
        if name != named:
            refuse_external(name, f"{what}'s metadata")
        declared: dict[str, tuple[type, ...] | None] = {key: OPTION_TYPES for key in options}  # the user's own factory takes what it takes
    elif name in MODELS:
        declared = {k: t for k, t in declared_options(MODELS.get(name), _FIXED).items() if t is not None}
    else:
        raise FedleakError(f"{what} metadata: architecture {short(name)} is not a registered fedleak model "
                           "(`fedleak inspect-model --help` and docs/models.md list them)")
    check_options(options, declared, f"{what} metadata: model {name!r}")
    mean, std = tuple(fields.get("mean", ())), tuple(fields.get("std", ()))
    if (mean or std) and not len(mean) == len(std) == fields["in_channels"]:
        raise FedleakError(f"{what} metadata: mean and std must have one value per input channel "
                           f"({fields['in_channels']}), got {len(mean)} and {len(std)}")
    side = fields["image_size"]
    if isinstance(side, list):
        side = side[0] if side[0] == side[1] else tuple(side)
    return CheckpointInfo(**{**fields, "image_size": side, "mean": mean, "std": std})


def load_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, or from a torch file with ``weights_only=True``."""
    path = _existing(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():  # a refused pickle is reported as one error, not warnings first
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure of an untrusted file is the user's input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FedleakError(f"checkpoint {path} cannot be read: {first}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FedleakError(f"checkpoint {path} does not hold a state dict of tensors")
    return state


def load_into(model: nn.Module, path: str | os.PathLike[str], architecture: str = "the model") -> str:
    """Load ``path`` into ``model`` strictly; a mismatch is one line naming the first tensor that differs.

    A state dict in torchvision's or timm's layout (a user's ImageNet ResNet or DenseNet) is renamed to
    fedleak's module names first (:mod:`fedleak.models.layouts`). Only ``num_batches_tracked`` may be
    absent (old torchvision files predate it; the model keeps its own). A classifier with another
    number of classes than the dataset is an error, never silently replaced. Returns the foreign
    layout the file was in (``"torchvision/timm"``), or ``""`` when it used fedleak's own names: a
    foreign layout means an ImageNet-style checkpoint, whose normalisation is the model card's
    (:mod:`fedleak.models.normalization`)."""
    state, origin, layout = translate(load_state(path), model, architecture)
    own = model.state_dict()
    def as_given(k: str) -> str:
        return f"{origin[k]!r} (as {k!r})" if origin.get(k, k) != k else repr(origin.get(k, k))

    where = f"checkpoint {path} ({layout} layout)" if layout else f"checkpoint {path}"
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {as_given(unexpected[0])})")
        raise FedleakError(f"{where} does not fit {architecture}: {', '.join(parts)}")
    head = _head_weight(model)
    for k, v in state.items():
        if v.shape != own[k].shape:
            if k == head and v.shape[1:] == own[k].shape[1:]:
                raise FedleakError(
                    f"{where} does not fit {architecture}: its classifier {as_given(k)} has {v.shape[0]} classes, "
                    f"the dataset {own[k].shape[0]}; attack it on a dataset with {v.shape[0]} classes")
            raise FedleakError(
                f"{where} does not fit {architecture}: {as_given(k)} is {tuple(v.shape)}, "
                f"the model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict({**{k: v for k, v in own.items() if k not in state}, **state})
    return layout


def _head_weight(model: nn.Module) -> str | None:
    """The state-dict key of the model's last linear layer's weight (its classifier), if any."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{names[-1]}.weight" if names else None


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FedleakError(f"checkpoint {str(p)!r} not found")
    return p
