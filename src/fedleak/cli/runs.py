"""``fedleak runs list|show|export``: a study's results database."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape  # run names hold grid values, which are no markup
from rich.table import Table

from fedleak.cli.common import console
from fedleak.errors import ConfigError
from fedleak.metrics.baselines import best_guess, verdict
from fedleak.store import ResultsDB, RunRecord, write_text_atomically
from fedleak.studies.flower_audit import STUDY as AUDIT_STUDY
from fedleak.studies.flower_audit import histogram_text, labels_of, verdict_text
from fedleak.studies.runner import DB_NAME

runs_app = typer.Typer(help="Inspect a study's results database.", no_args_is_help=True)


def _db(folder: Path) -> ResultsDB:
    if not (folder / DB_NAME).is_file():
        raise ConfigError(f"{str(folder)!r} holds no results database ({DB_NAME})")
    return ResultsDB(folder / DB_NAME, create=False)


@runs_app.command("list")
def runs_list(
    folder: Annotated[Path, typer.Argument(help="study folder")],
    failed: Annotated[bool, typer.Option("--failed", help="the runs that failed, with their errors")] = False,
) -> None:
    """One line per finished run: key, name, PSNR and SSIM beside their no-leak baselines (flagged where
    the run does no better), seconds; for a Flower audit, one per audited update: round, client, risk,
    verdict, update fit, images, the class counts recovered (class: count), the share an imprint server
    would recover exactly, PSNR where scored (with --failed:
    each failed run's error and attempts; the next `fedleak study`/`sweep` into the folder retries them)."""
    with _db(folder) as db:
        records, failures = db.records(), db.failures()
    if failed:  # plain lines: errors are long, and their text is not markup
        print(f"{len(failures)} failed run{'s' if len(failures) != 1 else ''} in {folder}"
              + (" (the next study or sweep into it retries them)"
               if failures and any(f.study != AUDIT_STUDY for f in failures) else ""))  # an audit is not re-run
        for f in failures:
            where = f"  on {f.host}" if f.host else ""
            print(f"{f.key}  {f.study}  {f.name}  attempts {f.attempts}{where}\n    {f.error}")
        return
    also = f" ({len(failures)} failed: --failed)" if failures else ""
    audits = bool(records) and all(r.study == AUDIT_STUDY for r in records)
    text = bool(records) and all(r.metrics.get("modality") == "text" for r in records)
    table = Table(title=f"{len(records)} {'audited updates' if audits else 'runs'} in {folder}{also}")
    columns, numbers, row = LISTINGS[(audits, text)]
    for col in columns:
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in records:
        table.add_row(*row(r))
    console.print(table)


RUN_NUMBERS = ("PSNR", "no-leak PSNR", "SSIM", "no-leak SSIM", "seconds")
RUN_COLUMNS = ("key", "study", "name", *RUN_NUMBERS, "vs no-leak")
AUDIT_NUMBERS = ("round", "risk", "update fit", "images", "imprint share", "PSNR", "seconds")
AUDIT_COLUMNS = ("key", "round", "client", "risk", "verdict", "update fit", "images", "class counts (class: count)",
                 "imprint share", "PSNR", "seconds")


def _run_row(r: RunRecord) -> list[str]:
    """An attack run: its scores beside the no-leak baselines."""
    guess = best_guess(r.metrics.get("baselines"))
    return [r.key, r.study, escape(r.name), _score(r.metrics.get("psnr"), 2), _score(guess and guess["psnr"], 2),
            _score(r.metrics.get("ssim"), 3), _score(guess and guess["ssim"], 3), f"{r.seconds:.1f}",
            "" if guess is None else (verdict(r.metrics, guess) or "above").replace(" the no-leak baseline", "")]


def _audit_row(r: RunRecord) -> list[str]:
    """An audited update of a Flower federation: what the server could observe (PSNR only where a
    simulation shared the batch for scoring), the verdict where the audit gave one."""
    m = r.metrics
    return [r.key, str(m.get("round", "")), escape(str(m.get("client", ""))), _score(m.get("risk"), 2),
            escape(verdict_text(m.get("verdict"))), _score(m.get("update_fit"), 3), str(m.get("observed_images", "n/a")),
            escape(histogram_text(labels_of(m))), _score(m.get("malicious_share"), 3), _score(m.get("psnr"), 2),
            f"{r.seconds:.1f}"]


TEXT_NUMBERS = ("exact", "ROUGE-1", "no-leak ROUGE-1", "PII", "seconds")
TEXT_RUN_COLUMNS = ("key", "study", "name", *TEXT_NUMBERS)
TEXT_AUDIT_NUMBERS = ("round", "update fit", *TEXT_NUMBERS)
TEXT_AUDIT_COLUMNS = ("key", "round", "client", "verdict", "update fit", *TEXT_NUMBERS)


def _text_scores(m: dict[str, Any]) -> list[str]:
    """A text run's exact sequences, ROUGE-1 beside an unrelated sentence's, PII spans recovered."""
    other = m.get("other_text") or (m.get("baselines") or {}).get("other_text") or {}
    exact = f"{m['exact_sequences']}/{m['sequences']}" if m.get("sequences") is not None else "n/a"
    pii = f"{m['pii_recovered_spans']}/{m['pii_spans']}" if m.get("pii_spans") else "n/a"
    return [exact, _score(m.get("rouge1"), 2), _score(other.get("rouge1") if isinstance(other, dict) else None, 2),
            pii]


def _text_run_row(r: RunRecord) -> list[str]:
    return [r.key, r.study, escape(r.name), *_text_scores(r.metrics), f"{r.seconds:.1f}"]


def _text_audit_row(r: RunRecord) -> list[str]:
    m = r.metrics
    return [r.key, str(m.get("round", "")), escape(str(m.get("client", ""))), escape(verdict_text(m.get("verdict"))),
            _score(m.get("update_fit"), 3), *_text_scores(m), f"{r.seconds:.1f}"]


# (a Flower audit's folder?, text?) → the columns, which of them are numbers, one record's row
LISTINGS: dict[tuple[bool, bool], tuple[tuple[str, ...], tuple[str, ...], Callable[[RunRecord], list[str]]]] = {
    (False, False): (RUN_COLUMNS, RUN_NUMBERS, _run_row),
    (True, False): (AUDIT_COLUMNS, AUDIT_NUMBERS, _audit_row),
    (False, True): (TEXT_RUN_COLUMNS, TEXT_NUMBERS, _text_run_row),
    (True, True): (TEXT_AUDIT_COLUMNS, TEXT_AUDIT_NUMBERS, _text_audit_row),
}


def _score(value: Any, digits: int) -> str:
    """A stored score for `runs list`: n/a where the run has none (no baselines stored, LPIPS unset, NaN)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return f"{value:.{digits}f}" if number else "n/a"


@runs_app.command("show")
def runs_show(folder: Annotated[Path, typer.Argument(help="study folder")],
              key: Annotated[str, typer.Argument(help="run key (a unique prefix is enough)")]) -> None:
    """Everything stored about one run, as JSON."""
    with _db(folder) as db:
        record = db.get(key)
    print(json.dumps(dataclasses.asdict(record), indent=2, default=str))


@runs_app.command("export")
def runs_export(
    folder: Annotated[Path, typer.Argument(help="study folder")],
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV: one row per run, its parameters and scalar metrics (the default)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON: every run in full, and the failed runs")] = False,
    out: Annotated[Path | None, typer.Option(help="file to write (default: standard output)")] = None,
) -> None:
    """Export every run's parameters and metrics."""
    if as_csv and as_json:
        raise ConfigError("choose one of --csv and --json")
    with _db(folder) as db:
        text = db.to_json() if as_json else db.to_csv()
    if out:
        write_text_atomically(out, text)
    else:
        sys.stdout.write(text)
