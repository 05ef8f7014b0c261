"""Client training protocols: what a client computes from its batch before it sends an update."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedleak.fl.payload import PublicHyperparameters
from fedleak.registry import Registry

Protocol = Callable[[nn.Module, Tensor, Tensor, PublicHyperparameters], dict[str, Tensor]]

PROTOCOLS: Registry[Protocol] = Registry("protocol")


@PROTOCOLS.register("fedsgd")
def fedsgd(model: nn.Module, inputs: Tensor, labels: Tensor, hyper: PublicHyperparameters) -> dict[str, Tensor]:
    """FedSGD: the gradient of the mean cross-entropy over the client batch."""
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    loss = F.cross_entropy(model(inputs), labels)
    grads = torch.autograd.grad(loss, params)
    return {n: g.detach().clone() for n, g in zip(names, grads)}
