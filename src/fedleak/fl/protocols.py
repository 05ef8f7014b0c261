"""Client training protocols: what a client computes from its batch before it sends an update."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from fedleak.defenses import Gradient, batch_gradient
from fedleak.fl.payload import PublicHyperparameters
from fedleak.registry import Registry

Protocol = Callable[[nn.Module, Tensor, Tensor, PublicHyperparameters, Gradient], dict[str, Tensor]]

PROTOCOLS: Registry[Protocol] = Registry("protocol")


@PROTOCOLS.register("fedsgd")
def fedsgd(model: nn.Module, inputs: Tensor, labels: Tensor, hyper: PublicHyperparameters,
           gradient: Gradient = batch_gradient) -> dict[str, Tensor]:
    """FedSGD: the gradient of the mean cross-entropy over the client batch (or, under DP-SGD,
    its private version)."""
    return {n: g.clone() for n, g in gradient(model, inputs, labels).items()}


@PROTOCOLS.register("fedavg")
def fedavg(model: nn.Module, inputs: Tensor, labels: Tensor, hyper: PublicHyperparameters,
           gradient: Gradient = batch_gradient) -> dict[str, Tensor]:
    """FedAvg: τ local SGD steps on minibatches, returning θ₀ − θ_τ (or divided by the lr). Each
    step's gradient comes from ``gradient`` (plain, or DP-SGD's)."""
    if hyper.lr is None or hyper.lr <= 0:
        raise ValueError("fedavg needs a positive local learning rate")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    start = {n: p.detach().clone() for n, p in named}
    optimizer = torch.optim.SGD([p for _, p in named], lr=hyper.lr)
    for batch in hyper.minibatches():
        grads = gradient(model, inputs[batch], labels[batch])
        for n, p in named:
            p.grad = grads[n]
        optimizer.step()
    scale = hyper.lr if hyper.update_scale == "delta/lr" else 1.0
    return {n: (start[n] - p.detach()) / scale for n, p in named}
