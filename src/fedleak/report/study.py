"""A study's report, rebuilt from its results database: table (CSV, JSON, HTML), matplotlib figures
(PNG and SVG files, embedded in the page) and a grid of reconstructions — one row per attacked image,
one column per setting of the study, the original first. The page is self-contained: every image in
it is a data URI, so it can be mailed or archived on its own."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from PIL import Image

from fedleak import __version__
from fedleak.errors import FedleakError
from fedleak.report.html import data_uri, render
from fedleak.report.plots import figure_bytes, pyplot
from fedleak.store import ResultsDB, RunRecord, write_atomically, write_text_atomically
from fedleak.studies.aggregate import MIN_INTERVAL_N, NO_LEAK
from fedleak.studies.folder import DB_NAME, first_difference
from fedleak.studies.reading import load_study
from fedleak.validate import short

GRID_IMAGES = 16  # rows of the image grid (attacked images); the rest are counted, not shown
GRID_SIDE = 72  # CSS pixels of a grid image's longer side
MAX_COLUMNS = 8  # a wider table is shown transposed (one column per row) when that makes it narrower
IMAGE_AXES = ("image", "seed")  # grid coordinates that pick the attacked image; the others are settings


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return "n/a" if v is None else str(v)


def table_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


STAT_SUFFIXES = ("_std", "_n", "_ci_low", "_ci_high", NO_LEAK)  # columns a metric's mean cell stands for
CI_NOTE = (f"x [a, b]: the mean over the row's runs (n = runs; (n = k) where only k runs have a value) and its "
           f"95 % confidence interval (Student t; a rate's is Wilson's). A mean's interval is given from "
           f"n = {MIN_INTERVAL_N}: with fewer runs it is n/a, as one run has no spread and two give "
           f"the mean ± 6.4 × their difference (t = 12.7 at one degree of freedom), too wide to tell anything.")
STD_NOTE = "x ± s: the mean over the row's runs ± their sample standard deviation."
BELOW = "▼ at or below no-leak"  # marks a mean that a guess without the update reaches
NO_LEAK_NOTE = ("(no-leak y) beside a PSNR or SSIM: its no-leak baseline, per run the better of two guesses "
                "without the update (each original's mean colour; another image of the set), averaged over "
                f"the row's runs (columns psnr{NO_LEAK}, ssim{NO_LEAK} of the CSV and JSON); {BELOW}: the mean "
                "does no better than that baseline, so on that metric the attack showed nothing a guess would not.")

TEXT_NO_LEAK_NOTE = ("(no-leak y) beside a ROUGE score: what recovering nothing scores — an unrelated sentence of the "
                     f"corpus scored against each original, averaged over the row's runs (column rouge1{NO_LEAK} of "
                     f"the CSV and JSON); {BELOW}: the attack recovered no more words than that sentence shares.")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def stat_cell(row: dict[str, Any], c: str) -> str:
    """A metric's cell: "mean [CI low, CI high]" (with its n where fewer runs had a value), or
    "mean ± std" where a row gives only the spread; then its no-leak baseline where the row has one,
    flagged (:data:`BELOW`) where the mean does no better."""
    v = row.get(c, "")
    base = row.get(f"{c}{NO_LEAK}")
    tail = (f" (no-leak {_cell(base)})" if _finite(base) else "") + \
        (f" {BELOW}" if _finite(v) and _finite(base) and v <= base else "")
    if f"{c}_ci_low" in row:
        if not _finite(v):
            return _cell(v)
        lo, hi, n = row[f"{c}_ci_low"], row.get(f"{c}_ci_high"), row.get(f"{c}_n")
        text = f"{_cell(v)} [{_cell(lo)}, {_cell(hi)}]" if _finite(lo) and _finite(hi) else f"{_cell(v)} [n/a]"
        return text + (f" (n = {n})" if n is not None and n != row.get("runs") else "") + tail
    std = row.get(f"{c}_std")
    if _finite(v) and _finite(std):
        return f"{_cell(v)} ± {_cell(std)}{tail}"
    return _cell(v) + tail


def table_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the table's cells show, for the kinds of cell it has."""
    columns = {k for r in rows for k in r}
    merged = [c for c in columns if not any(c.endswith(x) and c.removesuffix(x) in columns for x in STAT_SUFFIXES)]
    notes = [CI_NOTE] if any(f"{c}_ci_low" in columns for c in merged) else []
    if any(f"{c}_std" in columns and f"{c}_ci_low" not in columns for c in merged):
        notes.append(STD_NOTE)
    baselines = [c.removesuffix(NO_LEAK) for c in columns if c.endswith(NO_LEAK)]
    if any(not c.startswith("rouge") for c in baselines):
        notes.append(NO_LEAK_NOTE)
    if any(c.startswith("rouge") for c in baselines):
        notes.append(TEXT_NO_LEAK_NOTE)
    return notes


