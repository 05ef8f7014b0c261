"""Inverting Gradients (Geiping et al., NeurIPS 2020), with Lim & Chan's settings available.

Minimise cost(simulated update(x*, y), observed update) + α·TV(x*) over x* with Adam, the
3/8-5/8-7/8 step schedule, signed gradients and an optional box constraint to the valid pixel range.
All restarts — and, through :meth:`~fedleak.attacks.base.Attack.run_many`, many independent
payloads — run as one batched optimisation (``torch.func.vmap`` over payloads and trials, see
:mod:`fedleak.attacks.engine`); each payload's winner is its restart with the lowest final matching
loss — never the one most similar to the truth.

Two settings buy quality per second on a CPU (``benchmarks/time_to_quality.py`` measures them):
``halving`` — successive halving of the restarts: at each given fraction of the iterations the worse
half by matching loss is dropped and no longer computed (:mod:`fedleak.attacks.engine`), so 8
restarts cost little more than 2 — and ``coarse`` — coarse-to-fine, ROG's low-resolution variable
used as a warm start: for the first ``share`` of the iterations the variable is the image at
``scale`` × the resolution (normalised input units), bilinearly upsampled into the model, at the
constant lr; it is then upsampled (:func:`warm_start`, boxed) and optimised at full resolution, with
the lr schedule over the remaining iterations and a fresh Adam state. Neither is on by default.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedleak.attacks.base import AttackerKnowledge, Reconstruction, register_attack
from fedleak.attacks.engine import BatchedMatching, Stage, Variable
from fedleak.attacks.matching import GradientMatching, MatchingConfig
from fedleak.attacks.optimization import step_milestones
from fedleak.attacks.regularizers import REGULARIZERS
from fedleak.device import payload_device
from fedleak.errors import ConfigError
from fedleak.fl.payload import Payload


class CoarseConfig(BaseModel):
    """Coarse-to-fine: the first ``share`` of the iterations at ``scale`` × the resolution."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    scale: float = Field(0.5, gt=0, lt=1, description="resolution of the coarse stage, a fraction of the image's")
    share: float = Field(0.3, gt=0, lt=1, description="fraction of the iterations spent at the coarse resolution")


def upsample(value: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling (half-pixel centres, ``align_corners=False``) of the last two dimensions of
    ``value`` (…×C×h×w) to ``size``."""
    lead = value.shape[:-3]
    out = F.interpolate(value.reshape(-1, *value.shape[-3:]), size=size, mode="bilinear", align_corners=False)
    return out.view(*lead, *out.shape[-3:])


def warm_start(low: torch.Tensor, size: tuple[int, int], lower: torch.Tensor | None = None,
               upper: torch.Tensor | None = None) -> torch.Tensor:
    """The full-resolution starting point of coarse-to-fine: the coarse candidates ``low`` (…×C×h×w,
    normalised input units) bilinearly upsampled to ``size`` and, given the box (``lower``/``upper``,
    broadcastable per channel), clamped to it; a new leaf."""
    x = upsample(low.detach(), size)
    if lower is not None and upper is not None:
        x = torch.maximum(torch.minimum(x, upper), lower)
    return x.clone().requires_grad_(True)


class InvertingGradientsConfig(MatchingConfig):
    iterations: int = Field(1200, ge=1, description="optimisation steps")
    lr: float = Field(0.1, gt=0, description="Adam learning rate")
    schedule: Literal["step", "none"] = Field("step", description="lr × 0.1 at 3/8, 5/8, 7/8")
    signed: bool = Field(True, description="step on the sign of the image gradient")
    boxed: bool = Field(True, description="clamp to the valid pixel range after each step")
    tv: float = Field(1e-3, ge=0, description="total-variation weight α")
    regularizers: dict[str, float] = Field(default_factory=dict, description="extra image regularisers (tv, l2, bn): name → weight")
    halving: list[float] = Field(default_factory=list, description="successive halving of the restarts: at each of "
                                 "these fractions of the iterations (e.g. [0.125, 0.25, 0.5]) drop the worse half "
                                 "by matching loss (empty: keep every restart to the end)")
    coarse: CoarseConfig | None = Field(None, description="coarse-to-fine warm start, e.g. {scale: 0.5, share: 0.3} "
                                        "(unset: full resolution throughout)")

    @field_validator("halving")
    @classmethod
    def _halving(cls, v: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in v) or sorted(set(v)) != v:
            raise ValueError(f"halving takes increasing fractions of the iterations in (0, 1), got {v}")
        return v

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
        c, h, w = knowledge.input_shape
        lead = (cfg.restarts, payloads[0].hyper.observed_images)

        def box(value: torch.Tensor) -> None:
            if cfg.boxed:
                value.copy_(torch.maximum(torch.minimum(value, upper), lower))

        grad_transform = torch.sign if cfg.signed else (lambda g: g)

        def fine(previous: torch.Tensor | None, iterations: int) -> tuple[Variable, torch.optim.Optimizer, object]:
            x = (self.initial(payloads, seeds, (*lead, c, h, w)) if previous is None
                 else warm_start(previous, (h, w), *((lower, upper) if cfg.boxed else (None, None))))
            optimizer = torch.optim.Adam([x], lr=cfg.lr)
            milestones = step_milestones(iterations) if cfg.schedule == "step" else []
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
            return Variable(x, grad_transform=grad_transform, project=box), optimizer, scheduler

        stages = [Stage(cfg.iterations, lambda previous: fine(previous, cfg.iterations))]
        if cfg.coarse is not None:
            low = (max(1, round(h * cfg.coarse.scale)), max(1, round(w * cfg.coarse.scale)))
            first = int(cfg.iterations * cfg.coarse.share)
            if not 1 <= first < cfg.iterations:
                raise ConfigError(f"attack.coarse.share {cfg.coarse.share} of {cfg.iterations} iterations leaves "
                                  "no coarse or no full-resolution step")

            def coarse(_: torch.Tensor | None) -> tuple[Variable, torch.optim.Optimizer, object]:
                z = self.initial(payloads, seeds, (*lead, c, *low))
                to_input = lambda value: upsample(value, (h, w))  # noqa: E731
                return Variable(z, to_input, grad_transform, box), torch.optim.Adam([z], lr=cfg.lr), None

            rest = cfg.iterations - first
            stages = [Stage(first, coarse), Stage(rest, lambda previous: fine(previous, rest))]
        return self.optimize_stages(objective, labels, stages, progress,
                                    lambda p, winner, variable: norm.to_pixels(variable.value[p, winner]),
                                    cfg.halving)
