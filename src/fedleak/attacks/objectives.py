"""Gradient-matching costs and views: how a simulated update is compared with the observed one.

Both are split into a *prepare* step, run once per observed update (the target's norm, the masks),
and an *evaluate* step in the hot loop, so that the loop does no work that depends on the targets
alone. The prepared state is a plain tree of tensors, so the states of many payloads stack along a
leading dimension and ``vmap`` over it (one batched optimisation attacks many payloads, see
:mod:`fedleak.attacks.engine`).

The costs sum per layer rather than over one flattened vector; ``benchmarks/image_gradient.py``
(part ``cost``) compares the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from fedleak.defenses import parse_defense
from fedleak.registry import Registry

State = dict[str, Any]  # a tree of tensors (dicts and lists)


@dataclass(frozen=True)
class Cost:
    """A distance between two updates given as lists of tensors (the selected layers):
    ``prepare(observed) → state`` once, ``evaluate(simulated, state) → scalar`` each step. Calling a
    cost on two lists compares them directly."""

    prepare: Callable[[Sequence[Tensor]], State]
    evaluate: Callable[[Sequence[Tensor], State], Tensor]

    def __call__(self, grads: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
        return self.evaluate(grads, self.prepare(targets))


COSTS: Registry[Cost] = Registry("cost")


def _squared_norm(tensors: Sequence[Tensor]) -> Tensor:
    return cast(Tensor, sum(t.pow(2).sum() for t in tensors))


def _cosine_evaluate(grads: Sequence[Tensor], state: State) -> Tensor:
    dot = sum((g * t).sum() for g, t in zip(grads, state["targets"]))
    norms = _squared_norm(grads).sqrt() * state["norm"]
    return 1 - dot / norms.clamp_min(torch.finfo(norms.dtype).tiny)


COSTS.register("cosine")(Cost(
    prepare=lambda targets: {"targets": list(targets), "norm": _squared_norm(targets).sqrt()},
    evaluate=_cosine_evaluate,
))
"""1 − cosine similarity of the two updates, each taken across all given layers (the target's norm
computed once)."""

COSTS.register("l2")(Cost(
    prepare=lambda targets: {"targets": list(targets)},
    evaluate=lambda grads, state: sum((g - t).pow(2).sum() for g, t in zip(grads, state["targets"])),
))
"""Squared Euclidean distance summed over all given layers (DLG)."""


View = Callable[[Sequence[Tensor]], list[Tensor]]


@dataclass(frozen=True)
class Matching:
    """How simulated and observed updates are put side by side before the cost.

    ``prepare(observed tensors) → (state, compared)``: what the view needs (built from the observed
    update and the public defense spec only) and the tensors the simulated update is compared with;
    ``view(simulated tensors, state)`` is applied to each simulated update. Calling a matching on
    the observed tensors gives ``(view, compared)`` with the state bound."""

    prepare: Callable[[Sequence[Tensor]], tuple[State, list[Tensor]]]
    view: Callable[[Sequence[Tensor], State], list[Tensor]]

    def __call__(self, targets: Sequence[Tensor]) -> tuple[View, list[Tensor]]:
        state, compared = self.prepare(targets)
        return (lambda grads: self.view(grads, state)), compared


MATCHINGS: Registry[Matching] = Registry("matching")


MATCHINGS.register("plain")(Matching(
    prepare=lambda targets: ({}, list(targets)),
    view=lambda grads, state: list(grads),
))
"""Compare the updates as they are."""

MATCHINGS.register("masked")(Matching(
    prepare=lambda targets: ({"masks": [(t != 0).to(t.dtype) for t in targets]}, list(targets)),
    view=lambda grads, state: [g * m for g, m in zip(grads, state["masks"])],
))
"""Compare only the coordinates a sparsifier kept (the non-zero entries of the observed update):
the zeros top-k or pruning wrote carry no information about the gradient there."""


def _soft_sign(grads: Sequence[Tensor], state: State) -> list[Tensor]:
    return [torch.tanh(g / g.abs().mean().detach().clamp_min(1e-12)) for g in grads]


MATCHINGS.register("sign")(Matching(
    prepare=lambda targets: ({}, [torch.sign(t) for t in targets]),
    view=_soft_sign,
))
"""For signSGD: compare a smooth sign of the simulated update, tanh(g / mean|g|), with the observed
signs (any per-tensor scale removed), so the magnitudes the client discarded do not enter the cost
and the gradient still flows."""


def check_matching(name: str) -> str:
    """Validator for ``matching`` settings: a registered matching or ``auto``."""
    return name if name == "auto" else MATCHINGS.check(name)


def auto_matching(defense: str | None) -> str:
    """The matching that suits a public defense spec, as its stages declare it
    (:attr:`fedleak.defenses.DefensePipeline.matching`: sign-aware after ``sign``, masked after a
    sparsifier), plain when none declares one."""
    return parse_defense(defense).matching or "plain"
