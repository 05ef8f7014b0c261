"""Choosing which images a client holds: by index, by class, or a seeded draw."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedleak.data.base import ImageDataset
from fedleak.errors import DataError


def pick_indices(
    dataset: ImageDataset,
    count: int,
    indices: Sequence[int] | None = None,
    classes: Sequence[str | int] | None = None,
    seed: int = 0,
) -> list[int]:
    """Return ``count`` dataset indices.

    Explicit ``indices`` are used as given (their number must equal ``count``). With ``classes``,
    images are drawn round-robin over the named classes (each in a seeded random order),
    skipping classes that have run out.
    Otherwise ``count`` distinct images are drawn with the seed.
    """
    if count < 1:
        raise DataError(f"batch size must be at least 1, got {count}")
    if indices is not None:
        chosen = [int(i) for i in indices]
        if len(chosen) != count:
            raise DataError(f"{len(chosen)} image indices given for a batch of {count}")
        for i in chosen:
            dataset.check_index(i)
        return [i % len(dataset) for i in chosen]
    generator = torch.Generator().manual_seed(seed)
    if classes:
        wanted = [dataset.class_index(c) for c in classes]
        pools = []
        for c in wanted:
            members = torch.nonzero(dataset.labels == c).flatten()
            if members.numel() == 0:
                raise DataError(f"{dataset.name} has no image of class {dataset.classes[c]!r}")
            pools.append(members[torch.randperm(members.numel(), generator=generator)].tolist())
        chosen = []
        depth = 0
        while len(chosen) < count:
            row = [pool[depth] for pool in pools if depth < len(pool)]
            if not row:
                raise DataError(f"not enough images in the requested classes for a batch of {count}")
            chosen += row[: count - len(chosen)]
            depth += 1
        return chosen
    if count > len(dataset):
        raise DataError(f"batch of {count} asked from {dataset.name}, which has {len(dataset)} images")
    return torch.randperm(len(dataset), generator=generator)[:count].tolist()
