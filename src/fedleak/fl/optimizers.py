"""The client's local optimizers: ``torch.optim``'s own for the client, the same arithmetic as pure
functions of tensors for the attacker (differentiable, ``vmap``-able).

Each :class:`Optimizer` is registered under the name a client's training declares
(:attr:`fedleak.fl.ClientTraining.optimizer`); ``build`` makes the ``torch.optim`` optimizer a
PyTorch client makes, ``step`` is one of its steps written out, so that the attacker's simulation
follows the client's arithmetic exactly (tests compare both to float tolerance). ``defaults`` are the
settings ``torch.optim`` fills in itself when a client does not pass them, as far as they differ from
fedleak's (AdamW's weight decay): an audit that was not told a setting assumes those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from fedleak.registry import Registry

Params = dict[str, Tensor]
State = dict[str, Params]  # the optimizer's per-parameter state (momentum buffer, moments), by kind


class Settings(Protocol):
    """The client-training settings an optimizer reads (a :class:`~fedleak.fl.ClientTraining`)."""

    @property
    def lr(self) -> float | None: ...
    @property
    def momentum(self) -> float: ...
    @property
    def dampening(self) -> float: ...
    @property
    def nesterov(self) -> bool: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def beta1(self) -> float: ...
    @property
    def beta2(self) -> float: ...
    @property
    def eps(self) -> float: ...


@dataclass(frozen=True)
class Optimizer:
    """One local optimizer: ``build(parameters, settings)`` → the ``torch.optim`` optimizer;
    ``step(params, grads, state, settings, t)`` → the parameters and state after step ``t`` (0-based)
    of a fresh optimizer, computed out of place."""

    build: Callable[[list[Tensor], Settings], torch.optim.Optimizer]
    step: Callable[[Params, Params, State, Settings, int], tuple[Params, State]]
    defaults: Mapping[str, Any] = field(default_factory=dict)


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer")


def _lr(settings: Settings) -> float:
    if settings.lr is None:
        raise ValueError("a local optimizer needs a learning rate")
    return settings.lr


def _sgd_step(params: Params, grads: Params, state: State, s: Settings, t: int) -> tuple[Params, State]:
    """``torch.optim.SGD``: d = ∇ + wd·θ; b = d on the first step, then μ·b + (1 − dampening)·d;
    θ ← θ − lr·b, with Nesterov θ − lr·(d + μ·b), without momentum θ − lr·d."""
    d = {n: torch.add(grads[n], params[n], alpha=s.weight_decay) if s.weight_decay else grads[n] for n in params}
    if s.momentum:
        old = state.get("momentum")
        buffer = d if old is None else {n: torch.add(old[n] * s.momentum, d[n], alpha=1 - s.dampening) for n in params}
        state = {"momentum": buffer}
        d = {n: torch.add(d[n], buffer[n], alpha=s.momentum) for n in params} if s.nesterov else buffer
    return {n: torch.add(params[n], d[n], alpha=-_lr(s)) for n in params}, state


def _sqrt(v: Tensor) -> Tensor:
    """√v with a finite derivative where v = 0 (a parameter no step has moved yet): its value 0
    there, its gradient taken through the other branch only."""
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))), torch.zeros_like(v))


def _adam_step(params: Params, grads: Params, state: State, s: Settings, t: int, decoupled: bool) -> tuple[Params, State]:
    """``torch.optim.Adam`` / ``AdamW`` (no amsgrad): m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ −
    lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε), with g = ∇ + wd·θ (Adam's L2) or θ first scaled by 1 − lr·wd
    (AdamW's decoupled decay)."""
    lr, wd, step = _lr(s), s.weight_decay, t + 1
    if decoupled and wd:
        params = {n: params[n] * (1 - lr * wd) for n in params}
        g = grads
    else:
        g = {n: torch.add(grads[n], params[n], alpha=wd) if wd else grads[n] for n in params}
    m0, v0 = state.get("exp_avg"), state.get("exp_avg_sq")
    m = {n: g[n] * (1 - s.beta1) + (m0[n] * s.beta1 if m0 is not None else 0) for n in params}
    v = {n: g[n] * g[n] * (1 - s.beta2) + (v0[n] * s.beta2 if v0 is not None else 0) for n in params}
    size = lr / (1 - s.beta1 ** step)
    root = (1 - s.beta2 ** step) ** 0.5
    out = {n: params[n] - size * m[n] / (_sqrt(v[n]) / root + s.eps) for n in params}
    return out, {"exp_avg": m, "exp_avg_sq": v}


OPTIMIZERS.register("sgd")(Optimizer(
    build=lambda ps, s: torch.optim.SGD(ps, lr=_lr(s), momentum=s.momentum, dampening=s.dampening,
                                        nesterov=s.nesterov, weight_decay=s.weight_decay),
    step=_sgd_step))
OPTIMIZERS.register("adam")(Optimizer(
    build=lambda ps, s: torch.optim.Adam(ps, lr=_lr(s), betas=(s.beta1, s.beta2), eps=s.eps,
                                         weight_decay=s.weight_decay),
    step=lambda p, g, st, s, t: _adam_step(p, g, st, s, t, decoupled=False)))
OPTIMIZERS.register("adamw")(Optimizer(
    build=lambda ps, s: torch.optim.AdamW(ps, lr=_lr(s), betas=(s.beta1, s.beta2), eps=s.eps,
                                          weight_decay=s.weight_decay),
    step=lambda p, g, st, s, t: _adam_step(p, g, st, s, t, decoupled=True),
    defaults={"weight_decay": 0.01}))
