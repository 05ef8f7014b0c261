"""SPEAR's linear algebra (Dimitrov et al., NeurIPS 2024): a batch read off one fully connected layer.

For ``Z = W X + b`` (W: m×n, the B inputs as the columns of X) followed by a ReLU, the weight
gradient is ``G = (∂L/∂Z) Xᵀ``, of rank ≤ B, and the bias gradient is ``g_b = (∂L/∂Z) 1``. A truncated
SVD ``G ≈ U_B S_B V_Bᵀ`` gives ``L = U_B`` (m×B) and ``R = S_B V_Bᵀ`` (B×n) with ``∂L/∂Z = L Q`` and
``Xᵀ = Q⁻¹ R`` for an unknown invertible Q. The ReLU zeroes column i of ``∂L/∂Z`` wherever image i's
pre-activation is negative (about half of the rows), so a column q_i of Q is the null vector of any
B−1 rows of L taken from that zero set. :class:`DirectionSearch` samples random (B−1)-row subsets,
keeps the null vectors q whose ``L q`` has at least ``sparsity`` of its m entries (near) zero (first
on a small probe of rows, then on all) and deduplicates them by their zero pattern (patterns within
5 % of the rows are one direction); :func:`greedy` picks B of them, sparsest first, skipping any
(nearly) in the span of those already picked; :func:`refine` re-solves each as the least-squares
null vector of all its zero rows; :func:`solve`
fixes each column's scale from the bias gradient by least squares (``g_b = L Q s``) and returns
``X = (diag(s)⁻¹ Q⁻¹ R)ᵀ``; :func:`certify` is the attacker's own check: the zero pattern of column i
of ``∂L/∂Z`` must equal the set where ``W x_i + b ≤ 0``. All of it runs in float64.

Noise on the update (DP-style) makes G full rank: the top-B singular subspace is used, and the zero
tolerance grows with the noise level ``ν = σ_{B+1} / σ_B`` read off the singular values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class Factors:
    """``G ≈ L R`` at rank B, with the singular values it was read from."""

    L: Tensor  # m×B, orthonormal columns
    R: Tensor  # B×n
    singular: Tensor  # every singular value, descending
    rank: int  # the numerical rank: singular values above ``rank_tol`` × the largest
    noise: float  # ν = σ_{B+1} / σ_B (0 when G has no (B+1)-th singular value)
    residual: float  # ‖G − L R‖_F / ‖G‖_F: how well a batch of B explains the update


def factor(gw: Tensor, batch: int, rank_tol: float = 1e-5) -> Factors:
    """The rank-``batch`` truncated SVD of the weight gradient ``gw`` (m×n, float64)."""
    u, s, vh = torch.linalg.svd(gw, full_matrices=False)
    top = float(s[0]) if s.numel() else 0.0
    rank = int((s > rank_tol * top).sum()) if top > 0 else 0
    noise = float(s[batch] / s[batch - 1]) if s.numel() > batch and s[batch - 1] > 0 else 0.0
    lr = (u[:, :batch] * s[:batch]) @ vh[:batch]
    residual = float(torch.linalg.norm(gw - lr) / torch.linalg.norm(gw)) if top > 0 else 0.0
    return Factors(L=u[:, :batch], R=s[:batch, None] * vh[:batch], singular=s, rank=rank, noise=noise,
                   residual=residual)


def zero_mask(v: Tensor, tol: float) -> Tensor:
    """Entries of each column of ``v`` that count as zero: ``|v| ≤ tol · rms(column)``."""
    rms = v.pow(2).mean(dim=0, keepdim=True).sqrt()
    return v.abs() <= tol * rms


def null_vectors(rows: Tensor) -> Tensor:
    """Unit null vectors of a stack of (B−1)×B matrices (N×(B−1)×B → N×B), from a complete QR of
    their transposes; sign fixed so that the entry of largest magnitude is positive."""
    q, _ = torch.linalg.qr(rows.transpose(1, 2), mode="complete")
    v = q[:, :, -1]
    sign = torch.sign(v.gather(1, v.abs().argmax(dim=1, keepdim=True)))
    return v * sign


@dataclass
class DirectionSearch:
    """Candidate columns of Q from random (B−1)-row subsets of L's live rows (rows that are not zero
    for every image), seeded by ``generator``; ``pool`` holds (direction, zero count, zero pattern
    over the live rows), at most ``max_pool`` of the sparsest."""

    L: Tensor
    sparsity: float
    tol: float
    generator: torch.Generator
    probe_size: int = 128
    max_pool: int = 64
    live: Tensor = field(init=False)
    probe: Tensor = field(init=False)
    near: float = 0.05
    pool: list[tuple[Tensor, int, Tensor]] = field(default_factory=list, init=False)
    sampled: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        norms = self.L.norm(dim=1)
        self.live = torch.nonzero(norms > 1e-9 * norms.max()).flatten()
        order = torch.randperm(self.live.numel(), generator=self.generator)
        self.probe = self.live[order[: self.probe_size].to(self.live.device)]
        if self.L.shape[1] == 1:  # one image: Q is 1×1
            one = torch.ones(1, dtype=self.L.dtype, device=self.L.device)
            self.pool.append((one, self.L.shape[0], torch.ones(self.live.numel(), dtype=torch.bool)))

    @property
    def batch(self) -> int:
        return int(self.L.shape[1])

    def sample(self, count: int) -> int:
        """Draw ``count`` row subsets; return how many new zero patterns joined the pool."""
        b, live = self.batch, self.live.numel()
        if b == 1 or live < b - 1:
            return 0
        picks = torch.randint(live, (count, b - 1), generator=self.generator).sort(dim=1).values
        distinct = (picks[:, 1:] != picks[:, :-1]).all(dim=1)  # a repeated row is a wasted draw
        rows = self.live[picks[distinct].to(self.L.device)]
        self.sampled += count
        if not rows.shape[0]:
            return 0
        q = null_vectors(self.L[rows])
        probe = zero_mask(self.L[self.probe] @ q.T, self.tol).sum(dim=0)
        dead = 1 - live / self.L.shape[0]  # the probe holds live rows only
        q = q[probe >= 0.75 * max(0.0, self.sparsity - dead) / (1 - dead) * self.probe.numel()]
        if not q.shape[0]:
            return 0
        zeros = zero_mask(self.L[self.live] @ q.T, self.tol)
        counts = zeros.sum(dim=0) + (self.L.shape[0] - live)  # a row dead for every image is zero in each
        keep = counts >= self.sparsity * self.L.shape[0]
        q, zeros, counts = q[keep], zeros[:, keep].T, counts[keep]
        # Exact duplicates first (without noise each direction is found again and again).
        _, first = np.unique(np.packbits(zeros.cpu().numpy(), axis=1), axis=0, return_index=True)
        order = sorted(first.tolist(), key=lambda i: -int(counts[i]))[: 4 * self.max_pool]
        added = sum(self.merge(q[i], zeros[i], int(counts[i])) for i in order)
        if len(self.pool) > self.max_pool:
            self.pool = sorted(self.pool, key=lambda e: -e[1])[: self.max_pool]
        return added

    def merge(self, direction: Tensor, pattern: Tensor, count: int) -> bool:
        """Add a candidate unless its zero pattern is within ``near`` (a share of the live rows) of a
        pooled one's — the same direction, its border entries flipped by noise —, in which case the
        sparser of the two stays; whether the pool changed."""
        for k, (_, n, known) in enumerate(self.pool):
            if int((known ^ pattern).sum()) <= self.near * pattern.numel():
                if count <= n:
                    return False
                self.pool[k] = (direction, count, pattern)
                return True
        self.pool.append((direction, count, pattern))
        return True

    def ranked(self) -> tuple[Tensor, list[int]]:
        """The pool's directions (B×k, as columns), sparsest first, with their zero counts."""
        items = sorted(self.pool, key=lambda e: -e[1])
        if not items:
            return self.L.new_zeros(self.batch, 0), []
        return torch.stack([d for d, _, _ in items], dim=1), [n for _, n, _ in items]


