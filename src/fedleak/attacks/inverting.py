"""Inverting Gradients (Geiping et al., NeurIPS 2020), with Lim & Chan's settings available.

Minimise cost(simulated update(x*, y), observed update) + α·TV(x*) over x* with Adam, the
3/8-5/8-7/8 step schedule, signed gradients and an optional box constraint to the valid pixel range.
All restarts — and, through :meth:`~fedleak.attacks.base.Attack.run_many`, many independent
payloads — run as one batched optimisation (``torch.func.vmap`` over payloads and trials, see
:mod:`fedleak.attacks.engine`); each payload's winner is its restart with the lowest final matching
loss — never the one most similar to the truth.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from fedleak.attacks.base import AttackerKnowledge, Reconstruction, register_attack
from fedleak.attacks.engine import BatchedMatching, Variable
from fedleak.attacks.matching import GradientMatching, MatchingConfig
from fedleak.attacks.optimization import step_milestones
from fedleak.attacks.regularizers import REGULARIZERS
from fedleak.device import payload_device
from fedleak.fl.payload import Payload


class InvertingGradientsConfig(MatchingConfig):
    iterations: int = Field(1200, ge=1, description="optimisation steps")
    lr: float = Field(0.1, gt=0, description="Adam learning rate")
    schedule: Literal["step", "none"] = Field("step", description="lr × 0.1 at 3/8, 5/8, 7/8")
    signed: bool = Field(True, description="step on the sign of the image gradient")
    boxed: bool = Field(True, description="clamp to the valid pixel range after each step")
    tv: float = Field(1e-3, ge=0, description="total-variation weight α")
    regularizers: dict[str, float] = Field(default_factory=dict, description="extra image regularisers (tv, l2, bn): name → weight")

    @field_validator("regularizers")
    @classmethod
    def _regs(cls, v: dict[str, float]) -> dict[str, float]:
        for name in v:
            REGULARIZERS.check(name)
        return v


@register_attack("ig")
class InvertingGradients(BatchedMatching):
    Config = InvertingGradientsConfig
    config: InvertingGradientsConfig

    def attack_group(self, payloads: list[Payload], knowledges: list[AttackerKnowledge], seeds: list[int],
                     progress: bool) -> list[Reconstruction]:
        cfg, knowledge = self.config, knowledges[0]
        labels = self.labels(payloads, knowledges)
        regularizers = {"tv": cfg.tv, **cfg.regularizers} if cfg.tv else dict(cfg.regularizers)
        objective = GradientMatching(payloads, knowledges, cfg.cost, cfg.layers, cfg.layer_count, regularizers,
                                     cfg.matching)
        norm = knowledge.normalization
        lower, upper = norm.bounds(payload_device(payloads[0]))
        x = self.initial(payloads, seeds, (cfg.restarts, payloads[0].hyper.observed_images, *knowledge.input_shape))
        optimizer = torch.optim.Adam([x], lr=cfg.lr)
        milestones = step_milestones(cfg.iterations) if cfg.schedule == "step" else []
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)

        def box(value: torch.Tensor) -> None:
            if cfg.boxed:
                value.copy_(torch.maximum(torch.minimum(value, upper), lower))

        variable = Variable(x, grad_transform=torch.sign if cfg.signed else (lambda g: g), project=box)
        return self.optimize(objective, variable, labels, optimizer, scheduler, progress,
                             lambda p, winner: norm.to_pixels(x[p, winner]))
