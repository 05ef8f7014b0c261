"""What the ``fedleak`` commands share: the console, the ``--debug`` state, and options of several commands."""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console


class _Console:
    """Rich output that is whole in logs and pipes: on a terminal Rich fits the screen; elsewhere
    (``| grep``, a log file, CI) no table is cut and no line is wrapped at 80 columns."""

    WIDE = 100_000  # wider than any table fedleak prints

    def print(self, *objects: Any, **options: Any) -> None:
        wide = not sys.stdout.isatty()
        Console(file=sys.stdout, width=self.WIDE if wide else None, soft_wrap=wide).print(*objects, **options)


console = _Console()


_state = {"debug": False}
MAX_SEED = 2**63 - 1  # seeds are 64-bit signed for torch and NumPy; negative ones are refused


def _finite(value: float | None) -> float | None:
    """Option callback: ``inf`` and ``nan`` parse as floats but are never a sensible setting."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def _yaml(tree: dict[str, Any]) -> str:
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


TrustOption = Annotated[bool, typer.Option(
    "--trust-config", help="let the --config file name a package.module:factory for fedleak to import "
                           "(without it, only the command line names code: --model, --set, --grid)")]

