"""DAGER's linear algebra (Petrov et al., NeurIPS 2024): the span of a linear layer's inputs read off
its weight gradient, and the distance of a candidate input to it.

A linear map ``y = W x`` applied to the inputs ``x_i`` (one per token of the batch) has the weight
gradient ``∂L/∂W = Σᵢ δᵢ xᵢᵀ``: seen in input space its columns span a subspace of ``span{xᵢ}``,
the whole of it when the ``δᵢ`` are independent (generically, when the batch's B·T tokens are fewer
than the input width d). A candidate ``x`` belongs to the batch only if its *relative distance* to
that subspace, ``‖x − U Uᵀ x‖ / ‖x‖`` (``U``: an orthonormal basis), is zero up to float rounding.

Which gradient gives the span (:func:`block_spans`): under full fine-tuning the weight of every
projection in the block that reads the block's (normalised) input — GPT-2's ``c_attn`` (a
``Conv1D``: weight d×3d, input space = rows), BERT's ``query``/``key``/``value`` (``nn.Linear``:
weight out×d, input space = columns) — stacked side by side. Under LoRA (``W x + s·B A x``, peft's
``lora_A`` r×d and ``lora_B`` d_out×r) two gradients are available: ``∂L/∂A = s·Σᵢ Bᵀδᵢ xᵢᵀ``, whose
input-space span lies in ``span{xᵢ}`` (rank ≤ r), and ``∂L/∂B = s·Σᵢ δᵢ (A xᵢ)ᵀ``, whose span in
r-space is ``span{A xᵢ}`` — the only non-zero one in the first round, where peft's B is 0 and hence
``∂L/∂A = 0``. A candidate is then checked as ``A x`` against the ``∂L/∂B`` span; either way exact
checks need the batch's tokens to number fewer than r, the adapter rank (the paper's condition for
LoRA). Each distinct feature map is a :class:`Span`; a candidate's distance is the largest over them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

Feature = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Span:
    """An orthonormal basis ``basis`` (f×r, float64) of a layer's input span in the space that
    ``feature`` maps a layer input (…×d) into; ``rank`` of ``width`` (= f) dimensions, with the
    singular values ``singular`` of the gradient it came from; ``source`` names the tensors."""

    basis: Tensor
    feature: Feature
    rank: int
    width: int
    singular: Tensor
    source: str
    columns: int = 0  # the gradient's columns in that space: its rank can be no higher (LoRA's ∂L/∂A: r)

    def saturated(self, room: int) -> bool:
        """Whether the span is as large as it can be — every dimension the inputs occupy, or every
        column of its gradient: then rounding noise, not the batch, may have set it (LoRA's ``∂L/∂A``
        at rank r, a float32 difference of a small step of a large A)."""
        return self.rank >= room or (self.columns > 0 and self.rank >= self.columns)

    def room(self, samples: Tensor, rank_tol: float) -> int:
        """The dimension of the space the layer's inputs occupy: the numerical rank of ``samples``
        (n×d inputs, n ≥ d) mapped by ``feature`` — below the width, e.g., d − 1 after a LayerNorm
        without bias (its outputs sum to zero)."""
        return basis_of(self.feature(samples.to(self.basis.dtype)).T, rank_tol)[1]

    def distance(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Relative distance of each input (…×d) to the span, in [0, 1], computed in ``dtype``
        (default the basis's, float64; float32 resolves distances down to about 1e-6)."""
        basis = self.basis.to(dtype or self.basis.dtype)
        f = self.feature(x.to(basis.dtype))
        residual = f - (f @ basis) @ basis.T
        return residual.norm(dim=-1) / f.norm(dim=-1).clamp_min(torch.finfo(f.dtype).tiny)


def noise_threshold(s: Tensor, shape: tuple[int, int]) -> float:
    """Gavish & Donoho's (2014) optimal hard threshold for a matrix of ``shape`` whose noise level is
    unknown: ω(β)·median(s) over its min(f, k) singular values, β = min/max of the sides,
    ω(β) ≈ 0.56β³ − 0.95β² + 1.82β + 1.43. Singular values above it are signal, the rest the noise's
    bulk (measured on GPT-2 small's first block at 40 dB: 90 signal values down to 2.9e-3 of the
    largest, the noise's edge at 6.8e-4, this threshold at 8.6e-4)."""
    short, long = min(shape), max(shape)
    beta = short / long
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    return float(omega * s[:short].median())


