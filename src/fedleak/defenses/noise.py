"""Additive-noise and clipping defenses applied to the update a client sends."""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
from pydantic import Field, field_validator
from torch import Tensor

from fedleak.defenses.base import DefenseConfig, Update, UpdateDefense, register


class NoiseConfig(DefenseConfig):
    snr_db: float = Field(0.0, allow_inf_nan=True,  # +inf means no noise; -inf and nan are errors (below)
                          description="signal-to-noise ratio of each tensor in dB (inf: no noise)")

    @field_validator("snr_db")
    @classmethod
    def _finite_or_no_noise(cls, v: float) -> float:
        # +inf is "no noise"; -inf would be infinite noise and NaN no ratio at all.
        if math.isnan(v) or v == -math.inf:
            raise ValueError("must be a finite number of dB, or inf for no noise")
        return v


@register("noise")
class Noise(UpdateDefense):
    """Gaussian noise at a target SNR per tensor: σ² = var(g) / 10^(SNR/10) (Yue et al.'s setting)."""

    Config = NoiseConfig
    config: NoiseConfig

    def tensor(self, t: Tensor, generator: torch.Generator) -> Tensor:
        if self.config.snr_db == math.inf or t.numel() < 2:  # no noise, or no variance to scale it by
            return t.clone()
        sigma = (t.var(unbiased=False) / 10 ** (self.config.snr_db / 10)).sqrt()
        return t + sigma * torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device)


class ClipConfig(DefenseConfig):
    c: float = Field(1.0, gt=0, description="largest L2 norm the update may have")
    scope: Literal["global", "tensor"] = Field("global", description="clip the whole update or each tensor")


@register("clip")
class Clip(UpdateDefense):
    """Norm clipping: g·min(1, c/‖g‖₂). By default the norm of the whole update (DP-FedAvg's client
    clipping, the usual partner of ``noise``); ``scope=tensor`` clips each tensor on its own."""

    Config = ClipConfig
    config: ClipConfig
    simulable = True

    def apply(self, update: Update, generator: torch.Generator) -> Update:
        return self.simulate(update)  # deterministic: the client and the attacker run the same code

    def simulate(self, update: Update) -> Update:
        c = self.config.c
        if self.config.scope == "tensor":
            return {n: t * (c / t.norm().clamp_min(1e-12)).clamp(max=1.0) for n, t in update.items()}
        norm = torch.sqrt(cast(Tensor, sum(t.pow(2).sum() for t in update.values()))).clamp_min(1e-12)
        factor = (c / norm).clamp(max=1.0)
        return {n: t * factor for n, t in update.items()}
