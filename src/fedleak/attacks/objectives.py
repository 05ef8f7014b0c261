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


View = Callable[[Sequence[Tensor]], list[Tensor]]
Matching = Callable[[Sequence[Tensor]], tuple[View, list[Tensor]]]

MATCHINGS: Registry[Matching] = Registry("matching")
"""How simulated and observed updates are put side by side before the cost: given the observed
tensors, a matching returns a view applied to each simulated update and the targets it is compared
with. The attacker may build views from what it observes and from the public defense spec only."""


@MATCHINGS.register("plain")
def plain(targets: Sequence[Tensor]) -> tuple[View, list[Tensor]]:
    """Compare the updates as they are."""
    return list, list(targets)


@MATCHINGS.register("masked")
def masked(targets: Sequence[Tensor]) -> tuple[View, list[Tensor]]:
    """Compare only the coordinates a sparsifier kept (the non-zero entries of the observed update):
    the zeros top-k or pruning wrote carry no information about the gradient there."""
    masks = [(t != 0).to(t.dtype) for t in targets]
    return (lambda grads: [g * m for g, m in zip(grads, masks)]), list(targets)


@MATCHINGS.register("sign")
def sign_aware(targets: Sequence[Tensor]) -> tuple[View, list[Tensor]]:
    """For signSGD: compare a smooth sign of the simulated update, tanh(g / mean|g|), with the
    observed signs (any per-tensor scale removed), so the magnitudes the client discarded do not
    enter the cost and the gradient still flows."""

    def soft_sign(grads: Sequence[Tensor]) -> list[Tensor]:
        return [torch.tanh(g / g.abs().mean().detach().clamp_min(1e-12)) for g in grads]

    return soft_sign, [torch.sign(t) for t in targets]


def check_matching(name: str) -> str:
    """Validator for ``matching`` settings: a registered matching or ``auto``."""
    return name if name == "auto" else MATCHINGS.check(name)


def auto_matching(defense: str | None) -> str:
    """The matching that suits a public defense spec: sign-aware after ``sign``, masked after a
    sparsifier, plain otherwise."""
    from fedleak.defenses import parse_defense

    names = parse_defense(defense).names()
    if "sign" in names:
        return "sign"
    if "topk" in names or "prune" in names:
        return "masked"
    return "plain"
