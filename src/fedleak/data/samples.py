"""Images that ship inside scikit-image: photographs and the LFW face subset. Nothing is downloaded.

``subset="photos"`` (default): ten photographs, each its own class, centre-cropped to a square.
``subset="faces"``: scikit-image's 200-image LFW subset (100 faces, 100 non-faces, 25×25 grey).
``subset="all"``: both, photos first, with classes photo names + "face" + "non-face".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedleak.data.base import ImageDataset, channel_stats
from fedleak.data.registry import DATASETS
from fedleak.data.transforms import prepare, size_hw, to_tensor
from fedleak.errors import DataError

PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "camera",
    "coins", "moon", "immunohistochemistry", "retina", "hubble_deep_field",
)
FACE_CLASSES = ("face", "non-face")
SUBSETS = ("photos", "faces", "all")


def _photos(size: int, channels: int) -> tuple[list[torch.Tensor], list[str]]:
    from skimage import data

    images = [prepare(to_tensor(getattr(data, name)()), size, channels, square=True) for name in PHOTOS]
    return images, list(PHOTOS)


def _faces(size: int, channels: int) -> tuple[list[torch.Tensor], list[int]]:
    from skimage import data

    lfw = np.asarray(data.lfw_subset(), dtype=np.float32)  # 100 faces, then 100 non-faces
    images = [prepare(to_tensor(a), size, channels) for a in lfw]
    return images, [0] * 100 + [1] * (len(lfw) - 100)


@DATASETS.register("samples")
def load_samples(
    root: Path | None,
    split: str,
    image_size: int | None,
    channels: int | None,
    subset: str = "photos",
) -> ImageDataset:
    if subset not in SUBSETS:
        raise DataError(f"unknown samples subset {subset!r}; choose one of: {', '.join(SUBSETS)}")
    size, ch = image_size or 32, channels or 3
    images: list[torch.Tensor] = []
    labels: list[int] = []
    classes: list[str] = []
    if subset in ("photos", "all"):
        photos, classes = _photos(size, ch)
        images += photos
        labels += list(range(len(photos)))
    if subset in ("faces", "all"):
        faces, face_labels = _faces(size, ch)
        images += faces
        labels += [len(classes) + y for y in face_labels]
        classes += list(FACE_CLASSES)
    stack = torch.stack(images)
    mean, std = channel_stats(stack)
    return ImageDataset(
        name="samples" if subset == "photos" else f"samples:{subset}",
        labels=torch.tensor(labels, dtype=torch.long),
        classes=classes,
        mean=mean,
        std=std,
        read=lambda i: stack[i],
        image_shape=(ch, *size_hw(size)),
    )
