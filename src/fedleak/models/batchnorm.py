"""Normalisation layers: the factory the model families share, and batch-norm helpers used by the
client (what it could leak) and the BN-statistics prior."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

NormFactory = Callable[[int], nn.Module]


def norm_layer(kind: str) -> NormFactory:
    """Normalisation after a convolution: ``batch``, ``group`` (GroupNorm, at most 32 groups; works
    with per-sample gradients, so with DP-SGD) or ``none``."""
    factories: dict[str, NormFactory] = {
        "batch": nn.BatchNorm2d,
        "group": lambda c: nn.GroupNorm(min(32, c), c),
        "none": lambda c: nn.Identity(),
    }
    if kind not in factories:
        raise ValueError(f"norm must be one of {', '.join(factories)}, got {kind!r}")
    return factories[kind]


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's batch-norm layers in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batch_statistics(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance of a BN layer's input, over batch and space."""
    dims = [0, *range(2, inputs.ndim)]
    return inputs.mean(dims), inputs.var(dims, unbiased=False)
