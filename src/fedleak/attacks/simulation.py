"""The attacker's functional re-run of the client computation (``torch.func``).

Given candidate images and labels, :class:`Simulation` recomputes the update the client would have
sent under the public hyperparameters — the FedSGD gradient, or the FedAvg local steps unrolled — as a
pure function of the candidates, so it can be differentiated and ``vmap``-ed over restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad

from fedleak.attacks.base import AttackerKnowledge, target_model
from fedleak.defenses import parse_defense
from fedleak.fl.optimizers import OPTIMIZERS
from fedleak.fl.payload import Payload
from fedleak.models.batchnorm import batch_norm_layers, batch_statistics
from fedleak.registry import Registry

Params = dict[str, Tensor]
Statistics = list[tuple[Tensor, Tensor]]  # (mean, variance) at each batch-norm layer, in module order
Loss = Callable[[Params], tuple[Tensor, Any]]  # params → (loss, aux)
Differentiate = Callable[[Loss, Params], tuple[Params, Any]]
Schedule = list[Tensor]  # index tensor of the client batch at each local step (FedAvg)
Simulator = Callable[..., tuple[Params, "Statistics | None"]]
"""``simulate(model, params, buffers, x, y, hyper, schedule, differentiate, observe) → (update, stats)``:
the client's update for candidates ``x``; with ``observe`` (the model's batch-norm layers), also the
batch statistics of the forward pass over the whole batch ``x`` where the protocol makes one (``None``
otherwise), so the BN prior needs no second forward."""


def functional_grad(loss: Loss, params: Params) -> tuple[Params, Any]:
    """∇ via ``torch.func.grad`` (with the loss's aux): composes with ``vmap`` (batched restarts)."""
    return grad(loss, has_aux=True)(params)


def autograd_grad(loss: Loss, params: Params) -> tuple[Params, Any]:
    """∇ via ``torch.autograd.grad(create_graph=True)``: faster for a single trial on CPU
    (``benchmarks/image_gradient.py``),
    but cannot run under ``vmap``."""
    leaves = {n: p if p.requires_grad else p.detach().requires_grad_(True) for n, p in params.items()}
    value, aux = loss(leaves)
    grads = torch.autograd.grad(value, list(leaves.values()), create_graph=True)
    return dict(zip(leaves, grads)), aux

def plain_grad(loss: Loss, params: Params) -> tuple[Params, Any]:
    """∇ via ``torch.autograd.grad`` without a graph of it: the update only, not differentiable in
    the candidates (replaying a client, checking a declaration), several times cheaper."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    value, aux = loss(leaves)
    grads = torch.autograd.grad(value, list(leaves.values()))
    return dict(zip(leaves, grads)), aux


SIMULATORS: Registry[Simulator] = Registry("protocol simulation")


def _loss(model: nn.Module, params: Params, buffers: Params, x: Tensor, y: Tensor,
          observe: Sequence[nn.Module] = ()) -> tuple[Tensor, Statistics]:
    """Cross-entropy of the model on ``x`` and, for each module of ``observe``, the per-channel batch
    statistics of its input in this forward pass (read by hooks, no second forward). Hard labels are
    class indices; soft labels (DLG's joint optimisation) are probabilities."""
    seen: Statistics = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(batch_statistics(args[0])))
             for m in observe]
    try:
        logits = functional_call(model, (params, buffers), (x,))
    finally:
        for h in hooks:
            h.remove()
    return F.cross_entropy(logits, y), seen


@SIMULATORS.register("fedsgd")
def simulate_fedsgd(model, params, buffers, x, y, hyper, schedule, differentiate, observe=()):
    update, seen = differentiate(lambda p: _loss(model, p, buffers, x, y, observe), params)
    return update, (seen if observe else None)


