"""CIFAR-10 / CIFAR-100 python batches, read with an unpickler that admits only what they hold."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedleak.data.base import ImageDataset
from fedleak.data.registry import DATASETS, require_root
from fedleak.data.transforms import prepare, to_tensor
from fedleak.errors import DataError

# A CIFAR pickle holds dicts, lists, bytes/str, ints and one numpy array; nothing else may load.
# (Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, "latin1").)
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class SafeUnpickler(pickle.Unpickler):
    """Refuses every global except numpy's array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def safe_load(path: Path) -> dict[str, Any]:
    """Load one CIFAR batch file; keys are decoded to str."""
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # any decoding failure of an untrusted file (refused globals included)
        raise DataError(f"cannot read CIFAR batch {path}: {_first(exc)}") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR batch {path} does not hold a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _first(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _as_str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _images(path: Path, batch: dict[str, Any]) -> np.ndarray:
    """The batch's ``data``: a uint8 N×3072 array, N ≥ 1 (channel-major 32×32 images)."""
    if "data" not in batch:
        raise DataError(f"CIFAR batch {path} has no 'data'")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        kind = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR batch {path}: 'data' should be a uint8 N×3072 array, got {kind}")
    if len(data) == 0:
        raise DataError(f"CIFAR batch {path} holds no images")
    return data


def _labels(path: Path, batch: dict[str, Any], key: str, count: int) -> list[int]:
    """The batch's labels under ``key``: a list (or 1-D integer array) of ``count`` integers."""
    if key not in batch:
        raise DataError(f"CIFAR batch {path} has no {key!r}")
    labels = batch[key]
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DataError(f"CIFAR batch {path}: {key!r} should be a list of integers, got {type(labels).__name__}")
    if len(labels) != count:
        raise DataError(f"CIFAR batch {path}: {len(labels)} {key!r} for {count} images")
    return labels


def _class_names(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"CIFAR meta file {path} not found")
    names = safe_load(path).get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"CIFAR meta file {path}: {key!r} should be a non-empty list of class names")
    return [_as_str(n) for n in names]


def _load(
    folder: Path,
    files: list[Path],
    meta_file: str,
    names_key: str,
    labels_key: str,
    name: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: int | None,
    channels: int | None,
) -> ImageDataset:
    arrays, labels, sources = [], [], []
    for path in files:
        batch = safe_load(path)
        data = _images(path, batch)
        arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(_labels(path, batch, labels_key, len(data)))
        sources += [path] * len(data)
    images = np.concatenate(arrays)
    classes = _class_names(folder / meta_file, names_key)
    bad = next((i for i, v in enumerate(labels) if not 0 <= v < len(classes)), None)
    if bad is not None:
        raise DataError(f"CIFAR batch {sources[bad]}: label {labels[bad]} is out of range for {len(classes)} classes")

    def read(i: int) -> torch.Tensor:
        return prepare(to_tensor(images[i]), image_size, channels)

    if (channels or 3) == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return ImageDataset(
        name=name,
        labels=torch.tensor(labels, dtype=torch.long),
        classes=classes,
        mean=mean,
        std=std,
        read=read,
        image_shape=tuple(read(0).shape),  # type: ignore[arg-type]
    )


def _existing(folder: Path, names: list[str], dataset: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{dataset} folder {folder} not found")
    files = [folder / n for n in names if (folder / n).is_file()]
    if not files:
        raise DataError(f"no {dataset} batch ({', '.join(names[:2])}, …) in {folder}")
    return files


@DATASETS.register("cifar10")
def load_cifar10(
    root: Path | None, split: str, image_size: int | None, channels: int | None
) -> ImageDataset:
    folder = require_root("cifar10", root) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return _load(
        folder, _existing(folder, names, "CIFAR-10"), "batches.meta", "label_names", "labels",
        "cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), image_size, channels,
    )


@DATASETS.register("cifar100")
def load_cifar100(
    root: Path | None, split: str, image_size: int | None, channels: int | None
) -> ImageDataset:
    folder = require_root("cifar100", root) / "cifar-100-python"
    return _load(
        folder, _existing(folder, [split], "CIFAR-100"), "meta", "fine_label_names", "fine_labels",
        "cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), image_size, channels,
    )
