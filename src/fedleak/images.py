"""Images as files: grids of equally sized images, upscaled without smoothing so pixels stay visible,
and PNG bytes — what a run writes for its reconstructions and what the reports embed."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image
from torch import Tensor

MAX_UPSCALE = 4  # small images (≤ 32 px) are drawn 4× so their pixels stay visible
TARGET_SIDE = 128  # upscale until the longer side reaches this; larger images are drawn as they are


def upscale(h: int, w: int) -> int:
    """The integer factor images of H×W are drawn at: 4 for ≤ 32 px, 2 for 64 px, 1 from 128 px
    (a 224-px batch of 64 drawn 4× would be a canvas of over 300 MB)."""
    return max(1, min(MAX_UPSCALE, TARGET_SIDE // max(h, w)))


def image_grid(rows: Sequence[Tensor], scale: int | None = None, pad: int = 2) -> Image.Image:
    """Lay out B×C×H×W batches (values in [0, 1]) as grid rows on a white background, each pixel
    drawn ``scale`` × ``scale`` (unset: :func:`upscale`)."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    _, c, h, w = rows[0].shape
    scale = upscale(h, w) if scale is None else scale
    cols = max(r.shape[0] for r in rows)
    cell_h, cell_w = h * scale, w * scale
    canvas = np.full((pad + len(rows) * (cell_h + pad), pad + cols * (cell_w + pad), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            a = image.detach().clamp(0, 1).mul(255).round().byte().cpu().numpy()
            a = np.repeat(np.repeat(a.transpose(1, 2, 0), scale, 0), scale, 1)
            if a.shape[2] == 1:
                a = np.repeat(a, 3, 2)
            top, left = pad + i * (cell_h + pad), pad + j * (cell_w + pad)
            canvas[top : top + cell_h, left : left + cell_w] = a
    return Image.fromarray(canvas)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