@SIMULATORS.register("fedavg")
def simulate_fedavg(model, params, buffers, x, y, hyper, schedule, differentiate, observe=()):
    """The local steps of the client's optimizer unrolled, each one its pure-function step
    (:data:`fedleak.fl.optimizers.OPTIMIZERS`: ``torch.optim``'s SGD, Adam or AdamW arithmetic, the
    state fresh each round, as a client's fresh optimizer's is). The batch statistics are those of the
    first step when it sees the whole batch."""
    step_of = OPTIMIZERS.get(hyper.optimizer).step
    current, state, stats = dict(params), {}, None
    for step, index in enumerate(schedule):
        watch = observe if step == 0 and len(index) == len(x) else ()
        g, seen = differentiate(lambda p: _loss(model, p, buffers, x[index], y[index], watch), current)  # noqa: B023  (called now)
        if watch:
            stats = seen
        current, state = step_of(current, g, state, hyper, step)
    scale = hyper.lr if hyper.update_scale == "delta/lr" else 1.0
    return {n: (params[n] - current[n]) / scale for n in params}, stats


class Simulation:
    """The global model from the payload, ready for functional calls."""

    def __init__(self, payload: Payload, knowledge: AttackerKnowledge) -> None:
        model = target_model(payload, knowledge)
        if payload.hyper.model_mode == "train":
            # Batch statistics only: no in-place running-stat updates (they cannot be vmap-ed).
            torch.func.replace_all_batch_norm_modules_(model)
        self.model = model
        self.hyper = payload.hyper
        self.params = {n: p.detach() for n, p in model.named_parameters() if n in payload.update}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self._simulate = SIMULATORS.get(payload.hyper.protocol)
        # The local-step schedule is drawn once here: its shuffling (torch.randperm) cannot run
        # inside the vmap-ed update.
        device = next(iter(self.params.values())).device if self.params else None
        self.schedule = [torch.tensor(batch, device=device) for batch in payload.hyper.minibatches()]
        self.defense = parse_defense(payload.hyper.defense)  # public: clipping is re-run on each update
        self.bn_layers = batch_norm_layers(model)

    def replay(self, x: Tensor, y: Tensor) -> Params:
        """The update examples ``x``, ``y`` would make, computed without a graph (:func:`plain_grad`):
        for checking how well a declaration explains an update, not for an attack to descend."""
        return self.update_and_statistics(x, y, differentiate=plain_grad)[0]

    def update(self, x: Tensor, y: Tensor, batched: bool = False) -> Params:
        """The simulated update for candidate batch ``x`` (B×C×H×W, normalised) and labels ``y``.
        ``batched=True`` when called under ``vmap``. With aggregation (``hyper.clients`` = K), ``x``
        holds K client batches one after another and the update is the mean of theirs. The leading
        simulable defense stages (clipping) are re-run as the client runs them: those before the
        aggregation on each client's update, those after it on the mean."""
        return self.update_and_statistics(x, y, batched)[0]

    def update_and_statistics(self, x: Tensor, y: Tensor, batched: bool = False, observe: bool = False,
                              differentiate: Differentiate | None = None) -> tuple[Params, Statistics | None]:
        """:meth:`update` and, with ``observe``, the batch-norm statistics of ``x`` read from the
        simulated forward pass (``None`` where no forward pass sees the whole of ``x``: aggregated
        clients, FedAvg minibatches)."""
        if differentiate is None:
            differentiate = functional_grad if batched else autograd_grad
        k, b = self.hyper.clients, self.hyper.batch_size
        watch = self.bn_layers if observe and k == 1 else ()
        updates, stats = [], None
        for i in range(k):
            update, seen = self._simulate(self.model, self.params, self.buffers, x[i * b:(i + 1) * b],
                                          y[i * b:(i + 1) * b], self.hyper, self.schedule, differentiate, watch)
            updates.append(self.defense.simulate_client(update))
            stats = seen if watch else None
        mean = updates[0] if k == 1 else {n: cast(Tensor, sum(u[n] for u in updates)) / k for n in self.params}
        return self.defense.simulate_server(mean), stats
