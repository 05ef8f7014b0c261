"""An audit's results folder, as :class:`~fedleak.integrations.flower.LeakageAudit` writes it while
the federation runs: a study folder of kind ``flower-audit`` (:mod:`fedleak.studies.flower_audit`)
whose grid grows by one cell per audited update as its audit starts (:class:`AuditLog`); a record
is added when the audit's worker returns it, a failure recorded where it fails
(``fedleak runs list DIR --failed``), and the report is written at the end of the federation (and
by ``fedleak report DIR`` at any time, showing the audits finished so far).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from torch import Tensor

from fedleak.audit import AuditAttack, AuditRecord
from fedleak.errors import ConfigError
from fedleak.images import image_grid, png_bytes
from fedleak.registry import Registry
from fedleak.report.study import write_report
from fedleak.store import Failure, Owner, ResultsDB, RunRecord, locked, write_atomically
from fedleak.studies.flower_audit import (
    RERUN_PREFIX,
    STUDY,
    AuditCell,
    AuditSettings,
    AuditStudy,
    is_audit,
    label_histogram,
    verdict_text,
)
from fedleak.studies.folder import DB_NAME, study_meta, write_meta
from fedleak.studies.planning import plan

GRID_IMAGES = 16  # images of an update drawn in its PNGs (the rest are counted in the caption)
GRID_COLUMNS = 8  # images per row of those PNGs


def wrapped_grid(images: Tensor, total: int) -> bytes:
    """The first :data:`GRID_IMAGES` of ``images`` as a PNG, :data:`GRID_COLUMNS` to a row, under the
    caption "N of TOTAL shown" when some are left out."""
    shown = images[:GRID_IMAGES].cpu()
    grid = image_grid([shown[i:i + GRID_COLUMNS] for i in range(0, len(shown), GRID_COLUMNS)])
    if len(shown) >= total:
        return png_bytes(grid)
    canvas = Image.new("RGB", (grid.width, grid.height + 14), "white")
    canvas.paste(grid, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), f"{len(shown)} of {total} shown", fill="black")
    return png_bytes(canvas)


def image_files(record: AuditRecord) -> dict[str, bytes]:
    """``reconstruction.png`` (and ``original.png`` where a batch was shared): :func:`wrapped_grid`."""
    total = int(record.images.shape[0])
    batches = {"reconstruction": record.images}
    if record.truth_images is not None:
        batches["original"] = record.truth_images
    return {f"{name}.png": wrapped_grid(images, total) for name, images in batches.items()}


FILES: Registry[Callable[[AuditRecord], dict[str, bytes]]] = Registry("audit files")
"""Per modality (``record.scoring.name``): the files kept of an audited update (name → bytes),
linked from its row (text: :func:`fedleak.integrations.flower.text.text_files`)."""
FILES.register("image")(image_files)


def fresh_folder(out: Path) -> Path:
    """The first ``out/audit-N`` (N = 2, 3, …) that is new or empty, made now."""
    n = 2
    while True:
        candidate = out / f"{RERUN_PREFIX}{n}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate
        n += 1


class AuditLog:
    """An audit's results folder: ``study.json`` (kind ``flower-audit``), ``results.sqlite`` (one
    row per audited update), ``runs/KEY/`` (its images) and the study report, rebuilt on request.

    ``out`` is used when it is new or empty, and replaced when it holds an earlier audit and
    ``overwrite`` is set. Otherwise — an earlier audit, or anything else — the audit writes into a
    fresh numbered sub-folder, ``out/audit-2`` (then ``audit-3``, …): an existing folder never stops
    the federation, and nothing in it is touched. :attr:`out` is where it writes."""

    def __init__(self, out: str | Path, attack: AuditAttack, view: str = "clients", model: str = "",
                 selection: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
        self.requested = Path(out)
        self.out = self._prepare(self.requested, overwrite)
        self.settings = AuditSettings(attack=attack.resolved(), knowledge=attack.knowledge, view=view, model=model,
                                      selection=json.loads(json.dumps(dict(selection or {}), default=str)))
        self.db_path = self.out / DB_NAME
        self._write_meta()
        with ResultsDB(self.db_path):
            pass

    @staticmethod
    def _prepare(out: Path, overwrite: bool) -> Path:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"audit folder {str(out)!r} exists and is not a folder")
        if not out.exists() or not any(out.iterdir()):
            out.mkdir(parents=True, exist_ok=True)
            return out
        if overwrite and is_audit(out):
            shutil.rmtree(out)
            out.mkdir(parents=True)
            return out
        return fresh_folder(out)

    def _write_meta(self) -> None:
        write_meta(self.out, study_meta(STUDY, "live", self.settings.model_dump(mode="json")))

    def key(self, round: int, client: str) -> str:
        """The database key of cell (round, client), as the study's plan computes it."""
        settings = self.settings.model_copy(update={"cells": [AuditCell(round=round, client=client)]})
        return plan(AuditStudy(settings))[0].key

    def _cell(self, round: int, client: str) -> None:
        cell = AuditCell(round=round, client=client)
        if cell not in self.settings.cells:
            self.settings.cells.append(cell)
            self._write_meta()

    def started(self, round: int, client: str) -> None:
        """Plan cell (round, client): its audit was handed to the worker (the report counts it)."""
        self._cell(round, client)

    def chose(self, round: int, chosen: list[dict[str, Any]]) -> None:
        """Record which clients round ``round`` audits (``node`` and ``partition`` of each)."""
        self.settings.selection.setdefault("chosen", {})[str(round)] = json.loads(json.dumps(chosen, default=str))
        self._write_meta()

    def failed(self, round: int, client: str, error: str) -> None:
        """Record that the audit of (round, client) failed (``fedleak runs list DIR --failed``)."""
        self._cell(round, client)
        with ResultsDB(self.db_path) as db:
            db.fail(Failure(key=self.key(round, client), study=STUDY, name=f"round {round} · client {client}",
                            params={"round": round, "client": client}, config={}, error=error), Owner.me())

    def add(self, record: AuditRecord, seed: int = 0) -> str:
        """Store ``record`` (and its images) and extend the folder's grid by its cell; returns its key.
        Its files are the modality's (:data:`FILES`). Beside :meth:`AuditRecord.metrics` the row holds
        ``label_histogram`` (class → count of the recovered labels), ``images_shown`` (how many its PNGs draw) and ``verdict`` (where the record has one)."""
        key = self.key(record.round, record.client)
        artifacts: dict[str, str] = {}
        total = int(record.images.shape[0])
        files = FILES.get(record.scoring.name)(record)

        def fill(tmp: Path) -> None:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
                artifacts[name.rsplit(".", 1)[0]] = f"runs/{key}/{name}"

        write_atomically(self.out / "runs" / key, fill)
        self._cell(record.round, record.client)
        metrics = record.metrics()
        metrics.setdefault("label_histogram", label_histogram(record.reconstruction.labels.flatten().tolist()))
        metrics["images_shown"] = min(total, GRID_IMAGES)
        verdict = getattr(record, "verdict", None)  # verdicts come with the records that have them
        if verdict is not None and "verdict" not in metrics:
            metrics["verdict"] = verdict_text(verdict)
        config = {"attack": self.settings.attack, "knowledge": self.settings.knowledge, "view": record.view,
                  "hyper": asdict(record.hyper), "assumptions": list(record.assumptions)}
        with ResultsDB(self.db_path) as db:
            db.add(RunRecord(key=key, study=STUDY, name=f"round {record.round} · client {record.client}",
                             params={"round": record.round, "client": record.client}, config=config, seed=seed,
                             metrics=metrics, artifacts=artifacts, seconds=record.seconds))
        return key

    def write_report(self) -> Path:
        """(Re)build the folder's report (``fedleak report`` does the same), one writer at a time."""
        with locked(self.out):
            return write_report(self.out)
