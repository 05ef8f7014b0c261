"""The dataset registry and :func:`load_dataset`, the one entry point to every loader."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedleak.data.base import ImageDataset
from fedleak.data.transforms import size_hw
from fedleak.errors import DataError
from fedleak.registry import Registry
from fedleak.validate import check_options, declared_options

# ``(root, split, image_size, channels, **options) → ImageDataset``, each dataset with its own keyword
# options (a Protocol with ``**options`` would demand that every loader accept any keyword).
Loader = Callable[..., ImageDataset]


DATASETS: Registry[Loader] = Registry("dataset")
FILE_ROOTS: set[str] = set()  # datasets whose root may be one file (a text corpus) as well as a folder

SPLITS = ("train", "test")


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "test",
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    **options: Any,
) -> ImageDataset:
    """Load dataset ``name`` with images as C×H×W float tensors in [0, 1].

    ``root`` is the data folder (``$FEDLEAK_DATA`` when omitted); ``image_size`` resizes to a square
    side (an int) or to ``(H, W)``, ``channels`` converts grey ↔ RGB. Dataset-specific ``options`` (e.g. ``subset`` for
    ``samples``) are passed on to the loader: only those its signature declares, of its types.
    """
    loader = DATASETS.get(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if image_size is not None:
        try:
            size_hw(image_size)
        except ValueError as exc:
            raise DataError(str(exc)) from None
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if root is None and os.environ.get("FEDLEAK_DATA"):
        root = os.environ["FEDLEAK_DATA"]
    path = Path(root).expanduser() if root is not None else None
    if path is not None and not (path.is_dir() or (name in FILE_ROOTS and path.is_file())):
        what = "a file or folder" if name in FILE_ROOTS else "a folder"
        raise DataError(f"data root {str(path)!r} does not exist or is not {what}")
    check_options(options, declared_options(loader, _FIXED), f"dataset {name!r}")
    return loader(path, split, image_size, channels, **options)


_FIXED = ("root", "split", "image_size", "channels")  # every loader's parameters; the rest are options


def require_root(name: str, root: Path | None) -> Path:
    """File-based datasets need a root; say so clearly when it is missing."""
    if root is None:
        raise DataError(f"dataset {name!r} needs a data root (--root DIR or $FEDLEAK_DATA)")
    return root
