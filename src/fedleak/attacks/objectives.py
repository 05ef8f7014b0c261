"""Gradient-matching costs: distance between the simulated and the observed update (a lookup table)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fedleak.registry import Registry

Cost = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]

COSTS: Registry[Cost] = Registry("cost")


@COSTS.register("cosine")
def cosine(grads: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """1 − cosine similarity of the two updates, each flattened across all given layers."""
    dot = sum((g * t).sum() for g, t in zip(grads, targets))
    gnorm = sum(g.pow(2).sum() for g in grads)
    tnorm = sum(t.pow(2).sum() for t in targets)
    return 1 - dot / (gnorm.sqrt() * tnorm.sqrt()).clamp_min(torch.finfo(gnorm.dtype).tiny)


@COSTS.register("l2")
def l2(grads: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """Squared Euclidean distance summed over all given layers (DLG)."""
    return sum((g - t).pow(2).sum() for g, t in zip(grads, targets))
