"""Soteria (Sun et al., CVPR 2021): prune the representation layer's gradient where a perturbation
of the representation moves the reconstruction most.

The representation r is the input of one fully connected layer (by default the model's last
``nn.Linear``, the classifier; ``layer`` names another). For each feature i the paper approximates
the input change that removing r_i forces by ‖r_i‖ / ‖∂r_i/∂x‖; it prunes the features where that
is largest. As the authors' release computes it, per example b

    s_{b,i} = ‖∂(Σ_b' r_{b',i})/∂x_b‖₂ / |r_{b,i}|      (0 where r_{b,i} = 0)

(one backward pass per feature of the batch sum, the norm taken per example — exactly the per-example
Jacobian row unless batch norm in train mode mixes the examples), summed over the batch,
q_i = Σ_b s_{b,i}; the columns i of the layer's weight gradient with q_i below the ``rate``-th
percentile of q (numpy's linear interpolation, as the release calls ``np.percentile``) are set to
zero — the smallest ‖∂r_i/∂x‖/‖r_i‖, i.e. the largest ‖r_i‖/‖∂r_i/∂x‖. A zero r_{b,i} adds nothing to
column i of that example's gradient (it is Σ_b δ_b r_{b,i}), so it scores 0 (the release divides by
r, undefined there). Every other tensor of the gradient — the layer's bias included — is the plain
batch gradient of the same forward pass.

It needs the model, the batch and gradients against the input, so it is a :class:`GradientDefense`:
it replaces the gradient of every step the client trains on (each FedAvg step prunes by its own
minibatch's scores). The zeroed columns carry nothing, so an attacker compares the rest
(``masked`` matching).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fedleak.defenses.base import DefenseConfig, Gradient, GradientDefense, Update, register
from fedleak.defenses.compression import percentile
from fedleak.errors import ConfigError
from fedleak.models.precode import extra_loss
from fedleak.parameters import trainable

CHUNK = 64  # features whose input gradients one batched backward pass computes


class SoteriaConfig(DefenseConfig):
    rate: float = Field(80.0, ge=0, lt=100, description="pruning rate: percentile (in %) of the feature "
                                                        "scores below which the columns are zeroed")
    layer: str | None = Field(None, description="the nn.Linear whose input is the representation "
                                                "(module name; default: the model's last nn.Linear)")


def representation_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Linear]:
    """The named ``nn.Linear`` of ``model``, or its last one in module order."""
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if name is None:
        if not linear:
            raise ConfigError("soteria needs a fully connected layer (nn.Linear) in the model; it has none")
        return linear[-1]
    found = dict(linear).get(name)
    if found is None:
        names = ", ".join(n for n, _ in linear) or "none"
        raise ConfigError(f"soteria: layer {name!r} is not an nn.Linear of the model (its nn.Linear layers: {names})")
    return name, found


def feature_scores(r: Tensor, x: Tensor) -> Tensor:
    """q_i = Σ_b ‖∂(Σ_b' r_{b',i})/∂x_b‖ / |r_{b,i}| (0 where r_{b,i} = 0) for the B×d representation
    ``r`` computed from ``x`` (B×…), the graph kept; batched backward passes, :data:`CHUNK` features
    at a time."""
    batch, width = r.shape
    norms = []
    for start in range(0, width, CHUNK):
        index = torch.arange(start, min(start + CHUNK, width), device=r.device)
        seeds = torch.zeros(len(index), batch, width, dtype=r.dtype, device=r.device)
        seeds[torch.arange(len(index), device=r.device), :, index] = 1
        (jac,) = torch.autograd.grad(r, x, grad_outputs=seeds, retain_graph=True, is_grads_batched=True)
        norms.append(jac.flatten(2).norm(dim=2).T)  # B×chunk
    norm = torch.cat(norms, dim=1)
    magnitude = r.detach().abs()
    ratio = torch.where(magnitude > 0, norm / torch.where(magnitude > 0, magnitude, 1), 0)
    return ratio.sum(0)


def pruned_columns(scores: Tensor, rate: float) -> Tensor:
    """The boolean mask of features with score below the ``rate``-th percentile (numpy's linear
    method, in float64): the columns Soteria zeroes."""
    q = scores.detach().to(torch.float32 if scores.device.type == "mps" else torch.float64)
    return q < percentile(q, rate)


@register("soteria")
class Soteria(GradientDefense):
    """Each gradient the client trains on is the batch gradient with the representation layer's
    weight columns of the ``rate`` % lowest q_i (module docstring) set to zero."""

    Config = SoteriaConfig
    config: SoteriaConfig
    matching = "masked"  # the zeroed columns say nothing about the gradient there
    matching_priority = 1

    def gradient(self, generator: torch.Generator) -> Gradient:
        cfg = self.config

        def soteria_gradient(model: nn.Module, inputs: Tensor, labels: Tensor) -> Update:
            name, layer = representation_layer(model, cfg.layer)
            seen: list[Tensor] = []
            hook = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
            x = inputs.detach().requires_grad_(True)
            try:
                loss = F.cross_entropy(model(x), labels)
            finally:
                hook.remove()
            extra = extra_loss(model)
            if extra is not None:
                loss = loss + extra
            if len(seen) != 1 or seen[0].ndim != 2:
                raise ConfigError(f"soteria: layer {name!r} must be called once per forward on a batch of "
                                  f"feature vectors (B×d)")
            named = trainable(model)
            grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True)
            update = {n: g.detach() for (n, _), g in zip(named, grads)}
            weight = f"{name}.weight" if name else "weight"
            if weight in update and cfg.rate > 0:
                prune = pruned_columns(feature_scores(seen[0], x), cfg.rate)
                update[weight] = torch.where(prune[None, :], torch.zeros_like(update[weight]), update[weight])
            return update

        return soteria_gradient
