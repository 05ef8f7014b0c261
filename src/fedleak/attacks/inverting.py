"""Inverting Gradients (Geiping et al., NeurIPS 2020), with Lim & Chan's settings available.

Minimise cost(simulated update(x*, y), observed update) + α·TV(x*) over x* with Adam, the
3/8-5/8-7/8 step schedule, signed gradients and an optional box constraint to the valid pixel range.
All restarts run as one batched optimisation (``torch.func.vmap`` over trials); the winner is the
restart with the lowest final matching loss — never the one most similar to the truth.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from fedleak.attacks.base import ATTACKS, Attack, AttackerKnowledge, Reconstruction
from fedleak.attacks.labels import recover_labels
from fedleak.attacks.matching import GradientMatching, MatchingConfig
from fedleak.attacks.optimization import (INITS, best_restart, box_bounds, optimize, step_milestones,
                                          to_unit_range)
from fedleak.attacks.regularizers import REGULARIZERS
from fedleak.device import generator, payload_device
from fedleak.fl.payload import Payload


class InvertingGradientsConfig(MatchingConfig):
    iterations: int = Field(1200, ge=1, description="optimisation steps")
    lr: float = Field(0.1, gt=0, description="Adam learning rate")
    schedule: Literal["step", "none"] = Field("step", description="lr × 0.1 at 3/8, 5/8, 7/8")
    signed: bool = Field(True, description="step on the sign of the image gradient")
    boxed: bool = Field(True, description="clamp to the valid pixel range after each step")
    tv: float = Field(1e-3, ge=0, description="total-variation weight α")
    regularizers: dict[str, float] = Field(default_factory=dict, description="extra priors: name → weight")

    @field_validator("regularizers")
    @classmethod
    def _regs(cls, v: dict[str, float]) -> dict[str, float]:
        for name in v:
            REGULARIZERS.check(name)
        return v


@ATTACKS.register("ig")
class InvertingGradients(Attack):
    Config = InvertingGradientsConfig
    config: InvertingGradientsConfig
    name = "ig"

    def run(
        self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False
    ) -> Reconstruction:
        cfg = self.config
        labels = recover_labels(payload, knowledge, cfg.labels)
        priors = {"tv": cfg.tv, **cfg.regularizers} if cfg.tv else dict(cfg.regularizers)
        objective = GradientMatching(payload, knowledge, cfg.cost, cfg.layers, cfg.layer_count, priors,
                                     cfg.matching)
        device = payload_device(payload)
        lower, upper = box_bounds(knowledge.mean, knowledge.std, device)
        shape = (cfg.restarts, payload.hyper.observed_images, *knowledge.input_shape)
        x = INITS.get(cfg.init)(shape, generator(seed, device)).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=cfg.lr)
        milestones = step_milestones(cfg.iterations) if cfg.schedule == "step" else []
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)

        def step() -> torch.Tensor:
            gx, match = objective.image_gradients(x, labels)
            x.grad = gx.sign() if cfg.signed else gx
            optimizer.step()
            scheduler.step()
            if cfg.boxed:
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, upper), lower))
            return match

        trace, done = optimize(step, cfg.iterations, cfg.patience, cfg.min_delta, progress, self.name,
                               cfg.log_every)
        final = objective.matching_losses(x.detach(), labels)
        winner = best_restart(final)
        images = to_unit_range(x[winner], knowledge.mean, knowledge.std)
        return Reconstruction.from_restarts(images, labels, final, winner, trace, done)
