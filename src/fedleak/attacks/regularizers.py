"""Image regularisers added to the matching cost (a lookup table, ``attack.regularizers``).

A regulariser is a penalty ``f(x, context) → scalar`` on one trial's candidate batch ``x``
(normalised) — total variation, the L2 norm, the distance of its batch-norm statistics to the
client's — weighted and added to the gradient-matching cost. The papers call these "image priors";
fedleak keeps the word *prior* for ROG's learned restoration network
(:mod:`fedleak.attacks.restoration_prior`). The :class:`RegularizerContext` gives regularisers that
need the model (batch-norm statistics) what they need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn
from torch.func import functional_call

from fedleak.errors import FedleakError
from fedleak.models.batchnorm import batch_statistics
from fedleak.registry import Registry


@dataclass
class RegularizerContext:
    """What a regulariser may read besides the candidate batch: the simulated model, its parameters
    and buffers, the client's batch-norm statistics (when known) and the model's BN layers."""

    model: nn.Module
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    bn_targets: list[tuple[Tensor, Tensor]] | None = None
    bn_layers: list[nn.Module] = field(default_factory=list)
    seen: list[tuple[Tensor, Tensor]] | None = None  # this trial's batch statistics, read from its
    # simulated forward pass (None: the bn regulariser runs its own forward)


Regularizer = Callable[[Tensor, RegularizerContext], Tensor]

REGULARIZERS: Registry[Regularizer] = Registry("regularizer")


@REGULARIZERS.register("tv")
def total_variation(x: Tensor, context: RegularizerContext | None = None) -> Tensor:
    """Anisotropic total variation: mean absolute difference of neighbours along width and height."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


@REGULARIZERS.register("l2")
def l2_norm(x: Tensor, context: RegularizerContext | None = None) -> Tensor:
    """Mean squared value of the (normalised) image: keeps candidates near the data mean."""
    return x.pow(2).mean()


@REGULARIZERS.register("bn")
def batch_norm_statistics(x: Tensor, context: RegularizerContext) -> Tensor:
    """GradInversion / DeepInversion: Σ over BN layers of ‖μ(x) − μ_client‖² + ‖σ²(x) − σ²_client‖²,
    the client's batch statistics being declared attacker knowledge. The statistics of ``x`` come
    from the simulated update's own forward pass when it saw the whole batch (``context.seen``),
    otherwise from a forward pass of their own."""
    if context.bn_targets is None:
        raise FedleakError("the bn regulariser needs the client's batch-norm statistics (knowledge.bn_stats=true)")
    seen = context.seen if context.seen is not None else forward_statistics(x, context)
    total = x.new_zeros(())
    for (mean, var), (target_mean, target_var) in zip(seen, context.bn_targets):
        total = total + (mean - target_mean).pow(2).sum() + (var - target_var).pow(2).sum()
    return total


def forward_statistics(x: Tensor, context: RegularizerContext) -> list[tuple[Tensor, Tensor]]:
    """The batch statistics at each BN layer in a forward pass of ``x`` (when the simulated update
    had none over the whole batch)."""
    seen: list[tuple[Tensor, Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(batch_statistics(args[0])))
             for m in context.bn_layers]
    try:
        functional_call(context.model, (context.params, context.buffers), (x,))
    finally:
        for h in hooks:
            h.remove()
    return seen