def basis_of(matrix: Tensor, rank_tol: float, rule: str = "relative") -> tuple[Tensor, int, Tensor]:
    """The left singular vectors of ``matrix`` (f×k) whose singular values exceed ``rank_tol`` times
    the largest (``rule="relative"``), or the noise threshold (``rule="noise"``:
    :func:`noise_threshold`, for an update with Gaussian noise): an orthonormal basis of its
    numerical column space, its rank and the singular values (from the eigendecomposition of the
    f×f Gram matrix ``M Mᵀ`` in float64: much faster than an SVD of a wide matrix, and exact enough
    for ``rank_tol`` ≥ 1e-7)."""
    m = matrix.to(torch.float64)
    values, vectors = torch.linalg.eigh(m @ m.T)
    s = values.flip(0).clamp_min(0).sqrt()
    u = vectors.flip(1)
    if not s.numel() or s[0] <= 0:
        return u[:, :0], 0, s
    cut = rank_tol * float(s[0])
    if rule == "noise":
        cut = max(cut, noise_threshold(s, (m.shape[0], m.shape[1])))
    rank = int((s > cut).sum())
    return u[:, :rank], rank, s


def distance(spans: list[Span], x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The largest relative distance of each input (…×d) to the spans."""
    return torch.stack([s.distance(x, dtype) for s in spans]).amax(dim=0)


def _linear_input_gradient(module: nn.Module, grad: Tensor) -> Tensor:
    """A weight gradient with its input dimension first: a ``Conv1D``'s as it is (d_in×d_out), an
    ``nn.Linear``'s transposed."""
    return grad if isinstance(module, Conv1D) else grad.T


def _identity(x: Tensor) -> Tensor:
    return x


def _through(a: Tensor) -> Feature:
    return lambda x: x @ a.T.to(x.dtype)


def block_spans(probes: list[tuple[str, nn.Module]], update: Mapping[str, Tensor], dtype: torch.dtype,
                rank_tol: float, rule: str = "relative") -> list[Span]:
    """The input spans that the update's gradients of ``probes`` (name, module: the projections of
    one block that read its input) give, one per feature map (see the module docstring); zero
    gradients (LoRA's ``∂L/∂A`` while B = 0) are left out."""
    full: list[Tensor] = []
    names: list[str] = []
    lora_b: list[tuple[str, Tensor, Tensor]] = []
    for name, module in probes:
        weight = update.get(f"{name}.weight")
        if weight is not None:
            full.append(_linear_input_gradient(module, weight.to(dtype)))
            names.append(f"{name}.weight")
        adapters_a = getattr(module, "lora_A", None)
        adapters_b = getattr(module, "lora_B", None)
        if isinstance(adapters_a, nn.ModuleDict) and isinstance(adapters_b, nn.ModuleDict):
            for key in adapters_a:
                a_name, b_name = f"{name}.lora_A.{key}.weight", f"{name}.lora_B.{key}.weight"
                ga, gb = update.get(a_name), update.get(b_name)
                if ga is not None and bool(ga.abs().max() > 0):
                    full.append(ga.to(dtype).T)  # r×d → d×r: input space first
                    names.append(a_name)
                if gb is not None and bool(gb.abs().max() > 0):
                    a = cast(Tensor, adapters_a[key].weight).detach().to(dtype)
                    lora_b.append((b_name, gb.to(dtype).T, a))  # d_out×r → r×d_out
    spans: list[Span] = []
    if full:
        stacked = torch.cat(full, dim=1)
        basis, rank, s = basis_of(stacked, rank_tol, rule)
        spans.append(Span(basis, _identity, rank, basis.shape[0], s, " + ".join(names), stacked.shape[1]))
    for b_name, gb, a in lora_b:
        basis, rank, s = basis_of(gb, rank_tol, rule)
        spans.append(Span(basis, _through(a), rank, basis.shape[0], s, f"{b_name} (inputs through lora_A)",
                          gb.shape[1]))
    return spans
