"""DLG (Zhu et al., NeurIPS 2019) and iDLG (Zhao et al., 2020).

DLG minimises the squared L2 distance between simulated and observed update with L-BFGS, optimising
the images and soft labels jointly. iDLG first reads the label off the last layer's gradient and
optimises the images only. L-BFGS keeps curvature across all its variables, so restarts run one after
another here (batching them would couple their line searches); the winner has the lowest matching loss.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from fedleak.attacks.base import Attack, AttackerKnowledge, OptimizationConfig, Reconstruction, register_attack
from fedleak.attacks.labels import LABEL_METHODS, recover_labels
from fedleak.attacks.matching import GradientMatching
from fedleak.attacks.optimization import INITS, EarlyStop, Trace, best_restart, matmul_precision
from fedleak.device import payload_device
from fedleak.fl.payload import Payload

JOINT = "joint"


class DLGConfig(OptimizationConfig):
    iterations: int = Field(300, ge=1, description="L-BFGS steps")
    inner_steps: int = Field(20, ge=1, description="L-BFGS max_iter per step")
    lr: float = Field(1.0, gt=0, description="L-BFGS learning rate")
    history_size: int = Field(100, ge=1, description="L-BFGS memory")
    cost: str = Field("l2", description="matching cost: l2 | cosine")
    init: str = Field("rand", description="initialisation: rand | randn | zeros")
    labels: str = Field(JOINT, description="joint (optimise soft labels) or a recovery method")

    _labels = field_validator("labels")(lambda v: v if v == JOINT else LABEL_METHODS.check(v))


@register_attack("dlg")
class DLG(Attack[DLGConfig]):

    def run(self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False) -> Reconstruction:
        with matmul_precision(self.config.precision):
            return self._run(payload, knowledge, seed, progress)

    def _run(self, payload: Payload, knowledge: AttackerKnowledge, seed: int, progress: bool) -> Reconstruction:
        cfg = self.config
        joint = cfg.labels == JOINT and knowledge.labels is None
        fixed = None if joint else recover_labels(payload, knowledge, cfg.labels)
        objective = GradientMatching(payload, knowledge, cfg.cost)
        b, k = payload.hyper.observed_images, knowledge.num_classes
        device = payload_device(payload)
        generator = torch.Generator(device=device).manual_seed(seed)
        trace = Trace(cfg.iterations * cfg.restarts)
        bar = tqdm(total=cfg.iterations * cfg.restarts, disable=not progress, desc=self.name, leave=False)
        candidates, losses, done = [], [], 0
        for restart in range(cfg.restarts):
            x = INITS.get(cfg.init)((b, *knowledge.input_shape), generator).requires_grad_(True)
            logits = torch.randn(b, k, generator=generator, device=device).requires_grad_(True)
            variables = [x, logits] if joint else [x]
            optimizer = torch.optim.LBFGS(variables, lr=cfg.lr, max_iter=cfg.inner_steps,
                                          history_size=cfg.history_size)

            def labels_now() -> torch.Tensor:
                return torch.softmax(logits, dim=-1) if joint else cast(torch.Tensor, fixed)  # noqa: B023  (called in this restart)

            def closure() -> torch.Tensor:
                optimizer.zero_grad()  # noqa: B023  (closure: called by this restart's optimizer.step)
                loss = objective.matching_loss(x, labels_now())  # noqa: B023
                loss.backward()
                return loss.detach()

            stop = EarlyStop(cfg.patience, cfg.min_delta)
            steps = 0
            for it in range(cfg.iterations):
                value = float(optimizer.step(closure))
                steps = it + 1
                trace.record(restart * cfg.iterations + it, restart=restart, loss=value)
                bar.update(1)
                bar.set_postfix(restart=restart, loss=f"{value:.4g}", refresh=False)
                if not math.isfinite(value) or stop(value):
                    break
            done = max(done, steps)
            with torch.no_grad():
                final_labels = labels_now().detach()
            final = float(objective.matching_loss(x, final_labels).detach())
            losses.append(final if torch.isfinite(x).all() else math.nan)
            candidates.append((x.detach().clone(), final_labels.argmax(-1) if joint else final_labels))
        bar.close()
        winner = best_restart(torch.tensor(losses, device=device))
        images, labels = candidates[winner]
        return Reconstruction(
            images=knowledge.normalization.to_pixels(images),
            labels=labels.long(),
            matching_loss=losses[winner],
            restart_losses=losses,
            iterations=done,
            seconds=trace.seconds,
            trace=trace.rows,
        )


class IDLGConfig(DLGConfig):
    labels: str = Field("idlg", description="label recovery method (iDLG: from the last layer)")


@register_attack("idlg")
class IDLG(DLG):
    Config = IDLGConfig
