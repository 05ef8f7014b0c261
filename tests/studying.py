"""`fedleak study` as the tests drive it from Python: :func:`fedleak.studies.run_study`, then the
report that the command writes after it (:func:`fedleak.report.study.write_report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedleak import studies
from fedleak.report.study import write_report
from fedleak.store import locked


def run_study(study: Any, preset: str, out: Path, *args: Any, **kwargs: Any) -> Any:
    outcome = studies.run_study(study, preset, out, *args, **kwargs)
    with locked(out):
        write_report(out)
    return outcome
