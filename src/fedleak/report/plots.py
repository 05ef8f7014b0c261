"""matplotlib on the file-only Agg backend, and figures turned into bytes for embedding."""

from __future__ import annotations

import io
from typing import Any

DPI = 120


def pyplot() -> Any:
    """``matplotlib.pyplot`` drawing off screen (reports are files; no display is needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_bytes(fig: Any, fmt: str = "png") -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=DPI)
    return buffer.getvalue()
