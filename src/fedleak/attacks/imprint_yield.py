"""What a malicious server would get: the share of a client's N examples that Robbing the Fed's imprint
(Fowl et al., ICLR 2022) recovers exactly, in closed form, to show beside an honest-server result.

**Where the examples fall.** fedleak's :class:`~fedleak.fl.modifications.Imprint` sets B thresholds
t_1 < … < t_B at the quantiles k/(B+1) of a linear measurement m(x) over the server's public images
(:func:`~fedleak.fl.modifications.bin_thresholds`); row i fires for m(x) > t_i. That makes B + 1
intervals: I_0 = (−∞, t_1] fires no row, so an example there leaves no trace (and disturbs no
other); I_j = (t_j, t_{j+1}] for j = 1 … B−1 is the difference of rows j and j+1; I_B = (t_B, ∞)
fires row B alone, read against an all-zero row. :class:`~fedleak.attacks.imprint.ImprintRecovery`
recovers an example exactly iff it is the only one of the N examples in its interval I_j, j ≥ 1 (a
bin of several gives a weighted mean of them; the attack keeps every filled bin, as at most N are).

**The yield.** With interval probabilities p_j for one example's measurement (independent
examples), example i is recovered iff it falls in some I_j, j ≥ 1, and none of the N − 1 others do:

    share = Σ_{j≥1} p_j (1 − p_j)^{N−1},   expected exact recoveries = N · share.

At the server's own quantiles (the client's data distributed as the public data), p_j = 1/(B+1) for
every interval, and share = (B/(B+1))^N: B/(B+1) for N = 1 (only the untracked lower tail is
lost; an example in range is always recovered), about e^{−N/B} for large N and B, ~0 for N ≫ B. The
count's variance
follows from the pairwise terms P(I_j and I_k each hold exactly one) = N(N−1) p_j p_k
(1 − p_j − p_k)^{N−2} (the occupancy distribution; examples are exchangeable, bins are not
independent). With aggregation over K clients the bins separate all K·B_client examples together:
pass N = K·B_client.

The block costs 2·n·B + B parameters (encoder W, b; decoder D) for inputs of n values;
:func:`bins_for_share` gives the fewest bins that reach a share, which is what a server that chooses
``bins`` for a client of N examples would pick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedleak.errors import FedleakError


def bin_probabilities(thresholds: Tensor | np.ndarray, measured: Tensor | np.ndarray) -> np.ndarray:
    """p_0 … p_B: the share of ``measured`` (a sample of the client examples' measurement) in
    (−∞, t_1], (t_1, t_2], …, (t_B, ∞) for the ``thresholds`` t (any order; sorted here), counted as
    the block does: an example is in I_j when exactly rows 1 … j fire (m > t_i; ReLU(0) is silent)."""
    t = np.sort(np.asarray(thresholds, dtype=np.float64).ravel())
    m = np.asarray(measured, dtype=np.float64).ravel()
    if t.size == 0 or m.size == 0:
        raise FedleakError("bin probabilities need at least one threshold and one measurement")
    fired = np.searchsorted(t, m, side="left")  # how many thresholds lie strictly below m
    return np.bincount(fired, minlength=t.size + 1) / m.size


def equal_bins(bins: int) -> np.ndarray:
    """The interval probabilities at the server's own quantiles: 1/(B+1) each, I_0 included."""
    if bins < 1:
        raise FedleakError(f"an imprint block needs at least one bin, got {bins}")
    return np.full(bins + 1, 1.0 / (bins + 1))


def _probabilities(bins: int | Tensor | np.ndarray, measured: Tensor | np.ndarray | None) -> np.ndarray:
    if isinstance(bins, int):
        return equal_bins(bins) if measured is None else bin_probabilities(
            np.quantile(np.asarray(measured, dtype=np.float64), np.arange(1, bins + 1) / (bins + 1)), measured)
    if measured is None:
        raise FedleakError("explicit thresholds need a sample of the measurement (measured=…) to weigh the bins")
    return bin_probabilities(bins, measured)


def _check(examples: int) -> None:
    if examples < 1:
        raise FedleakError(f"the client must hold at least one example, got {examples}")


def imprint_share(examples: int, bins: int | Tensor | np.ndarray, measured: Tensor | np.ndarray | None = None) -> float:
    """Expected share of a client's ``examples`` (N) the imprint attack recovers exactly:
    Σ_{j≥1} p_j (1 − p_j)^{N−1}. ``bins``: the block's number of bins B at the server's own
    quantiles (p_j = 1/(B+1), share = (B/(B+1))^N), or its thresholds with ``measured``, a sample
    of the client examples' measurement that gives the p_j (:func:`bin_probabilities`); an ``int``
    with ``measured`` places the thresholds at that sample's quantiles."""
    _check(examples)
    p = _probabilities(bins, measured)[1:]
    return float(np.sum(p * np.power(1.0 - p, examples - 1)))


@dataclass(frozen=True)
class ImprintYield:
    """The malicious-server figure for one client: of ``examples`` examples, the expected ``share``
    and ``count`` recovered exactly, the count's standard deviation, and the block's size."""

    examples: int
    bins: int
    share: float
    count: float
    std: float
    parameters: int | None = None


def imprint_yield(examples: int, bins: int | Tensor | np.ndarray, measured: Tensor | np.ndarray | None = None,
                  input_shape: tuple[int, ...] | None = None) -> ImprintYield:
    """:func:`imprint_share`, the expected count N·share and its standard deviation, from the
    exact occupancy moments: E[X] = Σ_j q_j with q_j = N p_j (1−p_j)^{N−1} and E[X²] = Σ_j q_j +
    Σ_{j≠k} N(N−1) p_j p_k (1 − p_j − p_k)^{N−2} (j, k ≥ 1); with ``input_shape``, the block's
    parameter count (:func:`imprint_parameters`)."""
    _check(examples)
    p_all = _probabilities(bins, measured)
    p, n = p_all[1:], examples
    q = n * p * np.power(1.0 - p, n - 1)
    mean = float(q.sum())
    second = mean
    if n >= 2:
        pair = n * (n - 1) * np.outer(p, p) * np.power(np.clip(1.0 - p[:, None] - p[None, :], 0.0, None), n - 2)
        second += float(pair.sum() - np.trace(pair))
    size = None if input_shape is None else imprint_parameters(len(p), input_shape)
    return ImprintYield(examples=n, bins=len(p), share=mean / n, count=mean,
                        std=math.sqrt(max(second - mean * mean, 0.0)), parameters=size)


def imprint_parameters(bins: int, input_shape: tuple[int, ...]) -> int:
    """Parameters the imprint block adds to the model: encoder weight and bias, decoder weight,
    2·n·B + B for inputs of n values."""
    n = math.prod(input_shape)
    return 2 * n * bins + bins


def bins_for_share(examples: int, share: float) -> int:
    """The fewest bins B whose expected exact share (B/(B+1))^N at the server's own quantiles is
    at least ``share`` (0 < share < 1): B = ⌈1 / (share^{−1/N} − 1)⌉."""
    _check(examples)
    if not 0 < share < 1:
        raise FedleakError(f"a target share must lie strictly between 0 and 1, got {share}")
    b = max(1, math.ceil(1.0 / math.expm1(-math.log(share) / examples) - 1e-9))
    while (b / (b + 1)) ** examples < share:  # guard the float rounding of the closed form
        b += 1
    return b


def block_measurement(weight: Tensor, bias: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """The measurement and thresholds of an imprint block as its rows see them: ``weight[0] · x``
    for each flattened normalised input and the thresholds ``−bias`` (every row holds the same
    vector, scaled), in float64 — for :func:`bin_probabilities` on a sent model."""
    w = weight.detach().to(torch.float64)
    return inputs.flatten(1).to(torch.float64) @ w[0], -bias.detach().to(torch.float64)
