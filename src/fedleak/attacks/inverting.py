"""Inverting Gradients (Geiping et al., NeurIPS 2020), with Lim & Chan's settings available.

Minimise cost(simulated update(x*, y), observed update) + α·TV(x*) over x* with Adam, the
3/8-5/8-7/8 step schedule, signed gradients and an optional box constraint to the valid pixel range.
All restarts — and, through :meth:`~fedleak.attacks.base.Attack.run_many`, many independent
payloads — run as one batched optimisation (``torch.func.vmap`` over payloads and trials, see
:mod:`fedleak.attacks.engine`); each payload's winner is its restart with the lowest final matching
loss — never the one most similar to the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, field_validator

from fedleak.attacks.base import ATTACKS, Attack, AttackerKnowledge, Reconstruction
from fedleak.attacks.engine import Variable, groups, optimize_variable
from fedleak.attacks.labels import recover_labels
from fedleak.attacks.matching import GradientMatching, MatchingConfig
from fedleak.attacks.optimization import (INITS, best_restart, box_bounds, matmul_precision, step_milestones,
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
        return self.run_many([payload], [knowledge], [seed], progress)[0]

    def run_many(self, payloads: Sequence[Payload], knowledges: Sequence[AttackerKnowledge],
                 seeds: Sequence[int], progress: bool = False) -> list[Reconstruction]:
        cfg = self.config
        results: dict[int, Reconstruction] = {}
        with matmul_precision(cfg.precision):
            for members in groups(payloads, knowledges, cfg.layers, cfg.layer_count):
                done = self._group([payloads[i] for i in members], [knowledges[i] for i in members],
                                   [seeds[i] for i in members], progress)
                results.update(zip(members, done))
        return [results[i] for i in range(len(payloads))]

    def _group(self, payloads: list[Payload], knowledges: list[AttackerKnowledge], seeds: list[int],
               progress: bool) -> list[Reconstruction]:
        cfg, knowledge = self.config, knowledges[0]
        labels = torch.stack([recover_labels(p, k, cfg.labels) for p, k in zip(payloads, knowledges)])
        priors = {"tv": cfg.tv, **cfg.regularizers} if cfg.tv else dict(cfg.regularizers)
        objective = GradientMatching(payloads, knowledges, cfg.cost, cfg.layers, cfg.layer_count, priors,
                                     cfg.matching)
        device = payload_device(payloads[0])
        lower, upper = box_bounds(knowledge.mean, knowledge.std, device)
        shape = (cfg.restarts, payloads[0].hyper.observed_images, *knowledge.input_shape)
        init = INITS.get(cfg.init)
        x = torch.stack([init(shape, generator(seed, device)) for seed in seeds]).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=cfg.lr)
        milestones = step_milestones(cfg.iterations) if cfg.schedule == "step" else []
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)

        def box(value: torch.Tensor) -> None:
            if cfg.boxed:
                value.copy_(torch.maximum(torch.minimum(value, upper), lower))

        variable = Variable(x, grad_transform=torch.sign if cfg.signed else (lambda g: g), project=box)
        outcomes = optimize_variable(objective, variable, labels, optimizer, scheduler, cfg.iterations,
                                     cfg.patience, cfg.min_delta, cfg.chunk, progress, self.name, cfg.log_every)
        reconstructions = []
        for p, outcome in enumerate(outcomes):
            winner = best_restart(outcome.final)
            images = to_unit_range(x[p, winner], knowledge.mean, knowledge.std)
            reconstructions.append(Reconstruction.from_restarts(images, labels[p], outcome.final, winner,
                                                                outcome.trace, outcome.iterations))
        return reconstructions
