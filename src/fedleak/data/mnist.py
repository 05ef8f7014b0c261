"""MNIST from its IDX files (gzipped or not), laid out as torchvision keeps them or flat in root."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from fedleak.data.base import ImageDataset
from fedleak.data.registry import DATASETS, require_root
from fedleak.data.transforms import prepare, to_tensor
from fedleak.errors import DataError

PREFIX = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8}
CLASSES = tuple(str(d) for d in range(10))


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (magic 0x0000 08 NDIM, big-endian sizes, uint8 payload)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated (header)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = math.prod(shape)  # exact: np.prod would overflow on a hostile header
    if len(data) - header != count:
        raise DataError(f"{path} holds {len(data) - header} bytes of data, expected {count} for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for folder in (root / "MNIST" / "raw", root):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"MNIST file {stem}[.gz] not found under {root}/MNIST/raw or {root}")


@DATASETS.register("mnist")
def load_mnist(
    root: Path | None, split: str, image_size: int | None, channels: int | None
) -> ImageDataset:
    root = require_root("mnist", root)
    images = read_idx(_find(root, f"{PREFIX[split]}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{PREFIX[split]}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"MNIST {split} images {images.shape} and labels {labels.shape} do not match")
    if len(images) == 0 or min(images.shape[1:]) == 0:
        raise DataError(f"MNIST {split} images {images.shape} hold no image")
    if labels.max() >= len(CLASSES):
        raise DataError(f"MNIST {split} label {int(labels.max())} is out of range for {len(CLASSES)} classes")
    out_channels = channels or 1

    def read(i: int) -> torch.Tensor:
        return prepare(to_tensor(images[i]), image_size, channels)

    # MNIST's published constants, converted when the images are made RGB.
    return ImageDataset(
        name="mnist",
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(CLASSES),
        mean=(0.1307,) * out_channels,
        std=(0.3081,) * out_channels,
        read=read,
        image_shape=tuple(read(0).shape),  # type: ignore[arg-type]
    )
