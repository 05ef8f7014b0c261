"""A study's report, rebuilt from its results database: table (CSV, JSON, HTML), matplotlib figures
(PNG and SVG) and an image grid of originals and reconstructions with the target's verdict."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from fedleak import __version__
from fedleak.report.html import render
from fedleak.store import RunRecord, write_atomically, write_text_atomically

GRID_RUNS = 24


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def table_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def draw_figures(study, rows: list[dict[str, Any]], folder: Path) -> list[dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    for fig_spec in study.figures():
        if not rows:
            break
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        fig_spec.draw(ax, rows)
        ax.set_title(fig_spec.title, fontsize=10)
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(folder / f"{fig_spec.name}.{ext}", dpi=120)
        plt.close(fig)
        figures.append({"name": fig_spec.name, "title": fig_spec.title, "png": f"figures/{fig_spec.name}.png",
                        "svg": f"figures/{fig_spec.name}.svg"})
    return figures


def grid_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Per run: its name and the (original, reconstruction, caption) cells."""
    rows = []
    for r in records[:GRID_RUNS]:
        cls = r.metrics.get("classification")
        cells = []
        for i, score in enumerate(r.metrics.get("images", [])):
            original, recon = r.artifacts.get(f"original-{i}"), r.artifacts.get(f"reconstruction-{i}")
            if not (original and recon):
                continue
            caption = f"PSNR {score['psnr']:.1f}"
            if cls:
                j = score["matched"]
                name = cls["recon_predicted_name"][j]
                mark = "✓" if cls["recon_correct"][j] else "✗"
                caption += f" · {mark} {name} {cls['recon_confidence'][j]:.2f}"
            cells.append({"original": original, "reconstruction": recon, "caption": caption})
        if cells:
            rows.append({"name": r.name, "cells": cells})
    return rows


def write_report(folder: Path) -> Path:
    """(Re)build ``folder``'s report from its database; the report parts are replaced atomically."""
    from fedleak.studies.runner import load_study

    study, preset, planned, records = load_study(folder)
    rows = study.table(records) if records else []

    def fill(tmp: Path) -> None:
        figures = draw_figures(study, rows, tmp)

        columns = list(dict.fromkeys(k for r in rows for k in r))
        html = render(
            "study.html.j2",
            title=f"{study.name} · {study.title}",
            subtitle=f"preset {preset} · {len(records)} of {len(planned)} runs finished",
            description=(type(study).__doc__ or "").strip(),
            columns=columns,
            rows=[[_cell(r.get(c, "")) for c in columns] for r in rows],
            notes=study.notes() + list(dict.fromkeys(h for r in records for h in r.metrics.get("hints", []))),
            figures=figures,
            grid=grid_rows(records),
            settings=json.dumps(study.settings.model_dump(mode="json"), indent=2),
            version=__version__,
        )
        pages["report.html"] = html

    pages: dict[str, str] = {"table.csv": table_csv(rows), "table.json": json.dumps(rows, indent=1, default=str)}
    write_atomically(folder / "figures", fill)
    for name, text in pages.items():  # each file replaced atomically
        write_text_atomically(folder / name, text)
    return folder / "report.html"
