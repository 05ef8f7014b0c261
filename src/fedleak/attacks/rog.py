"""ROG (Yue et al., USENIX Security 2023): reconstruction from obfuscated gradients.

The variable is a low-resolution image (H/s × W/s, s = 2 or 4) that is bicubic-upsampled into the
model; the simulated update (FedSGD, or FedAvg's local steps unrolled) is matched to the observed,
decompressed one with squared L2 (cosine optional) under Adam, lr 0.05 decaying along a cosine to
0.005, for about 100 iterations. Restarts (and many payloads, via ``run_many``) run batched; the
lowest matching loss wins. A learned restoration prior (``fedleak train-prior``,
:mod:`fedleak.attacks.restoration_prior`) can then restore detail; ``tv`` is an image regulariser
(:mod:`fedleak.attacks.regularizers`), not a prior.

Beyond the paper, ``matching`` compares only the coordinates a sparsifier kept (``masked``) or the
signs a signSGD client sent (``sign``); ``auto`` picks from the payload's public defense spec.
"""

from __future__ import annotations

import functools

import torch
from pydantic import Field

from fedleak.attacks.base import AttackerKnowledge, Reconstruction, register_attack
from fedleak.attacks.engine import BatchedMatching, Variable
from fedleak.attacks.matching import GradientMatching, MatchingConfig
from fedleak.attacks.priors import Prior, load_any_prior
from fedleak.attacks.restoration_prior import ROG_MAX_SCALE, upsample
from fedleak.attacks.semantic_prior import SemanticPrior
from fedleak.errors import ConfigError
from fedleak.fl.payload import Payload


class ROGConfig(MatchingConfig):
    iterations: int = Field(100, ge=1, description="optimisation steps")
    lr: float = Field(0.05, gt=0, description="Adam learning rate at the start")
    lr_min: float = Field(0.005, ge=0, description="learning rate at the end of the cosine decay")
    cost: str = Field("l2", description="matching cost: l2 | cosine")
    init: str = Field("rand", description="initial low-resolution pixels: rand (uniform) | randn | zeros")
    scale: int = Field(2, ge=1, le=ROG_MAX_SCALE, description="downsampling factor s of the variable")
    tv: float = Field(0.0, ge=0, description="total-variation weight on the upsampled image")
    prior: str | None = Field(None, description="learned prior from `fedleak train-prior` (path): restoration, or "
                              "semantic (a class-conditional generator fed the recovered labels)")


@register_attack("rog")
class ROG(BatchedMatching):
    Config = ROGConfig
    config: ROGConfig

    def needs(self) -> dict[str, str]:
        """A restoration prior is trained on public images of the client's distribution."""
        return {**super().needs(), **({"surrogate_data": f"attack rog's restoration prior {self.config.prior}"}
                                      if self.config.prior else {})}

    @functools.cached_property
    def prior(self) -> Prior | None:
        """The prior of ``config.prior`` (restoration or semantic), loaded once."""
        return load_any_prior(self.config.prior) if self.config.prior else None

    def attack_group(self, payloads: list[Payload], knowledges: list[AttackerKnowledge], seeds: list[int],
                     progress: bool) -> list[Reconstruction]:
        cfg, knowledge, prior = self.config, knowledges[0], self.prior
        c, h, w = knowledge.input_shape
        if prior is not None and (prior.info.channels != c or prior.info.scale != cfg.scale):
            raise ConfigError(
                f"prior {cfg.prior} restores {prior.info.channels}-channel images at scale "
                f"{prior.info.scale}; this attack needs {c} channels at scale {cfg.scale}"
            )
        if isinstance(prior, SemanticPrior) and prior.info.classes != knowledge.num_classes:
            raise ConfigError(f"prior {cfg.prior} draws {prior.info.classes} classes; the target has "
                              f"{knowledge.num_classes}")
        if h // cfg.scale < 1 or w // cfg.scale < 1:
            raise ConfigError(f"scale {cfg.scale} is too large for {h}×{w} images")
        labels = self.labels(payloads, knowledges)
        objective = GradientMatching(payloads, knowledges, cfg.cost, cfg.layers, cfg.layer_count,
                                     {"tv": cfg.tv}, cfg.matching)
        n = payloads[0].hyper.observed_images
        # The variable is a low-resolution image in pixel units [0, 1] (the paper's lr refers to them).
        z = self.initial(payloads, seeds, (cfg.restarts, n, c, h // cfg.scale, w // cfg.scale))
        norm = knowledge.normalization

        def image(low: torch.Tensor) -> torch.Tensor:
            """Low-resolution pixels (P×R×B×C×h×w) → the model's normalised full-resolution input."""
            lead = low.shape[:3]
            return norm.to_input(upsample(low.flatten(0, 2), (h, w))).view(*lead, c, h, w)

        def restored(p: int, winner: int) -> torch.Tensor:
            low = z[p, winner].detach()
            if prior is None:
                return upsample(low, (h, w)).clamp(0, 1)
            if isinstance(prior, SemanticPrior):  # the class it draws: the labels the attack recovered
                return prior(low, (h, w), labels[p].view(-1))
            return prior(low, (h, w))

        optimizer = torch.optim.Adam([z], lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.iterations, eta_min=cfg.lr_min)
        variable = Variable(z, to_input=image, project=lambda value: value.clamp_(0, 1))  # the valid pixel range
        return self.optimize(objective, variable, labels, optimizer, scheduler, progress, restored)
