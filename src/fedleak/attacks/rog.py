"""ROG (Yue et al., USENIX Security 2023): reconstruction from obfuscated gradients.

The variable is a low-resolution image (H/s × W/s, s = 2 or 4) that is bicubic-upsampled into the
model; the simulated update (FedSGD, or FedAvg's local steps unrolled) is matched to the observed,
decompressed one with squared L2 (cosine optional) under Adam, lr 0.05 decaying along a cosine to
0.005, for about 100 iterations. Restarts run batched; the lowest matching loss wins. A learned
prior (``fedleak train-prior``) can then restore detail.

Beyond the paper, ``matching`` compares only the coordinates a sparsifier kept (``masked``) or the
signs a signSGD client sent (``sign``); ``auto`` picks from the payload's public defense spec.
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator

from fedleak.attacks.base import ATTACKS, Attack, AttackerKnowledge, Reconstruction
from fedleak.attacks.labels import recover_labels
from fedleak.attacks.matching import GradientMatching, MatchingConfig
from fedleak.attacks.optimization import INITS, best_restart, optimize
from fedleak.attacks.priors import load_prior, upsample
from fedleak.device import generator, payload_device
from fedleak.errors import ConfigError
from fedleak.fl.payload import Payload


class ROGConfig(MatchingConfig):
    iterations: int = Field(100, ge=1, description="optimisation steps")
    lr: float = Field(0.05, gt=0, description="Adam learning rate at the start")
    lr_min: float = Field(0.005, ge=0, description="learning rate at the end of the cosine decay")
    cost: str = Field("l2", description="matching cost: l2 | cosine")
    init: str = Field("rand", description="initial low-resolution pixels: rand (uniform) | randn | zeros")
    scale: int = Field(2, ge=1, le=8, description="downsampling factor s of the variable")
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
        cfg = self.config
        prior = load_prior(cfg.prior) if cfg.prior else None
        c, h, w = knowledge.input_shape
        if prior is not None and (prior.info.channels != c or prior.info.scale != cfg.scale):
            raise ConfigError(
                f"prior {cfg.prior} restores {prior.info.channels}-channel images at scale "
                f"{prior.info.scale}; this attack needs {c} channels at scale {cfg.scale}"
            )
        if h // cfg.scale < 1 or w // cfg.scale < 1:
            raise ConfigError(f"scale {cfg.scale} is too large for {h}×{w} images")
        labels = recover_labels(payload, knowledge, cfg.labels)
        objective = GradientMatching(payload, knowledge, cfg.cost, cfg.layers, cfg.layer_count,
                                     {"tv": cfg.tv}, cfg.matching)
        n = payload.hyper.observed_images
        shape = (cfg.restarts, n, c, h // cfg.scale, w // cfg.scale)
        # The variable is a low-resolution image in pixel units [0, 1] (the paper's lr refers to them).
        device = payload_device(payload)
        z = INITS.get(cfg.init)(shape, generator(seed, device)).requires_grad_(True)
        mean = torch.tensor(knowledge.mean, device=device).view(1, 1, -1, 1, 1)
        std = torch.tensor(knowledge.std, device=device).view(1, 1, -1, 1, 1)

        def image(low: torch.Tensor) -> torch.Tensor:
            """Low-resolution pixels → the model's normalised full-resolution input."""
            return (upsample(low.flatten(0, 1), (h, w)).view(cfg.restarts, n, c, h, w) - mean) / std

        optimizer = torch.optim.Adam([z], lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.iterations, eta_min=cfg.lr_min)

        def step() -> torch.Tensor:
            x = image(z)
            gx, match = objective.image_gradients(x.detach(), labels)
            optimizer.zero_grad()
            x.backward(gx)  # chain rule through the upsampling to the low-resolution variable
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                z.clamp_(0, 1)  # the valid pixel range
            return match

        trace, done = optimize(step, cfg.iterations, cfg.patience, cfg.min_delta, progress, self.name,
                               cfg.log_every)
        final = objective.matching_losses(image(z).detach(), labels)
        winner = best_restart(final)
        low = z[winner].detach()
        images = prior(low, (h, w)) if prior is not None else upsample(low, (h, w)).clamp(0, 1)
        return Reconstruction.from_restarts(images, labels, final, winner, trace, done)
