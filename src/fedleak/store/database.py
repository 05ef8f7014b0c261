"""The results database: one SQLite file per study folder, one row per run.

A row holds the run's resolved config, seed, metrics and artifact paths, keyed by a hash of the config
(so the same run is never done twice: re-running a study skips what is finished, and a crash or
Ctrl-C loses nothing finished — each run is committed on its own). SQLite in WAL mode keeps readers
(``fedleak runs list``) working while a study writes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedleak.errors import FedleakError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    study TEXT NOT NULL,
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    artifacts TEXT NOT NULL,
    seconds REAL NOT NULL,
    finished REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_study ON runs (study);
"""


def run_key(study: str, config: dict[str, Any]) -> str:
    """A stable id of a run: the study and its fully specified config, hashed."""
    text = json.dumps({"study": study, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RunRecord:
    key: str
    study: str
    name: str
    params: dict[str, Any]
    config: dict[str, Any]
    seed: int
    metrics: dict[str, Any]
    artifacts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    finished: float = 0.0


class ResultsDB:
    """A study's runs in ``path`` (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise FedleakError(f"results database {self.path} cannot be opened: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone() is not None

    def add(self, record: RunRecord) -> None:
        """Store a finished run (replacing a row with the same key) and commit at once."""
        record.finished = record.finished or time.time()
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.key, record.study, record.name, json.dumps(record.params), json.dumps(record.config),
                 record.seed, json.dumps(record.metrics), json.dumps(record.artifacts), record.seconds,
                 record.finished),
            )

    def records(self, study: str | None = None) -> list[RunRecord]:
        query = "SELECT * FROM runs" + (" WHERE study = ?" if study else "") + " ORDER BY finished"
        rows = self.conn.execute(query, (study,) if study else ()).fetchall()
        return [RunRecord(key=r[0], study=r[1], name=r[2], params=json.loads(r[3]), config=json.loads(r[4]),
                          seed=r[5], metrics=json.loads(r[6]), artifacts=json.loads(r[7]), seconds=r[8],
                          finished=r[9]) for r in rows]

    def get(self, key: str) -> RunRecord:
        """The run whose key starts with ``key`` (a unique prefix is enough)."""
        found = [r for r in self.records() if r.key.startswith(key)]
        if len(found) != 1:
            raise FedleakError(f"no run {key!r} in {self.path}" if not found else
                               f"{key!r} matches {len(found)} runs; give more characters")
        return found[0]

    def to_csv(self, study: str | None = None) -> str:
        """One line per run: key, study, name, seed, its parameters and scalar metrics as columns."""
        records = self.records(study)
        params = list(dict.fromkeys(k for r in records for k in r.params if k != "seed"))
        metrics = list(dict.fromkeys(k for r in records for k, v in r.metrics.items()
                                     if (isinstance(v, (int, float, str, bool)) or v is None)
                                     and k not in params and k != "seed"))
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["key", "study", "name", "seed", *params, *metrics, "run_seconds"])
        for r in records:
            writer.writerow([r.key, r.study, r.name, r.seed, *(r.params.get(k, "") for k in params),
                             *(r.metrics.get(k, "") for k in metrics), f"{r.seconds:.3f}"])
        return out.getvalue()
