"""Image conversions shared by the loaders: array → tensor, square crop, resize, channel count.

An image size is an int (a square side) or an ``(H, W)`` pair; :func:`size_hw` reads either.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedleak.errors import DataError


def to_tensor(array: np.ndarray) -> Tensor:
    """H×W or H×W×C array (uint8, bool or float in [0, 1]) → C×H×W float32 tensor in [0, 1]."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        t = torch.from_numpy(a.copy()).float().div_(255.0)
    else:
        t = torch.from_numpy(a.astype(np.float32, copy=True)).clamp_(0.0, 1.0)
    if t.ndim == 2:
        t = t.unsqueeze(-1)
    if t.ndim != 3:
        raise DataError(f"expected an image array of 2 or 3 dimensions, got shape {tuple(a.shape)}")
    return t.permute(2, 0, 1).contiguous()


def size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of an image size: an int is a square side. A malformed or non-positive size is a
    :class:`ValueError` (callers turn it into their own one-line error)."""
    def side(v: object) -> int:
        if isinstance(v, (bool, str, bytes)):
            raise TypeError
        return operator.index(v)  # type: ignore[arg-type]

    try:
        hw = [side(size)] * 2 if not isinstance(size, Sequence) else [side(v) for v in size]
    except TypeError:
        hw = []
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"an image size is a positive side or [H, W], got {size!r}")
    return hw[0], hw[1]


def center_crop_square(image: Tensor) -> Tensor:
    """Crop the largest centred square of a C×H×W image."""
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[:, top : top + side, left : left + side]


def resize(image: Tensor, size: int | Sequence[int]) -> Tensor:
    """Antialiased bilinear resize of a C×H×W image to ``size`` (an int means square)."""
    hw = size_hw(size)
    if tuple(image.shape[-2:]) == hw:
        return image
    out = F.interpolate(image.unsqueeze(0), size=hw, mode="bilinear", antialias=True, align_corners=False)
    return out.squeeze(0).clamp_(0.0, 1.0)


def set_channels(image: Tensor, channels: int | None) -> Tensor:
    """Convert grey ↔ RGB; ``None`` keeps the image as it is."""
    if channels is None or image.shape[0] == channels:
        return image
    if channels == 3 and image.shape[0] == 1:
        return image.expand(3, -1, -1).contiguous()
    if channels == 1 and image.shape[0] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (image * weights).sum(0, keepdim=True)
    raise DataError(f"cannot convert an image with {image.shape[0]} channels to {channels}")


def prepare(
    image: Tensor, size: int | Sequence[int] | None, channels: int | None, square: bool = False
) -> Tensor:
    """The loaders' common pipeline: optional square crop, resize, channel conversion."""
    if square:
        image = center_crop_square(image)
    if size is not None:
        image = resize(image, size)
    return set_channels(image, channels)
