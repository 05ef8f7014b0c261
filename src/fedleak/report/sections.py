"""A run report's reconstruction section, per modality: a lookup table, not ``if text:`` branches.

``SECTIONS[modality](evaluation, classes) → Markup`` renders the part of ``report.html`` that shows what
was recovered against the client's batch. A modality without an entry (images) keeps the page's own
grid of originals above their reconstructions (``run.html.j2``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from markupsafe import Markup

from fedleak.registry import Registry
from fedleak.report.text import text_section

Section = Callable[[Any, Sequence[str]], Markup]
SECTIONS: Registry[Section] = Registry("report section")
SECTIONS.register("text")(text_section)


def reconstruction_section(modality: str, evaluation: Any, classes: Sequence[str] = ()) -> Markup | None:
    """The modality's section for ``evaluation`` (its metrics' result), or ``None`` where the page draws
    the reconstruction itself (a modality without an entry: images)."""
    return SECTIONS.get(modality)(evaluation, classes) if modality in SECTIONS else None
