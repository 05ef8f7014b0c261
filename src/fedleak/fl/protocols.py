"""Client training protocols: what a client computes from its batch before it sends an update.

A protocol returns the update (one tensor per trainable parameter) and the model buffers the client
sends with it (FedAvg: the local model's batch-norm statistics after training; FedSGD: none)."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedleak.defenses import Gradient, batch_gradient
from fedleak.fl.payload import PublicHyperparameters
from fedleak.models.precode import extra_loss
from fedleak.parameters import trainable
from fedleak.registry import Registry

Tensors = dict[str, Tensor]
Protocol = Callable[..., tuple[Tensors, Tensors]]
"""``protocol(model, inputs, labels, hyper, gradient, generator=None) → (update, buffers)``; ``generator``
(CPU) draws a private data order, the client's own."""

PROTOCOLS: Registry[Protocol] = Registry("protocol")


def regularized_gradient(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensors:
    """The gradient of the mean cross-entropy plus the terms the model adds to its training loss
    after its forward pass (:func:`fedleak.models.precode.extra_loss`: PRECODE's β·KL), per
    trainable parameter. The client trains with it in place of the plain batch gradient when its
    model has such terms."""
    named = trainable(model)
    loss = F.cross_entropy(model(inputs), labels)
    extra = extra_loss(model)
    if extra is not None:
        loss = loss + extra
    grads = torch.autograd.grad(loss, [p for _, p in named])
    return {n: g.detach() for (n, _), g in zip(named, grads)}


@PROTOCOLS.register("fedsgd")
def fedsgd(model: nn.Module, inputs: Tensor, labels: Tensor, hyper: PublicHyperparameters,
           gradient: Gradient = batch_gradient, generator: torch.Generator | None = None) -> tuple[Tensors, Tensors]:
    """FedSGD: the gradient of the mean cross-entropy over the client batch (or, under DP-SGD,
    its private version), and no buffers."""
    return {n: g.clone() for n, g in gradient(model, inputs, labels).items()}, {}


@PROTOCOLS.register("fedavg")
def fedavg(model: nn.Module, inputs: Tensor, labels: Tensor, hyper: PublicHyperparameters,
           gradient: Gradient = batch_gradient, generator: torch.Generator | None = None) -> tuple[Tensors, Tensors]:
    """FedAvg: τ local steps of the training's ``torch.optim`` optimizer (SGD, Adam or AdamW; a fresh
    one, so fresh momentum and moments, each round) on minibatches in the training's order (a private
    one drawn from ``generator``), returning θ₀ − θ_τ (or divided by the lr) and the local model's
    buffers after training (in train mode, batch norm updated its running statistics). Each step's
    gradient comes from ``gradient`` (plain, or DP-SGD's)."""
    named = trainable(model)
    start = {n: p.detach().clone() for n, p in named}
    lr = cast(float, hyper.lr)  # fedavg's hyperparameters always hold one (checked when they are made)
    optimizer = hyper.optimizer_of([p for _, p in named])
    for batch in hyper.minibatches(generator):
        grads = gradient(model, inputs[batch], labels[batch])
        for n, p in named:
            p.grad = grads[n]
        optimizer.step()
    scale = lr if hyper.update_scale == "delta/lr" else 1.0
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    return {n: (start[n] - p.detach()) / scale for n, p in named}, buffers