def greedy(candidates: Tensor, batch: int, indep_tol: float) -> Tensor:
    """Up to ``batch`` columns of ``candidates`` (unit vectors, best first): each is taken unless its
    distance to the span of those already taken is below ``indep_tol`` (a duplicate or a mixture)."""
    chosen: list[Tensor] = []
    basis = candidates.new_zeros(candidates.shape[0], 0)
    for j in range(candidates.shape[1]):
        q = candidates[:, j]
        rest = q - basis @ (basis.T @ q)
        if rest.norm() > indep_tol:
            chosen.append(q)
            basis = torch.cat([basis, (rest / rest.norm())[:, None]], dim=1)
            if len(chosen) == batch:
                break
    return torch.stack(chosen, dim=1) if chosen else candidates.new_zeros(candidates.shape[0], 0)


def refine(L: Tensor, directions: Tensor, tol: float, rounds: int = 2) -> Tensor:
    """Each direction re-solved as the least-squares null vector (the last right singular vector) of
    all the rows of L where ``L q`` is zero, not just the B−1 it was sampled from; under noise this
    averages hundreds of rows. A direction whose zero rows do not pin it down (fewer than B−1) is
    kept as it is."""
    out = directions.clone()
    for j in range(directions.shape[1]):
        q = out[:, j]
        for _ in range(rounds):
            rows = zero_mask((L @ q)[:, None], tol)[:, 0]
            if int(rows.sum()) < L.shape[1] - 1:
                break
            new = torch.linalg.svd(L[rows], full_matrices=False).Vh[-1]
            q = new * torch.sign(new @ q)
        out[:, j] = q
    return out


