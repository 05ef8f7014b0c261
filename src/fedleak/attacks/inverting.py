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
from tqdm.auto import tqdm

from fedleak.attacks.base import ATTACKS, Attack, AttackerKnowledge, OptimizationConfig, Reconstruction
from fedleak.attacks.labels import LABEL_METHODS, recover_labels
from fedleak.attacks.layers import LAYER_SELECTIONS
from fedleak.attacks.matching import GradientMatching
from fedleak.attacks.optimization import INITS, EarlyStop, Trace, box_bounds, step_milestones, to_unit_range
from fedleak.attacks.regularizers import REGULARIZERS
from fedleak.fl.payload import Payload


class InvertingGradientsConfig(OptimizationConfig):
    iterations: int = Field(1200, ge=1, description="optimisation steps")
    lr: float = Field(0.1, gt=0, description="Adam learning rate")
    schedule: Literal["step", "none"] = Field("step", description="lr × 0.1 at 3/8, 5/8, 7/8")
    signed: bool = Field(True, description="step on the sign of the image gradient")
    boxed: bool = Field(True, description="clamp to the valid pixel range after each step")
    tv: float = Field(1e-3, ge=0, description="total-variation weight α")
    regularizers: dict[str, float] = Field(default_factory=dict, description="extra priors: name → weight")
    layers: str = Field("all", description="all | largest-norm | first | last")
    layer_count: int | None = Field(None, ge=1, description="k for largest-norm / first / last")
    labels: str = Field("idlg", description="label recovery when labels are not known")

    _labels = field_validator("labels")(lambda v: LABEL_METHODS.check(v))
    _layers = field_validator("layers")(lambda v: LAYER_SELECTIONS.check(v))

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
        objective = GradientMatching(payload, knowledge, cfg.cost, cfg.layers, cfg.layer_count, priors)
        lower, upper = box_bounds(knowledge.mean, knowledge.std)
        shape = (cfg.restarts, payload.hyper.batch_size, *knowledge.input_shape)
        x = INITS.get(cfg.init)(shape, torch.Generator().manual_seed(seed)).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=cfg.lr)
        milestones = step_milestones(cfg.iterations) if cfg.schedule == "step" else []
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        trace, stop = Trace(cfg.iterations), EarlyStop(cfg.patience, cfg.min_delta)
        bar = tqdm(total=cfg.iterations, disable=not progress, desc=self.name, unit="it", leave=False)
        done = cfg.iterations
        for it in range(cfg.iterations):
            gx, match = objective.image_gradients(x, labels)
            x.grad = gx.sign() if cfg.signed else gx
            optimizer.step()
            scheduler.step()
            if cfg.boxed:
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, upper), lower))
            best = float(match.min())
            trace.record(it, loss=best, mean_loss=float(match.mean()))
            bar.update(1)
            bar.set_postfix(loss=f"{best:.4f}", refresh=False)
            if stop(best):
                done = it + 1
                break
        bar.close()
        final = objective.matching_losses(x.detach(), labels)
        winner = int(torch.argmin(final))
        trace.record(done, last=True, loss=float(final[winner]), mean_loss=float(final.mean()))
        return Reconstruction(
            images=to_unit_range(x[winner], knowledge.mean, knowledge.std),
            labels=labels.detach().clone(),
            matching_loss=float(final[winner]),
            restart_losses=final.tolist(),
            iterations=done,
            seconds=trace.seconds,
            trace=trace.rows,
        )
