"""ROG (Yue et al., USENIX Security 2023): reconstruction from obfuscated gradients.

The variable is a low-resolution image (H/s × W/s, s = 2 or 4) that is bicubic-upsampled into the
model; the simulated update (FedSGD, or FedAvg's local steps unrolled) is matched to the observed,
decompressed one with squared L2 (cosine optional) under Adam, lr 0.05 decaying along a cosine to
0.005, for about 100 iterations. Restarts (and many payloads, via ``run_many``) run batched; the lowest matching loss wins. A learned
prior (``fedleak train-prior``) can then restore detail.

Beyond the paper, ``matching`` compares only the coordinates a sparsifier kept (``masked``) or the
signs a signSGD client sent (``sign``); ``auto`` picks from the payload's public defense spec.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, field_validator

from fedleak.attacks.base import ATTACKS, Attack, AttackerKnowledge, Reconstruction
from fedleak.attacks.labels import recover_labels
from fedleak.attacks.matching import GradientMatching, MatchingConfig
from fedleak.attacks.engine import Variable, groups, optimize_variable
from fedleak.attacks.optimization import INITS, best_restart, matmul_precision
from fedleak.attacks.priors import ROG_MAX_SCALE, Prior, load_prior, upsample
from fedleak.device import generator, payload_device
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
    prior: str | None = Field(None, description="restoration prior from `fedleak train-prior` (path)")


@ATTACKS.register("rog")
class ROG(Attack):
    Config = ROGConfig
    config: ROGConfig
    name = "rog"

    def run(
        self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False
    ) -> Reconstruction:
        return self.run_many([payload], [knowledge], [seed], progress)[0]

    def run_many(self, payloads: Sequence[Payload], knowledges: Sequence[AttackerKnowledge],
                 seeds: Sequence[int], progress: bool = False) -> list[Reconstruction]:
        cfg = self.config
        prior = load_prior(cfg.prior) if cfg.prior else None
        results: dict[int, Reconstruction] = {}
        with matmul_precision(cfg.precision):
            for members in groups(payloads, knowledges, cfg.layers, cfg.layer_count):
                done = self._group([payloads[i] for i in members], [knowledges[i] for i in members],
                                   [seeds[i] for i in members], prior, progress)
                results.update(zip(members, done))
        return [results[i] for i in range(len(payloads))]

    def _group(self, payloads: list[Payload], knowledges: list[AttackerKnowledge], seeds: list[int],
               prior: Prior | None, progress: bool) -> list[Reconstruction]:
        cfg, knowledge = self.config, knowledges[0]
        c, h, w = knowledge.input_shape
        if prior is not None and (prior.info.channels != c or prior.info.scale != cfg.scale):
            raise ConfigError(
                f"prior {cfg.prior} restores {prior.info.channels}-channel images at scale "
                f"{prior.info.scale}; this attack needs {c} channels at scale {cfg.scale}"
            )
        if h // cfg.scale < 1 or w // cfg.scale < 1:
            raise ConfigError(f"scale {cfg.scale} is too large for {h}×{w} images")
        labels = torch.stack([recover_labels(p, k, cfg.labels) for p, k in zip(payloads, knowledges)])
        objective = GradientMatching(payloads, knowledges, cfg.cost, cfg.layers, cfg.layer_count,
                                     {"tv": cfg.tv}, cfg.matching)
        n = payloads[0].hyper.observed_images
        shape = (cfg.restarts, n, c, h // cfg.scale, w // cfg.scale)
        # The variable is a low-resolution image in pixel units [0, 1] (the paper's lr refers to them).
        device = payload_device(payloads[0])
        init = INITS.get(cfg.init)
        z = torch.stack([init(shape, generator(seed, device)) for seed in seeds]).requires_grad_(True)
        mean = torch.tensor(knowledge.mean, device=device).view(-1, 1, 1)
        std = torch.tensor(knowledge.std, device=device).view(-1, 1, 1)

        def image(low: torch.Tensor) -> torch.Tensor:
            """Low-resolution pixels (P×R×B×C×h×w) → the model's normalised full-resolution input."""
            lead = low.shape[:3]
            return ((upsample(low.flatten(0, 2), (h, w)) - mean) / std).view(*lead, c, h, w)

        optimizer = torch.optim.Adam([z], lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.iterations, eta_min=cfg.lr_min)
        variable = Variable(z, to_input=image, project=lambda value: value.clamp_(0, 1))  # the valid pixel range
        outcomes = optimize_variable(objective, variable, labels, optimizer, scheduler, cfg.iterations,
                                     cfg.patience, cfg.min_delta, cfg.chunk, progress, self.name, cfg.log_every)
        reconstructions = []
        for p, outcome in enumerate(outcomes):
            winner = best_restart(outcome.final)
            low = z[p, winner].detach()
            images = prior(low, (h, w)) if prior is not None else upsample(low, (h, w)).clamp(0, 1)
            reconstructions.append(Reconstruction.from_restarts(images, labels[p], outcome.final, winner,
                                                                outcome.trace, outcome.iterations))
        return reconstructions
