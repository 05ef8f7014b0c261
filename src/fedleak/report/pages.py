"""A run report per modality: what its first table shows and what it adds to ``metrics.json``, to the
run folder and to ``report.html`` (:data:`PAGES`, filled by :mod:`fedleak.report.run` for images and
:mod:`fedleak.report.text_run` for text)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedleak.pipeline import RunResult
from fedleak.registry import Registry


@dataclass(frozen=True)
class Parts:
    """A modality's share of a run folder: keys added to ``metrics.json``, files (name → bytes) and
    the template's variables (``section``: a modality's own reconstruction section, else ``None``)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    page: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    """``summary(result, baselines)`` → the first table (label → text, also the console's row);
    ``parts(result, baselines)`` → :class:`Parts`."""

    summary: Callable[[RunResult, dict[str, Any]], dict[str, str]]
    parts: Callable[[RunResult, dict[str, Any]], Parts]


PAGES: Registry[Page] = Registry("report page")
