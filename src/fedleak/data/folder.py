"""Class-per-folder image sets (VGGFace2, ORL, any ImageFolder-style tree) read with Pillow."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedleak.data.base import ImageDataset, channel_stats
from fedleak.data.registry import DATASETS, require_root
from fedleak.data.transforms import prepare, to_tensor
from fedleak.errors import DataError

_STATS_SAMPLE = 256


def _natural_key(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc.strerror or exc}") from None


def _image_files(folder: Path) -> list[Path]:
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(
        (p for p in _entries(folder) if p.is_file() and p.suffix.lower() in extensions),
        key=lambda p: _natural_key(p.name),
    )


def read_image(path: Path) -> torch.Tensor:
    """Decode one file with Pillow into a C×H×W tensor (grey stays one channel).

    Any decoding failure names the file. An image over Pillow's pixel limit
    (``Image.MAX_IMAGE_PIXELS``, a decompression-bomb guard) is refused before it is decoded, also
    in the band where Pillow would only warn."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                im = opened.convert("L" if opened.mode in ("1", "L", "I", "I;16", "F") else "RGB")
                return to_tensor(np.asarray(im))
    except Exception as exc:  # any decoding failure of an untrusted file (Pillow's plugins raise many kinds)
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read image {path}: {text}") from None


@DATASETS.register("folder")
def load_folder(
    root: Path | None,
    split: str,
    image_size: int | None,
    channels: int | None,
    square: bool | None = None,
) -> ImageDataset:
    """One sub-folder per class. A tree with ``train/`` and ``test/`` uses the one asked for;
    otherwise both splits are the whole folder (training splits it by fraction itself).

    An int ``image_size`` resizes every image to a square side, after a centred square crop unless
    ``square=False``; an ``(H, W)`` size resizes without cropping (unless ``square=True``); without
    it all images must share one size. Grey and colour files mixed need ``channels``.
    """
    root = require_root("folder", root)
    if (root / split).is_dir() and (root / ("test" if split == "train" else "train")).is_dir():
        root = root / split
    class_dirs = sorted((d for d in _entries(root) if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: _natural_key(d.name))
    files: list[Path] = []
    labels: list[int] = []
    for c, d in enumerate(class_dirs):
        found = _image_files(d)
        files += found
        labels += [c] * len(found)
    if not files:
        raise DataError(f"no class sub-folders with images under {root}")
    crop = isinstance(image_size, int) if square is None else square

    def read(i: int) -> torch.Tensor:
        return prepare(read_image(files[i]), image_size, channels, square=crop)

    first = read(0)

    def read_checked(i: int) -> torch.Tensor:
        """Image ``i``, refused with one line when it does not match the first image: the statistics
        below see a sample of the folder, so any other image is checked when it is read."""
        image = read(i)
        if image.shape[0] != first.shape[0]:
            raise DataError(
                f"{files[i]} has {image.shape[0]} channel(s) but {files[0]} has {first.shape[0]}: the folder "
                "mixes grey and colour images; pass --channels 3 (data.channels=3) to read them all as "
                "colour, or --channels 1 for grey"
            )
        if image.shape != first.shape:
            raise DataError(
                f"{files[i]} is {tuple(image.shape[1:])} but {files[0]} is {tuple(first.shape[1:])}; "
                "pass an image size (--image-size N, or data.image_size=[H, W]) to resize them all"
            )
        return image

    picks = np.linspace(0, len(files) - 1, num=min(_STATS_SAMPLE, len(files))).astype(int)
    mean, std = channel_stats(torch.stack([read_checked(int(i)) for i in picks]))
    return ImageDataset(
        name=f"folder:{root.name}",
        labels=torch.tensor(labels, dtype=torch.long),
        classes=[d.name for d in class_dirs],
        mean=mean,
        std=std,
        read=read_checked,
        image_shape=tuple(first.shape),  # type: ignore[arg-type]
    )
