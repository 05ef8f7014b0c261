"""Drawing helpers the studies' figures share (each draws on a matplotlib ``ax``)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any


def grouped_bars(ax: Any, rows: list[dict[str, Any]], group: Callable[[dict[str, Any]], Hashable], series: str,
                 value: str, groups: Sequence[Hashable] | None = None,
                 label: Callable[[Any], str] = str) -> list[Hashable]:
    """Bars of column ``value``: one group per ``group(row)`` (``groups``, or those of ``rows`` in order of
    appearance), one bar in each group per distinct ``series`` value (0 where that series has no row),
    with a tick at each group's centre. Returns the groups, for the tick labels."""
    groups = list(dict.fromkeys(group(r) for r in rows)) if groups is None else list(groups)
    names = list(dict.fromkeys(r[series] for r in rows))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        heights = {group(r): r[value] for r in rows if r[series] == name}
        ax.bar([i + j * width for i in range(len(groups))], [heights.get(g, 0.0) for g in groups], width,
               label=label(name))
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))])
    return groups


def rate_axes(ax: Any, x_label: str, y_label: str, margin: float, legend_size: float | None = None) -> None:
    """Axes for a rate (a fraction, shown ``margin`` beyond [0, 1]) against a batch size on a log-2 scale."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_ylim(-margin, 1 + margin)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