def table_view(rows: list[dict[str, Any]], identity: set[str]) -> dict[str, Any]:
    """The table as the page shows it: ``x`` and its ``x_std``, ``x_n``, ``x_ci_low``, ``x_ci_high``
    merged into one cell (:func:`stat_cell`), and, when that still leaves more than
    :data:`MAX_COLUMNS` columns and there are fewer rows than columns, transposed — one column per
    row, headed by its values of the ``identity`` columns (grid coordinates) and of its text columns."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    shown = [c for c in columns if not any(c.endswith(x) and c.removesuffix(x) in columns for x in STAT_SUFFIXES)]
    body = [[stat_cell(r, c) for c in shown] for r in rows]
    if len(shown) <= MAX_COLUMNS or len(rows) >= len(shown):
        return {"pivoted": False, "columns": shown, "rows": body}
    keys = [c for c in shown if c in identity or all(isinstance(r.get(c), str) for r in rows)] or shown[:1]
    heads = [" · ".join(f"{k}={_cell(r.get(k, ''))}" for k in keys) for r in rows]
    picked = [i for i, c in enumerate(shown) if c not in keys]
    return {"pivoted": True, "columns": ["", *heads],
            "rows": [[shown[i], *(line[i] for line in body)] for i in picked]}


def render_figure(fig_spec, rows: list[dict[str, Any]]):
    """One study figure drawn on a fresh matplotlib figure (the caller closes it)."""
    fig, ax = pyplot().subplots(figsize=(5.5, 3.6))
    fig_spec.draw(ax, rows)
    ax.set_title(fig_spec.title, fontsize=10)
    fig.tight_layout()
    return fig


def draw_figures(study, rows: list[dict[str, Any]], folder: Path) -> list[dict[str, str]]:
    """Every figure of ``study`` as PNG and SVG files in ``folder`` and as a data URI for the page."""
    figures = []
    for fig_spec in study.figures() if rows else []:
        fig = render_figure(fig_spec, rows)
        png = figure_bytes(fig, "png")
        (folder / f"{fig_spec.name}.png").write_bytes(png)
        (folder / f"{fig_spec.name}.svg").write_bytes(figure_bytes(fig, "svg"))
        pyplot().close(fig)
        figures.append({"name": fig_spec.name, "title": fig_spec.title, "src": data_uri(png),
                        "png": f"figures/{fig_spec.name}.png", "svg": f"figures/{fig_spec.name}.svg"})
    return figures


def embedded(folder: Path, relative: str | None) -> dict[str, Any] | None:
    """A run's stored PNG as a data URI with its display size; ``None`` if missing or outside ``folder``."""
    if not relative:
        return None
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        return None
    png = path.read_bytes()
    try:
        w, h = Image.open(io.BytesIO(png)).size
    except OSError:
        return None
    scale = GRID_SIDE / max(w, h)
    return {"src": data_uri(png), "width": round(w * scale), "height": round(h * scale)}


def setting_of(record: RunRecord) -> tuple:
    """A run's setting: its grid coordinates but the image's (a list or mapping as its JSON text)."""
    return tuple((k, json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v)
                 for k, v in record.params.items() if k not in IMAGE_AXES)


def setting_labels(settings: list[tuple]) -> list[str]:
    """Column heads: each setting's coordinates, leaving out those every column shares."""
    keys = list(dict.fromkeys(k for s in settings for k, _ in s))
    varying = [k for k in keys if len({dict(s).get(k) for s in settings}) > 1] or keys
    return [" · ".join(f"{k}={_cell(dict(s)[k])}" for k in varying if k in dict(s)) or "run" for s in settings]


def reconstructions(folder: Path, record: RunRecord) -> list[dict[str, Any]]:
    """Every reconstruction of one run with its caption (PSNR, and the target's verdict where stored)."""
    cls = record.metrics.get("classification")
    out = []
    for i, score in enumerate(record.metrics.get("images", [])):
        image = embedded(folder, record.artifacts.get(f"reconstruction-{i}"))
        if image is None:
            continue
        caption = f"PSNR {score['psnr']:.1f}"
        if cls:
            j = score.get("matched")
            if not isinstance(j, int) or not all(0 <= j < len(cls[k]) for k in
                                                 ("recon_correct", "recon_predicted_name", "recon_confidence")):
                raise FedleakError(f"run {record.key[:40]!r} is corrupt: metrics.images[{i}].matched is {short(j)}, "
                                   f"not a reconstruction of its metrics.classification")
            mark = "✓" if cls["recon_correct"][j] else "✗"
            caption += f" · {mark} {cls['recon_predicted_name'][j]} {cls['recon_confidence'][j]:.2f}"
        out.append({**image, "caption": caption})
    return out


