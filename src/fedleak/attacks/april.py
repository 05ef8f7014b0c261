"""APRIL (Lu et al., CVPR 2022: "APRIL: Finding the Achilles' Heel on Privacy for Vision Transformers").

A ViT's learnable position embedding is added to the first block's input z, so its gradient is ∂L/∂z.
Two variants (``variant``):

- ``closed-form`` (one image): solve the linear system that ∂L/∂E_pos and a linear layer's weight
  gradient give (:mod:`fedleak.attacks.april_solve`): ``via=embedding`` through the first block's
  ``qkv`` layer for z, then the patch embedding's pseudo-inverse to pixels (the paper's derivation;
  needs a ViT built with ``first_block=plain``), ``via=patch`` through the patch embedding directly
  (exact on every ViT here), ``auto``: embedding where the model fits it, else patch. A batch, a model
  that is not a ViT, or a rank-deficient system is refused with one line.
- ``optimization`` (any batch): Inverting Gradients' optimisation (:mod:`fedleak.attacks.inverting`)
  with APRIL's attention term added to the objective, α·(1 − cos(∂L/∂E_pos(x*), observed ∂L/∂E_pos)).
  Restarts are scored by that whole loss.

``labels`` defaults to ``bias``, registered here: the last layer's bias gradient, softmax − one-hot
for cross-entropy, negative only at the label of each image; iDLG's weight-row sums assume non-negative
features, which a ViT's final LayerNorm does not give.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from fedleak.attacks.april_solve import (
    ILL_CONDITIONED,
    bias_check,
    embedding_from_first_linear,
    image_from_patches,
    patches_from_embedding,
    patches_from_patch_embedding,
)
from fedleak.attacks.base import AttackerKnowledge, Reconstruction, register_attack, target_model
from fedleak.attacks.engine import Variable
from fedleak.attacks.inverting import InvertingGradients, InvertingGradientsConfig
from fedleak.attacks.labels import LABEL_METHODS, recover_labels
from fedleak.attacks.matching import GradientMatching
from fedleak.attacks.objectives import COSTS
from fedleak.attacks.optimization import step_milestones
from fedleak.device import payload_device
from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload
from fedleak.models.vit import VisionTransformer

POS, PATCH, QKV = "pos_embed", "patch_embed", "blocks.0.attn.qkv"


@LABEL_METHODS.register("bias")
def bias_labels(payload: Payload, num_classes: int) -> Tensor:
    """The B classes with the most negative entries of the last bias gradient (1-D, one entry per
    class): ∂L/∂b = mean(softmax − one-hot) is negative only at the labels when each image's own class
    probability is below 1 − Σ of the others' (always for B = 1). Assumes no repeated label."""
    b = payload.hyper.observed_images
    bias = next((t for t in reversed(list(payload.update.values())) if t.ndim == 1 and t.numel() == num_classes),
                None)
    if bias is None:
        raise FedleakError("bias label recovery needs a final linear layer with a bias, one entry per class")
    if b > num_classes:
        raise FedleakError(f"bias label recovery needs batch ≤ classes ({b} > {num_classes})")
    return torch.sort(torch.argsort(bias)[:b]).values


class AprilConfig(InvertingGradientsConfig):
    variant: Literal["closed-form", "optimization"] = Field(
        "closed-form", description="closed-form (one image, exact) | optimization (any batch)")
    via: Literal["auto", "embedding", "patch"] = Field(
        "auto", description="closed form's linear layer: embedding (first block's qkv, needs first_block=plain) "
        "| patch (the patch embedding) | auto (embedding where the model fits, else patch)")
    alpha: float = Field(1.0, ge=0, description="weight α of the position-embedding term (optimization)")
    labels: str = Field("bias", description="label recovery when labels are not known: bias | auto | idlg | yin "
                        "| wainakh")


class PositionMatching(GradientMatching):
    """IG's matching cost plus α·(1 − cos(simulated ∂L/∂E_pos, observed ∂L/∂E_pos)) (APRIL's attention term)."""

    def __init__(self, payloads: Sequence[Payload], knowledges: Sequence[AttackerKnowledge], alpha: float,
                 *args: Any) -> None:
        self.alpha, self.position = alpha, COSTS.get("cosine")
        super().__init__(payloads, knowledges, *args)

    def _prepare(self, payload: Payload, knowledge: AttackerKnowledge) -> dict[str, Any]:
        if POS not in payload.update:
            raise FedleakError(f"APRIL's attention term needs the update of the position embedding {POS!r}")
        return {**super()._prepare(payload, knowledge), "pos": self.position.prepare([payload.update[POS]])}

    def _match(self, x: Tensor, labels: Tensor, data: dict[str, Any], batched: bool,
               observe: bool) -> tuple[Tensor, Any]:
        update, seen = self.simulation.update_and_statistics(x, labels, batched, observe)
        simulated = self.matching.view([update[n] for n in self.names], data["view"])
        cost = self.cost.evaluate(simulated, data["cost"])
        return cost + self.alpha * self.position.evaluate([update[POS]], data["pos"]), seen


def vit_of(payload: Payload, knowledge: AttackerKnowledge) -> VisionTransformer:
    """The attacker's copy of the target, which must be one of fedleak's ViTs."""
    model = target_model(payload, knowledge)
    if not isinstance(model, VisionTransformer):
        raise FedleakError(f"APRIL needs a vision transformer with a learnable position embedding (model vit, "
                           f"vit_tiny or vit_b_16); the target is a {type(model).__name__}")
    return model


