"""APRIL's closed form (Lu et al., CVPR 2022): one image from a ViT's gradients, by linear algebra.

For one image the first block's input is z = [cls; X W_peᵀ + b_pe] + E_pos (N×D tokens; X holds the P
patches, one flattened C·p·p row each). Because E_pos is added to z, **∂L/∂E_pos = ∂L/∂z** — the
position embedding's gradient hands the attacker the gradient at the network's input embedding.

``embedding`` (the paper's derivation): when z feeds one linear layer only, u = z Wᵀ + b (the first
block's ``qkv``, W: 3D×D), ∂L/∂W = Δᵀ z and ∂L/∂z = Δ W (Δ = ∂L/∂u, N×3D), so

    (∂L/∂E_pos)ᵀ z = Wᵀ Δᵀ z = Wᵀ ∂L/∂W        (D×N · N×D = D×D),

a linear system with one solution when ∂L/∂E_pos has rank N (so N ≤ D). The patches follow from
z_n − E_pos[n] − b_pe = W_pe x_n, n ≥ 1, by least squares (exact when W_pe, D×C·p·p, has full column
rank: C·p·p ≤ D). This needs the ViT built with ``first_block="plain"``: in a pre-norm block z also
feeds the residual and passes a LayerNorm first, so ∂L/∂z ≠ Wᵀ ∂L/∂u and the identity is false.

``patch`` (the same identity one layer earlier, exact for any ViT here): the patch embedding is a
linear layer whose output gradient is ∂L/∂E_pos[1:] (P×D), so ∂L/∂W_pe = (∂L/∂E_pos[1:])ᵀ X
(D×C·p·p), solved for X when ∂L/∂E_pos[1:] has rank P (so P ≤ D); no LayerNorm or residual is in the
way. Both scale-free: an update that is the gradient times a scalar (FedSGD, one FedAvg step) gives
the same X. Solved in float64 (``torch.linalg.lstsq``) after a rank check by singular values; the
systems' condition numbers are returned, since the observed float32 gradients carry rounding errors
of ~1e-7 that an ill-conditioned system magnifies (near-uniform attention, as at initialisation, makes
the ``embedding`` system's ∂L/∂E_pos close to rank one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedleak.errors import FedleakError
from fedleak.models.vit import VisionTransformer

RANK_TOLERANCE = 1e-12
"""A singular value below this × the largest counts as zero: the system is rank deficient (in float64)."""

ILL_CONDITIONED = 1e5
"""Above this condition number the float32 gradients' rounding (~1e-7) can show in the solution."""


def condition(matrix: Tensor, what: str) -> float:
    """The condition number of a tall m×n system matrix (m ≥ n); refused when it has no full column rank."""
    m, n = matrix.shape
    if m < n:
        raise FedleakError(f"APRIL cannot solve for {what}: {n} unknowns per column but only {m} equations")
    s = torch.linalg.svdvals(matrix)
    if s[-1] <= RANK_TOLERANCE * s[0]:
        raise FedleakError(f"APRIL cannot solve for {what}: the system is rank deficient "
                           f"(smallest/largest singular value {float(s[-1] / s[0]):.1e})")
    return float(s[0] / s[-1])


def solve(a: Tensor, b: Tensor, what: str, conditions: list[float] | None = None) -> Tensor:
    """The least-squares solution X of A X = B (exact when A has full column rank and B is in its range),
    in float64; A's condition number is appended to ``conditions``."""
    a, b = a.double(), b.double()
    number = condition(a, what)
    if conditions is not None:
        conditions.append(number)
    return torch.linalg.lstsq(a, b).solution


def patches_from_patch_embedding(g_pos: Tensor, g_weight: Tensor, conditions: list[float] | None = None) -> Tensor:
    """X (P×C·p·p) from ∂L/∂E_pos (N×D) and ∂L/∂W_pe (D×C×p×p): (∂L/∂E_pos[1:])ᵀ X = ∂L/∂W_pe."""
    dim = g_weight.shape[0]
    return solve(g_pos[1:].T, g_weight.reshape(dim, -1), "the patches (more patches than embedding dimensions?)",
                 conditions)


def embedding_from_first_linear(g_pos: Tensor, g_qkv: Tensor, qkv: Tensor,
                                conditions: list[float] | None = None) -> Tensor:
    """z (N×D) from ∂L/∂E_pos (N×D), ∂L/∂W_qkv and W_qkv (3D×D): (∂L/∂E_pos)ᵀ z = W_qkvᵀ ∂L/∂W_qkv."""
    return solve(g_pos.T, qkv.double().T @ g_qkv.double(), "the input embedding (more tokens than dimensions?)",
                 conditions)


def patches_from_embedding(z: Tensor, model: VisionTransformer, conditions: list[float] | None = None) -> Tensor:
    """X (P×C·p·p) from z (N×D): least squares of W_pe x_n = z_n − E_pos[n] − b_pe over the patch tokens."""
    weight = model.patch_embed.weight.detach()
    matrix = weight.reshape(weight.shape[0], -1).double()
    bias = model.patch_embed.bias
    rhs = z[1:].double() - model.pos_embed.detach()[0, 1:].double()
    if bias is not None:
        rhs = rhs - bias.detach().double()
    return solve(matrix, rhs.T, "the pixels (patches larger than the embedding dimension?)", conditions).T


def image_from_patches(patches: Tensor, model: VisionTransformer, channels: int) -> Tensor:
    """The 1×C×H×W image whose p×p patches, row-major over the grid, are the rows of ``patches``."""
    (gh, gw), p = model.grid, model.patch
    x = patches.reshape(gh, gw, channels, p, p).permute(2, 0, 3, 1, 4).reshape(1, channels, gh * p, gw * p)
    return x.to(model.pos_embed.dtype)


def bias_check(g_pos: Tensor, g_bias: Tensor) -> float:
    """How far the patch embedding's bias gradient is from Σ_n ∂L/∂z_n (its exact value), relative: a check
    the attacker can make on the observed gradients alone (0 when the update is a plain gradient)."""
    expected = g_pos[1:].double().sum(0)
    return float((g_bias.double() - expected).norm() / expected.norm().clamp_min(1e-30))
