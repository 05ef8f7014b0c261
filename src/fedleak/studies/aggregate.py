"""Aggregation helpers shared by the studies: group stored runs and summarise their metrics.

Every summarised metric gets the columns ``m`` (mean), ``m_std`` (sample standard deviation),
``m_n`` (how many runs had a value: LPIPS without weights, say, has none) and ``m_ci_low`` /
``m_ci_high``, a 95 % confidence interval of the mean from Student's t distribution
(mean ± t₀.₉₇₅,ₙ₋₁ · s/√n), given from :data:`MIN_INTERVAL_N` = 3 runs: fewer give no interval
(NaN, shown as n/a). A single number carries no error bar, not a zero-width one; and two runs give
t₀.₉₇₅,₁ = 12.7, so their "interval" is the mean ± 6.4 × their difference — runs at 14 and 20 dB give
17.0 [−21.1, 55.1] — which says nothing a reader could use. Rates (a fraction of successes) get a Wilson score interval
instead (:func:`proportion`), which stays inside [0, 1] and is sensible for small n.

Where the runs stored their no-leak baselines (:mod:`fedleak.metrics.baselines`), ``psnr`` and
``ssim`` also get ``psnr_no_leak`` / ``ssim_no_leak``: the mean over the group's runs of each run's
no-leak baseline, to read the mean beside.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from scipy.stats import norm, t

from fedleak.metrics.baselines import best_guess
from fedleak.store import RunRecord

CONFIDENCE = 0.95
MIN_INTERVAL_N = 3  # the fewest runs a table's t-interval is given from (see the module docstring)
NO_LEAK = "_no_leak"  # suffix of a metric's no-leak baseline column
STAT_SUFFIXES = ("_std", "_n", "_ci_low", "_ci_high")  # the columns beside a metric's mean


def value(record: RunRecord, key: str) -> Any:
    """A grid coordinate (``params``) or a metric of a record."""
    return record.params[key] if key in record.params else record.metrics.get(key)


def quality(records: Sequence[RunRecord]) -> list[str]:
    """The quality columns: PSNR, SSIM, ROG's SSIM and the semantic overlap where the runs have them
    (``ssim_rog``, to set beside the ROG paper's numbers; ``semantic``), each LPIPS backbone the runs scored (n/a without weights), label
    accuracy and attack time."""
    lpips = sorted({k for r in records for k in r.metrics if k.startswith("lpips_")})
    extra = [k for k in ("ssim_rog", "semantic") if any(r.metrics.get(k) is not None for r in records)]
    return ["psnr", "ssim", *extra, *lpips, "label_accuracy", "attack_seconds"]


def _finite(values: Iterable[Any]) -> list[float]:
    """The numbers among ``values`` (``None``, NaN, and non-numbers such as n/a dropped)."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isnan(v):
            out.append(float(v))
    return out


@dataclass(frozen=True)
class Summary:
    """Mean, spread and 95 % t-interval of a sample (NaN where undefined)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    def columns(self, name: str) -> dict[str, Any]:
        return {name: self.mean, f"{name}_std": self.std, f"{name}_n": self.n,
                f"{name}_ci_low": self.ci_low, f"{name}_ci_high": self.ci_high}


def t_interval(values: Iterable[Any], confidence: float = CONFIDENCE, min_n: int = 2) -> Summary:
    """The sample's mean with a two-sided Student-t confidence interval; fewer than ``min_n``
    (at least 2) values have none."""
    vals = _finite(values)
    n = len(vals)
    if not n:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(vals)
    if n == 1:
        return Summary(1, mean, 0.0, math.nan, math.nan)
    std = statistics.stdev(vals)
    if n < min_n:
        return Summary(n, mean, std, math.nan, math.nan)
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def stats(name: str, values: Iterable[Any]) -> dict[str, Any]:
    """The table columns of one metric: mean, std, n and the 95 % interval (from
    :data:`MIN_INTERVAL_N` values)."""
    return t_interval(values, min_n=MIN_INTERVAL_N).columns(name)


def no_leak(records: Sequence[RunRecord], metric: str) -> dict[str, Any]:
    """``{metric_no_leak: mean}`` of the runs' no-leak baselines on ``metric`` (``psnr``/``ssim``);
    empty where no run stored baselines."""
    base = [b[metric] for b in (best_guess(r.metrics.get("baselines")) for r in records) if b is not None]
    vals = _finite(base)
    return {f"{metric}{NO_LEAK}": statistics.fmean(vals)} if vals else {}


def proportion(name: str, successes: int, n: int, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The table columns of a rate ``successes / n``: the rate, ``n`` and its Wilson score interval
    (which, unlike the normal approximation, stays inside [0, 1] and is sensible for small n)."""
    if n <= 0:
        return {name: math.nan, f"{name}_n": 0, f"{name}_ci_low": math.nan, f"{name}_ci_high": math.nan}
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {name: p, f"{name}_n": n, f"{name}_ci_low": max(0.0, center - half),
            f"{name}_ci_high": min(1.0, center + half)}


def group(records: Sequence[RunRecord], by: Sequence[str]) -> dict[tuple, list[RunRecord]]:
    """Records grouped by the values of ``by``, groups in the order they first appear."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(tuple(_hashable(value(r, k)) for k in by), []).append(r)
    return groups


def _hashable(v: Any) -> Any:
    """Grid values may be lists or mappings (e.g. ``model.options``): group them by their JSON text."""
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return v


def summarize(records: Sequence[RunRecord], by: Sequence[str], metrics: Sequence[str],
              extra: Callable[[list[RunRecord]], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per group: the ``by`` values, ``runs`` (n), and each metric's mean, standard
    deviation, count and 95 % confidence interval, with PSNR's and SSIM's no-leak baselines (see
    the module docstring)."""
    rows = []
    for key, members in group(records, by).items():
        row: dict[str, Any] = dict(zip(by, key))
        row["runs"] = len(members)
        for m in metrics:
            row.update(stats(m, (value(r, m) for r in members)))
            if m in ("psnr", "ssim"):
                row.update(no_leak(members, m))
        if extra is not None:
            row.update(extra(members))
        rows.append(row)
    return rows
