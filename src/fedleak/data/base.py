"""The in-memory image dataset every loader returns.

Images are decoded on access from a compact source (a uint8 array or a list of files), so a large
class-per-folder dataset costs only its file list until images are asked for. Every image comes out as
a C×H×W float tensor in [0, 1], already resized / converted as the loader was told.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedleak.errors import DataError


@dataclass(frozen=True)
class ImageDataset:
    """Labelled images plus the public facts about them (class names, normalisation).

    ``read(i)`` decodes image ``i`` to a C×H×W float tensor in [0, 1]; ``labels`` are class indices.
    ``mean`` / ``std`` are the per-channel normalisation constants models of this dataset use.
    """

    name: str
    labels: Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    read: Callable[[int], Tensor] = field(repr=False)
    image_shape: tuple[int, int, int] = (3, 32, 32)

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image(self, index: int) -> Tensor:
        self.check_index(index)
        return self.read(index)

    def images(self, indices: Sequence[int]) -> Tensor:
        """Stack the images at ``indices`` into a B×C×H×W tensor."""
        for i in indices:
            self.check_index(i)
        return torch.stack([self.read(int(i)) for i in indices])

    def label_of(self, indices: Sequence[int]) -> Tensor:
        for i in indices:
            self.check_index(i)
        return self.labels[torch.as_tensor(list(indices), dtype=torch.long)]

    def class_index(self, name_or_index: str | int) -> int:
        """Resolve a class given by name or number."""
        if isinstance(name_or_index, int) or str(name_or_index).lstrip("-").isdigit():
            c = int(name_or_index)
            if not 0 <= c < self.num_classes:
                raise DataError(
                    f"class {c} is out of range for {self.name} ({self.num_classes} classes)"
                )
            return c
        if name_or_index not in self.classes:
            raise DataError(
                f"{self.name} has no class {name_or_index!r}; classes: {', '.join(self.classes[:20])}"
                + (" …" if self.num_classes > 20 else "")
            )
        return self.classes.index(str(name_or_index))

    def check_index(self, index: int) -> None:
        """Raise a one-line :class:`DataError` unless ``index`` addresses an image (0 … N − 1)."""
        if not 0 <= int(index) < len(self):
            raise DataError(f"index {index} is out of range for {self.name} (0 to {len(self) - 1})")


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of a B×C×H×W batch (std floored to avoid /0)."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