def settings_grid(folder: Path, records: list[RunRecord]) -> dict[str, Any]:
    """Rows = attacked images (with their seed where a study repeats seeds), columns = the study's
    settings in plan order; each cell holds that run's reconstructions, the first column the original."""
    runs = [r for r in records if r.artifacts.get("original-0")]
    settings = list(dict.fromkeys(setting_of(r) for r in runs))
    seeds = {r.params.get("seed") for r in runs}
    table: dict[tuple, dict[tuple, RunRecord]] = {}
    for r in runs:
        table.setdefault((r.params.get("image", r.name), r.params.get("seed")), {})[setting_of(r)] = r
    rows = []
    for (image, seed), cells in list(table.items())[:GRID_IMAGES]:
        first = next(iter(cells.values()))
        rows.append({
            "label": f"image {image}" + (f" · seed {seed}" if len(seeds) > 1 else ""),
            "original": embedded(folder, first.artifacts["original-0"]),
            "cells": [reconstructions(folder, cells[s]) if s in cells else None for s in settings],
        })
    return {"columns": setting_labels(settings), "rows": rows, "total": len(table)}


def check_params(folder: Path, planned: list, records: list[RunRecord]) -> None:
    """Every record's grid coordinates are its planned run's (as JSON gives them back): the table
    groups and sorts by them, so a hand-edited value is one error naming the run and the field."""
    by_key = {p.key: p for p in planned}
    by_name = {p.run.name: p for p in planned}
    for r in records:
        p = by_key.get(r.key) or by_name.get(r.name)
        if p is None:
            continue
        want = json.loads(json.dumps(p.run.params, default=str))
        diff = first_difference(r.params, want)
        if diff:
            field, got, expected = diff
            raise FedleakError(f"results database {folder / DB_NAME}: run {r.key[:40]!r} is corrupt: params.{field} "
                               f"is {short(got)}, its study's plan says {short(expected)}")


def progress(study, preset: str, finished: int, planned: int, failed: int = 0) -> str:
    """The report's subtitle: how many of the study's runs are finished. A live study (a Flower
    audit, whose cells are planned as their audits start) counts its own ``units`` and has no preset."""
    units = getattr(study, "units", "runs")  # studies/flower_audit: "audited updates"
    text = f"{finished} of {planned} {units} finished"
    if failed:
        text += f", {failed} failed (fedleak runs list DIR --failed)"
    if getattr(study, "live", False) and planned > finished + failed:
        text += f", {planned - finished - failed} still running or not collected"
    return text if getattr(study, "live", False) else f"preset {preset} · {text}"


def write_report(folder: Path) -> Path:
    """(Re)build ``folder``'s report from its database; the report parts are replaced atomically."""
    study, preset, planned, records = load_study(folder)
    check_params(folder, planned, records)
    with ResultsDB(folder / DB_NAME, create=False) as db:
        failed = len({f.key for f in db.failures(study.name)} & {p.key for p in planned} - {r.key for r in records})
    rows = study.table(records) if records else []
    identity = {k for r in records for k in r.params}

    def fill(tmp: Path) -> None:
        figures = draw_figures(study, rows, tmp)
        pages["report.html"] = render(
            "study.html.j2",
            title=f"{study.name} · {study.title}",
            subtitle=progress(study, preset, len(records), len(planned), failed),
            description=(type(study).__doc__ or "").strip(),
            table=table_view(rows, identity),
            notes=study.notes() + table_notes(rows)
            + list(dict.fromkeys(h for r in records for h in r.metrics.get("hints", []))),
            figures=figures,
            grid=settings_grid(folder, records),
            grid_columns=study.grid_columns,
            stats=any(c.endswith(STAT_SUFFIXES) for r in rows for c in r),
            settings=json.dumps(study.settings.model_dump(mode="json"), indent=2),
            version=__version__,
        )

    pages: dict[str, str] = {"table.csv": table_csv(rows), "table.json": json.dumps(rows, indent=1, default=str)}
    write_atomically(folder / "figures", fill)
    for name, text in pages.items():  # each file replaced atomically
        write_text_atomically(folder / name, text)
    return folder / "report.html"
