"""Compression defenses (Yue et al. §3): uniform quantization, QSGD, top-k sparsification, signSGD
and magnitude pruning. The server receives the decompressed values, so each returns a dense tensor.

Two defects of the ROG authors' release are not reproduced by default: their top-k kept k − 1
entries (a strict ``>`` against the k-th value) and their QSGD scaled by max-abs instead of ‖g‖₂.
The second is an explicit setting, ``qsgd:levels=16,scale=max``, so that their recorded runs can be set
beside ours: it is a much finer quantizer than QSGD proper (s − 1 levels of max|g| instead of s of ‖g‖₂,
under which most entries of a large tensor round to 0 or ±‖g‖₂/s).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from fedleak.defenses.base import DefenseConfig, Update, UpdateDefense, register


class QuantizeConfig(DefenseConfig):
    bits: int = Field(8, ge=2, le=32, description="bits per entry: a sign and 2^(bits-1) - 1 magnitude levels")


@register("quantize")
class Quantize(UpdateDefense):
    """Deterministic uniform quantization with a per-tensor max-abs scale.

    With L = 2^(b−1) − 1 levels, q = sign(g)·round(|g|/max|g|·L)·max|g|/L: at most 2L + 1 = 2^b − 1
    distinct values (zero included), and max|g| itself is kept exactly."""

    Config = QuantizeConfig
    config: QuantizeConfig

    def tensor(self, t: Tensor, generator: torch.Generator) -> Tensor:
        # An all-zero tensor stays zero (sign 0); scale 1 there only avoids 0/0 — no host read to branch on.
        scale = t.abs().max()
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        levels = 2 ** (self.config.bits - 1) - 1
        return torch.sign(t) * torch.round(t.abs() / scale * levels) * (scale / levels)


class QSGDConfig(DefenseConfig):
    levels: int = Field(4, ge=1, description="quantization levels s")
    scale: Literal["l2", "max"] = Field("l2", description="l2: QSGD's ‖g‖₂ and s levels; max: the ROG "
                                        "authors' release, max|g| and s − 1 levels (needs s ≥ 2)")

    @model_validator(mode="after")
    def _levels_for_max(self) -> QSGDConfig:
        if self.scale == "max" and self.levels < 2:
            raise ValueError("levels must be at least 2 with scale=max (it keeps s − 1 levels)")
        return self


@register("qsgd")
class QSGD(UpdateDefense):
    """QSGD (Alistarh et al. 2017): q = ‖g‖₂·sign(g)·ξ/s with ξ = ⌊|g|/‖g‖₂·s⌋ rounded up with
    probability equal to the remainder, so E[q] = g. With ``scale=max`` (the ROG authors' release) the
    scale is max|g| and the grid has s − 1 steps: q = max|g|·sign(g)·ξ/(s − 1), still unbiased."""

    Config = QSGDConfig
    config: QSGDConfig

    def tensor(self, t: Tensor, generator: torch.Generator) -> Tensor:
        # An all-zero tensor comes out zero (norm 0 multiplies it); norm 1 in the division only avoids
        # 0/0 — no host read to branch on, so every tensor takes one draw from the generator.
        max_scale = self.config.scale == "max"
        norm = t.abs().max() if max_scale else t.norm()
        s = self.config.levels - 1 if max_scale else self.config.levels
        scaled = t.abs() / torch.where(norm == 0, torch.ones_like(norm), norm) * s
        low = torch.floor(scaled)
        up = torch.rand(t.shape, generator=generator, dtype=t.dtype, device=t.device) < (scaled - low)
        return norm * torch.sign(t) * (low + up.to(t.dtype)) / s


class TopKConfig(DefenseConfig):
    sparsity: float = Field(0.9, ge=0, lt=1, description="fraction of entries set to zero")
    scope: Literal["tensor", "global"] = Field("tensor", description="rank per tensor or across the update")


def keep_count(n: int, sparsity: float) -> int:
    """k = ⌈(1 − sparsity)·n⌉ in exact arithmetic, ``sparsity`` read as the decimal the user wrote
    (its shortest repr): in floats (1 − 0.9)·10 is 1.0000000000000009, and rounding that noise away
    would also round away real digits (n = 3, sparsity 0.3333333333 keeps 3). At least one entry of a
    non-empty tensor is kept."""
    return max(1, math.ceil((1 - Fraction(repr(float(sparsity)))) * n)) if n else 0


def top_k_mask(values: Tensor, k: int) -> Tensor:
    """Boolean mask of exactly ``k`` largest |values|; ties go to the lower flat index."""
    flat = values.abs().flatten()
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:k]] = True
    return mask.view(values.shape)


@register("topk")
class TopK(UpdateDefense):
    """Top-k sparsification: exactly k = ⌈(1 − sparsity)·n⌉ entries of largest magnitude are sent,
    the rest are zero; per tensor, or ranked across the whole update with ``scope=global``."""

    Config = TopKConfig
    config: TopKConfig
    matching = "masked"  # the zeros it wrote say nothing about the gradient there
    matching_priority = 1

    def apply(self, update: Update, generator: torch.Generator) -> Update:
        if self.config.scope == "tensor":
            return super().apply(update, generator)
        flat = torch.cat([t.flatten() for t in update.values()])
        mask = top_k_mask(flat, keep_count(flat.numel(), self.config.sparsity))
        out, start = {}, 0
        for name, t in update.items():
            out[name] = t * mask[start : start + t.numel()].view(t.shape)
            start += t.numel()
        return out

    def tensor(self, t: Tensor, generator: torch.Generator) -> Tensor:
        return t * top_k_mask(t, keep_count(t.numel(), self.config.sparsity))


class SignConfig(DefenseConfig):
    scale: Literal["none", "mean"] = Field("none", description="multiply the signs by mean |g| per tensor")


@register("sign")
class Sign(UpdateDefense):
    """signSGD (Bernstein et al. 2018): each entry becomes ±1 (0 stays 0), optionally scaled by the
    tensor's mean |g| so the update keeps its magnitude."""

    Config = SignConfig
    config: SignConfig
    matching = "sign"  # only the signs are left: whatever else a spec does, they decide
    matching_priority = 2

    def tensor(self, t: Tensor, generator: torch.Generator) -> Tensor:
        signs = torch.sign(t)
        return signs * t.abs().mean() if self.config.scale == "mean" else signs


class PruneConfig(DefenseConfig):
    ratio: float = Field(0.9, ge=0, lt=1, description="fraction of smallest-magnitude entries zeroed")


@register("prune")
class Prune(UpdateDefense):
    """Gradient pruning as DLG's defense (Zhu et al. 2019): entries whose magnitude is below the
    ``ratio`` quantile of the tensor's magnitudes are set to zero (entries tied with the threshold
    survive, unlike top-k's exact count)."""

    Config = PruneConfig
    config: PruneConfig
    matching = "masked"
    matching_priority = 1

    def tensor(self, t: Tensor, generator: torch.Generator) -> Tensor:
        if self.config.ratio == 0 or t.numel() == 0:
            return t.clone()
        magnitudes = t.detach().abs().to(torch.float32 if t.device.type == "mps" else torch.float64)
        threshold = percentile(magnitudes, self.config.ratio * 100)
        return torch.where(magnitudes >= threshold, t, torch.zeros_like(t))


def percentile(values: Tensor, q: float) -> Tensor:
    """``numpy.percentile(values, q)`` (its default linear interpolation; DLG's release used it),
    computed on the values' device with numpy's own float steps, so it equals numpy's result
    exactly in float64. (``torch.quantile`` caps the input size and rounds differently.)"""
    flat = torch.sort(values.flatten()).values
    n = flat.numel()
    fraction = q / 100
    virtual = (n - 1) * fraction  # numpy's virtual index for its linear method
    if virtual >= n - 1:
        return flat[-1]
    below = max(math.floor(virtual), 0)
    gamma = virtual - below
    a, b = flat[below], flat[below + 1]
    return b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma  # numpy's _lerp
