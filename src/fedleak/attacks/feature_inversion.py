"""Images from a layer's input features: optimise a batch whose features match given ones.

Used after an attack that recovers a later layer's inputs exactly (SPEAR on a hidden layer): the
candidate batch x (normalised, B×C×H×W, from a seeded standard normal) minimises
``‖f(x) − f*‖² / ‖f*‖² + Σ wᵣ·rᵣ(x)``, where f(x) is what the model feeds the layer for x (read by a
forward pre-hook, the forward pass stopped there), f* the recovered features and rᵣ fedleak's image
regularisers (:mod:`fedleak.attacks.regularizers`, e.g. TV) with weights wᵣ. Adam with a fixed
learning rate; x is kept in the valid pixel box after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedleak.attacks.regularizers import REGULARIZERS, RegularizerContext
from fedleak.data.normalization import Normalization


class _Reached(Exception):
    """Raised by the pre-hook to stop the forward pass at the layer."""


def layer_input(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """What ``model`` feeds ``layer`` (its first positional input) on input ``x``; the rest of the
    forward pass is not run."""
    seen: list[Tensor] = []

    def grab(module: nn.Module, args: tuple) -> None:
        seen.append(args[0])
        raise _Reached

    hook = layer.register_forward_pre_hook(grab)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        hook.remove()
    if not seen:
        raise RuntimeError("the layer was not reached in the forward pass")
    return seen[0]


@dataclass
class Inversion:
    """The inverted batch (normalised) and the feature-matching loss at the start and the end."""

    inputs: Tensor
    start_loss: float
    final_loss: float
    iterations: int


def invert_features(model: nn.Module, layer: nn.Module, target: Tensor, shape: tuple[int, ...],
                    normalization: Normalization, regularizers: dict[str, float], iterations: int, lr: float,
                    generator: torch.Generator) -> Inversion:
    """Optimise B = ``len(target)`` images of ``shape`` so that ``layer``'s input matches ``target``."""
    for p in model.parameters():
        p.requires_grad_(False)
    device = target.device
    target = target.float().detach()
    scale = target.pow(2).sum().clamp_min(1e-30)
    x = torch.randn((target.shape[0], *shape), generator=generator).to(device).requires_grad_(True)
    lower, upper = normalization.bounds(device)
    context = RegularizerContext(model, dict(model.named_parameters()), dict(model.named_buffers()))
    terms = {REGULARIZERS.get(name): w for name, w in regularizers.items() if w}
    optimizer = torch.optim.Adam([x], lr=lr)

    def feature_loss(v: Tensor) -> Tensor:
        return (layer_input(model, layer, v).reshape(target.shape) - target).pow(2).sum() / scale

    with torch.no_grad():
        start = float(feature_loss(x))
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = feature_loss(x)
        for term, w in terms.items():
            loss = loss + w * term(x, context)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, upper), lower))
    with torch.no_grad():
        final = float(feature_loss(x))
    return Inversion(inputs=x.detach(), start_loss=start, final_loss=final, iterations=iterations)