@register_attack("april")
class April(InvertingGradients):
    """APRIL (Lu et al. 2022): one image in closed form from a ViT's position-embedding gradient."""

    Config = AprilConfig
    config: AprilConfig

    def run_many(self, payloads: Sequence[Payload], knowledges: Sequence[AttackerKnowledge],
                 seeds: Sequence[int], progress: bool = False) -> list[Reconstruction]:
        if self.config.variant == "optimization":
            return super().run_many(payloads, knowledges, seeds, progress)
        return [self.closed_form(p, k) for p, k in zip(payloads, knowledges)]

    def route(self, model: VisionTransformer) -> str:
        """The closed form's linear layer for ``model``: the config's, checked, or auto's choice."""
        via, plain = self.config.via, model.first_block == "plain"
        if via == "embedding" and not plain:
            raise FedleakError("APRIL via=embedding needs z to feed the first qkv layer alone (model option "
                               "first_block=plain); in a pre-norm block z also passes a LayerNorm and the "
                               "residual, so ∂L/∂E_pos ≠ W_qkvᵀ∂L/∂qkv: use attack.via=patch")
        return via if via != "auto" else ("embedding" if plain else "patch")

    def closed_form(self, payload: Payload, knowledge: AttackerKnowledge) -> Reconstruction:
        """One image from ∂L/∂E_pos and one linear layer's weight gradient (see the module docstring)."""
        start = time.perf_counter()
        if payload.hyper.observed_images != 1:
            raise FedleakError(f"APRIL's closed form recovers one image, the update stands for "
                               f"{payload.hyper.observed_images}: use attack.variant=optimization for a batch")
        model = vit_of(payload, knowledge)
        via = self.route(model)
        needed = [POS, f"{PATCH}.weight", f"{PATCH}.bias"] + ([f"{QKV}.weight"] if via == "embedding" else [])
        missing = [n for n in needed if n not in payload.update]
        if missing:
            raise FedleakError(f"APRIL needs the update of {', '.join(missing)}, which the payload does not hold")
        update = payload.update
        g_pos = update[POS][0]
        conditions: list[float] = []
        if via == "patch":
            patches = patches_from_patch_embedding(g_pos, update[f"{PATCH}.weight"], conditions)
        else:
            z = embedding_from_first_linear(g_pos, update[f"{QKV}.weight"], model.first_qkv.weight.detach(),
                                            conditions)
            patches = patches_from_embedding(z, model, conditions)
        x = image_from_patches(patches, model, knowledge.input_shape[0]).view(1, *knowledge.input_shape)
        worst = max(conditions)
        notes = [f"APRIL closed form via the {'first qkv layer' if via == 'embedding' else 'patch embedding'}; "
                 f"condition number {worst:.1e}; the patch bias gradient departs from Σ∂L/∂E_pos by "
                 f"{bias_check(g_pos, update[f'{PATCH}.bias']):.1e} (relative; 0 for a plain one-step update)"]
        if worst > ILL_CONDITIONED:
            notes.append(f"ill-conditioned system ({worst:.1e}): float32 rounding in the update may show in the image")
        hyper = payload.hyper
        if hyper.protocol == "fedavg" and (hyper.local_steps > 1 or hyper.optimizer != "sgd"):
            notes.append(f"FedAvg with {hyper.local_steps} {hyper.optimizer} step(s): the update is not a multiple "
                         f"of one gradient, the solution is approximate")
        return Reconstruction(images=knowledge.normalization.to_pixels(x), labels=recover_labels(
            payload, knowledge, self.config.labels), matching_loss=0.0, restart_losses=[0.0], iterations=0,
            seconds=time.perf_counter() - start, notes=notes)

    def attack_group(self, payloads: list[Payload], knowledges: list[AttackerKnowledge], seeds: list[int],
                     progress: bool) -> list[Reconstruction]:
        """IG's optimisation (:class:`~fedleak.attacks.inverting.InvertingGradients`) on
        :class:`PositionMatching`."""
        cfg, knowledge = self.config, knowledges[0]
        vit_of(payloads[0], knowledge)
        labels = self.labels(payloads, knowledges)
        regularizers = {"tv": cfg.tv, **cfg.regularizers} if cfg.tv else dict(cfg.regularizers)
        objective = PositionMatching(payloads, knowledges, cfg.alpha, cfg.cost, cfg.layers, cfg.layer_count,
                                     regularizers, cfg.matching)
        norm = knowledge.normalization
        lower, upper = norm.bounds(payload_device(payloads[0]))
        x = self.initial(payloads, seeds, (cfg.restarts, payloads[0].hyper.observed_images, *knowledge.input_shape))
        optimizer = torch.optim.Adam([x], lr=cfg.lr)
        milestones = step_milestones(cfg.iterations) if cfg.schedule == "step" else []
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)

        def box(value: Tensor) -> None:
            if cfg.boxed:
                value.copy_(torch.maximum(torch.minimum(value, upper), lower))

        variable = Variable(x, grad_transform=torch.sign if cfg.signed else (lambda g: g), project=box)
        return self.optimize(objective, variable, labels, optimizer, scheduler, progress,
                             lambda p, winner: norm.to_pixels(x[p, winner]))