def complete(directions: Tensor, batch: int) -> Tensor:
    """``directions`` (B×k, k ≤ B) completed to an invertible B×B matrix with an orthonormal basis
    of the rest of the space (the missing images will not be exact)."""
    k = directions.shape[1]
    if k == batch:
        return directions
    q, _ = torch.linalg.qr(torch.cat([directions, torch.eye(batch, dtype=directions.dtype,
                                                            device=directions.device)], dim=1))
    return torch.cat([directions, q[:, k:batch]], dim=1)


def solve(f: Factors, gb: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """``∂L/∂Z`` (m×B) and the inputs X (B×n, one row per image) for chosen unit directions Q̂ (B×B):
    the scales s solve ``L Q̂ s ≈ g_b`` by least squares, then ``∂L/∂Z = L Q̂ diag(s)`` and
    ``Xᵀ = diag(s)⁻¹ Q̂⁻¹ R``."""
    a = f.L @ directions
    s = torch.linalg.lstsq(a, gb[:, None]).solution.flatten()
    tiny = s.abs() <= 1e-12 * s.abs().max().clamp_min(1e-300)
    s = torch.where(tiny, torch.ones_like(s), s)
    x = torch.linalg.solve(directions, f.R) / s[:, None]
    x[tiny] = 0
    return a * s, x


def certify(dz: Tensor, x: Tensor, weight: Tensor, bias: Tensor, tol: float, slack: float = 0.005) -> Tensor:
    """Per image, whether the zero pattern of its column of ``∂L/∂Z`` equals where its
    pre-activation ``W x + b`` is ≤ 0: no row with ``W x + b < 0`` may carry a gradient (ReLU zeroes
    it exactly), and at most ``slack`` of the rows (at least one) with ``W x + b > 0`` may look zero
    (an active unit whose gradient is tiny by chance); rows with ``|W x + b|`` within ``tol`` × its
    rms are not judged. A wrong input breaks both on a large share of the rows."""
    z = x @ weight.T + bias  # B×m
    observed = zero_mask(dz, tol).T
    clear = z.abs() > tol * z.pow(2).mean(dim=1, keepdim=True).sqrt()
    leaks = (clear & (z < 0) & ~observed).sum(dim=1)
    silent = (clear & (z > 0) & observed).sum(dim=1)
    allowed = max(1, int(slack * z.shape[1]))
    return (leaks == 0) & (silent <= allowed) & (x.abs().sum(dim=1) > 0)


@dataclass
class Recovery:
    """What :func:`recover` found: the inputs (B×n), which of them are certified, and how."""

    inputs: Tensor
    certified: Tensor
    factors: Factors
    sampled: int
    found: int  # independent directions found (B when Q is complete)


def recover(gw: Tensor, gb: Tensor, weight: Tensor, bias: Tensor, batch: int, samples: int, chunk: int,
            sparsity: float, zero_tol: float, generator: torch.Generator) -> Recovery:
    """SPEAR on one layer's gradients (all float64): sample up to ``samples`` row subsets in chunks of
    ``chunk``, stopping as soon as B chosen directions give B certified inputs."""
    f = factor(gw, batch)
    tol = max(zero_tol, min(0.5, 3 * f.noise))
    indep = max(1e-4, min(0.3, 10 * f.noise))
    search = DirectionSearch(f.L, sparsity, tol, generator)
    best: tuple[int, Tensor, Tensor, int] | None = None
    fresh = True
    while True:
        if fresh:
            candidates, _ = search.ranked()
            chosen = refine(f.L, greedy(candidates, batch, indep), tol)
            dz, x = solve(f, gb, complete(chosen, batch))
            ok = certify(dz, x, weight, bias, tol)
            if best is None or int(ok.sum()) >= int(best[2].sum()):
                best = (chosen.shape[1], x, ok, search.sampled)
            if bool(ok.all()):
                break
        if search.sampled >= samples or batch == 1:
            break
        fresh = search.sample(min(chunk, samples - search.sampled)) > 0
    assert best is not None  # the first pass always checks
    found, x, ok, _ = best
    return Recovery(inputs=x, certified=ok, factors=f, sampled=search.sampled, found=found)
