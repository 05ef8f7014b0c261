"""Aggregation helpers shared by the studies: group stored runs and summarise their metrics."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fedleak.store import RunRecord


def value(record: RunRecord, key: str) -> Any:
    """A grid coordinate (``params``) or a metric of a record."""
    return record.params[key] if key in record.params else record.metrics.get(key)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def group(records: Sequence[RunRecord], by: Sequence[str]) -> dict[tuple, list[RunRecord]]:
    """Records grouped by the values of ``by``, groups in the order they first appear."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(tuple(value(r, k) for k in by), []).append(r)
    return groups


def summarize(records: Sequence[RunRecord], by: Sequence[str], metrics: Sequence[str],
              extra: Callable[[list[RunRecord]], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per group: the ``by`` values, ``runs``, and mean and standard deviation of each metric."""
    rows = []
    for key, members in group(records, by).items():
        row: dict[str, Any] = dict(zip(by, key))
        row["runs"] = len(members)
        for m in metrics:
            row[m], row[f"{m}_std"] = mean_std(value(r, m) for r in members)
        if extra is not None:
            row.update(extra(members))
        rows.append(row)
    return rows
