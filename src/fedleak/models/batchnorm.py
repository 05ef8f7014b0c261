"""Batch-norm helpers shared by the client (what it could leak) and the BN-statistics prior."""

from __future__ import annotations

from torch import Tensor, nn


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's batch-norm layers in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batch_statistics(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance of a BN layer's input, over batch and space."""
    dims = [0, *range(2, inputs.ndim)]
    return inputs.mean(dims), inputs.var(dims, unbiased=False)
