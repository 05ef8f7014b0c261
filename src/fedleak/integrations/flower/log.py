"""An audit's results folder, as :class:`~fedleak.integrations.flower.LeakageAudit` writes it while
the federation runs: a study folder of kind ``flower-audit`` (:mod:`fedleak.studies.flower_audit`)
whose grid grows by one cell per audited update (:class:`AuditLog`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedleak.audit import AuditAttack, AuditRecord
from fedleak.errors import ConfigError
from fedleak.images import image_grid, png_bytes
from fedleak.report.study import write_report
from fedleak.store import ResultsDB, RunRecord, write_atomically
from fedleak.studies.flower_audit import STUDY, AuditCell, AuditSettings, AuditStudy
from fedleak.studies.folder import DB_NAME, STUDY_FILE, read_meta, study_meta, write_meta
from fedleak.studies.planning import plan


class AuditLog:
    """An audit's results folder: ``study.json`` (kind ``flower-audit``), ``results.sqlite`` (one
    row per audited update), ``runs/KEY/`` (its images) and the study report, rebuilt on request.

    ``out`` must be new or empty; a folder holding an earlier audit is replaced only with
    ``overwrite`` (and a folder holding anything else never)."""

    def __init__(self, out: str | Path, attack: AuditAttack, view: str = "clients", model: str = "",
                 selection: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
        self.out = Path(out)
        self._prepare(overwrite, STUDY_FILE)
        self.settings = AuditSettings(attack=attack.resolved(), knowledge=attack.knowledge, view=view, model=model,
                                      selection=json.loads(json.dumps(dict(selection or {}), default=str)))
        self.db_path = self.out / DB_NAME
        self._write_meta()
        with ResultsDB(self.db_path):
            pass

    def _prepare(self, overwrite: bool, study_file: str) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"audit folder {str(out)!r} exists and is not a folder")
        if not out.exists() or not any(out.iterdir()):
            out.mkdir(parents=True, exist_ok=True)
            return
        is_audit = (out / study_file).is_file() and read_meta(out).get("study") == STUDY
        if not is_audit:
            raise ConfigError(f"folder {str(out)!r} is not empty and holds no audit; choose another folder")
        if not overwrite:
            raise ConfigError(f"folder {str(out)!r} holds an earlier audit; choose another folder or pass overwrite=True")
        shutil.rmtree(out)
        out.mkdir(parents=True)

    def _write_meta(self) -> None:
        write_meta(self.out, study_meta(STUDY, "live", self.settings.model_dump(mode="json")))

    def key(self, round: int, client: str) -> str:
        """The database key of cell (round, client), as the study's plan computes it."""
        settings = self.settings.model_copy(update={"cells": [AuditCell(round=round, client=client)]})
        return plan(AuditStudy(settings))[0].key

    def add(self, record: AuditRecord, seed: int = 0) -> str:
        """Store ``record`` (and its images) and extend the folder's grid by its cell; returns its key."""
        key = self.key(record.round, record.client)
        artifacts: dict[str, str] = {}

        def fill(tmp: Path) -> None:
            batches = {"reconstruction": record.images}
            if record.truth_images is not None:
                batches["original"] = record.truth_images
            for name, images in batches.items():
                (tmp / f"{name}.png").write_bytes(png_bytes(image_grid([images.cpu()])))
                artifacts[name] = f"runs/{key}/{name}.png"

        write_atomically(self.out / "runs" / key, fill)
        cell = AuditCell(round=record.round, client=record.client)
        if cell not in self.settings.cells:
            self.settings.cells.append(cell)
        self._write_meta()
        config = {"attack": self.settings.attack, "knowledge": self.settings.knowledge, "view": record.view,
                  "hyper": asdict(record.hyper), "assumptions": list(record.assumptions)}
        with ResultsDB(self.db_path) as db:
            db.add(RunRecord(key=key, study=STUDY, name=f"round {record.round} · client {record.client}",
                             params={"round": record.round, "client": record.client}, config=config, seed=seed,
                             metrics=record.metrics(), artifacts=artifacts, seconds=record.seconds))
        return key

    def write_report(self) -> Path:
        """(Re)build the folder's report (``fedleak report`` does the same)."""
        return write_report(self.out)
