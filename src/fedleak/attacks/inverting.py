"""Inverting Gradients (Geiping et al., NeurIPS 2020), with Lim & Chan's settings available.

Minimise cost(∇θL(x*, y), g) + α·TV(x*) over x* with Adam, the 3/8-5/8-7/8 step schedule, signed
gradients and an optional box constraint to the valid pixel range; several random restarts, the winner
chosen by the final matching loss (never by similarity to the truth).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from fedleak.attacks.base import ATTACKS, Attack, AttackConfig, AttackerKnowledge, Reconstruction
from fedleak.attacks.base import observed_update, target_model
from fedleak.attacks.labels import LABEL_METHODS
from fedleak.attacks.objectives import COSTS
from fedleak.attacks.optimization import (
    INITS,
    Trace,
    box_bounds,
    simulated_gradient,
    step_milestones,
    to_unit_range,
)
from fedleak.attacks.regularizers import total_variation
from fedleak.fl.payload import Payload


class InvertingGradientsConfig(AttackConfig):
    iterations: int = Field(1200, ge=1, description="optimisation steps per restart")
    lr: float = Field(0.1, gt=0, description="Adam learning rate")
    schedule: Literal["step", "none"] = Field("step", description="lr × 0.1 at 3/8, 5/8, 7/8")
    signed: bool = Field(True, description="step on the sign of the image gradient")
    boxed: bool = Field(True, description="clamp to the valid pixel range after each step")
    tv: float = Field(1e-3, ge=0, description="total-variation weight α")
    cost: str = Field("cosine", description="matching cost: cosine | l2")
    init: str = Field("randn", description="initialisation: randn | rand | zeros")
    restarts: int = Field(1, ge=1, description="random restarts; the lowest matching loss wins")
    labels: str = Field("idlg", description="label recovery when labels are not known")

    _cost = field_validator("cost")(lambda v: COSTS.check(v))
    _init = field_validator("init")(lambda v: INITS.check(v))
    _labels = field_validator("labels")(lambda v: LABEL_METHODS.check(v))


@ATTACKS.register("ig")
class InvertingGradients(Attack):
    Config = InvertingGradientsConfig
    config: InvertingGradientsConfig

    def run(
        self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False
    ) -> Reconstruction:
        cfg = self.config
        model = target_model(payload, knowledge)
        params, targets = observed_update(payload, model)
        labels = (
            knowledge.labels
            if knowledge.labels is not None
            else LABEL_METHODS.get(cfg.labels)(payload, knowledge.num_classes)
        )
        cost = COSTS.get(cfg.cost)
        lower, upper = box_bounds(knowledge.mean, knowledge.std)
        shape = (payload.hyper.batch_size, *knowledge.input_shape)
        generator = torch.Generator().manual_seed(seed)
        trace = Trace(cfg.iterations * cfg.restarts)
        bar = tqdm(total=cfg.iterations * cfg.restarts, disable=not progress, desc="ig", unit="it",
                   leave=False, dynamic_ncols=True)
        best_x, best_loss, losses = None, float("inf"), []
        for restart in range(cfg.restarts):
            x = INITS.get(cfg.init)(shape, generator).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=cfg.lr)
            milestones = step_milestones(cfg.iterations) if cfg.schedule == "step" else []
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
            for it in range(cfg.iterations):
                match = cost(simulated_gradient(model, params, x, labels), targets)
                loss = match + cfg.tv * total_variation(x) if cfg.tv else match
                (grad,) = torch.autograd.grad(loss, x)
                x.grad = grad.sign() if cfg.signed else grad
                optimizer.step()
                scheduler.step()
                if cfg.boxed:
                    with torch.no_grad():
                        x.copy_(torch.maximum(torch.minimum(x, upper), lower))
                value = float(match.detach())
                trace.record(restart, it, value)
                bar.update(1)
                bar.set_postfix(restart=restart, loss=f"{value:.4f}", refresh=False)
            final = float(cost(simulated_gradient(model, params, x, labels), targets).detach())
            trace.record(restart, cfg.iterations, final, last=True)
            losses.append(final)
            if final < best_loss or best_x is None:
                best_x, best_loss = x.detach().clone(), final
        bar.close()
        return Reconstruction(
            images=to_unit_range(best_x, knowledge.mean, knowledge.std),
            labels=labels.detach().clone(),
            matching_loss=best_loss,
            restart_losses=losses,
            iterations=cfg.iterations,
            seconds=trace.seconds,
            trace=trace.rows,
        )
