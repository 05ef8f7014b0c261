"""The channel-wise normalisation between pixels in [0, 1] and a model's input: ``(x − mean) / std``.

One value object for both directions and for the valid pixel range in input space (an attack's box
constraint), so the client, the attacks, the metrics and training all compute it the same way.
Its constants are built once per device and dtype (no host-to-device copy in an attack's loop).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedleak.errors import DataError


@functools.lru_cache(maxsize=64)
def _constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
               dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    with torch.inference_mode(False):  # usable in an autograd graph whatever mode the first call ran in
        m = torch.tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1)
    return m, s


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``mean`` and ``std`` of pixels in [0, 1] (one value per channel each)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def channels(self) -> int:
        return len(self.mean)

    def check(self, images: Tensor, labels: Tensor) -> None:
        """Raise a one-line :class:`DataError` unless ``images`` is a B×C×H×W batch of this many
        channels with one class index per image in ``labels`` (the client's input check; a token
        encoding, :class:`fedleak.data.tokens.TokenEncoding`, checks token batches)."""
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise DataError(f"client images must be B×{self.channels}×H×W, got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise DataError("client labels must hold one class index per image")

    def constants(self, device: torch.device | str = "cpu",
                  dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` as 1×C×1×1 tensors on ``device`` (broadcast over any N×C×H×W batch); shared
        between callers, so never modified in place."""
        return _constants(self.mean, self.std, torch.device(device), dtype or torch.get_default_dtype())

    def to_input(self, images: Tensor) -> Tensor:
        """[0, 1] images (…×C×H×W) → the model's input space."""
        m, s = self.constants(images.device, images.dtype)
        return (images - m) / s

    def to_pixels(self, x: Tensor) -> Tensor:
        """Model input → images clamped to [0, 1] (detached: a reconstruction, not a graph)."""
        m, s = self.constants(x.device, x.dtype)
        return (x.detach() * s + m).clamp(0, 1)

    def bounds(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """The valid pixel range [0, 1] in input space: ``(lower, upper)``, 1×C×1×1 on ``device``."""
        m, s = self.constants(device)
        return (0 - m) / s, (1 - m) / s


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[0, 1] images → the model's input space: :meth:`Normalization.to_input` of ``(mean, std)``."""
    return Normalization(tuple(mean), tuple(std)).to_input(images)
