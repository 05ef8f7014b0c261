"""Image priors added to the matching cost (a lookup table)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from fedleak.registry import Registry

Regularizer = Callable[[Tensor], Tensor]

REGULARIZERS: Registry[Regularizer] = Registry("regularizer")


@REGULARIZERS.register("tv")
def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation: mean absolute difference of neighbours along width and height."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy
