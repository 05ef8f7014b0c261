"""The results database: one SQLite file per study folder, one row per run.

A row holds the run's resolved config, seed, metrics and artifact paths, keyed by a hash of the config
(so the same run is never done twice: re-running a study skips what is finished, and a crash or
Ctrl-C loses nothing finished — each run is committed on its own). SQLite in WAL mode keeps readers
(``fedleak runs list``) working while a study writes.

Several processes may work on one study: before a run starts, its process *claims* it
(:mod:`fedleak.store.claims`), so a run is never done twice at once and a killed study never blocks the
next one. A database is opened for reading without changing it: a file that is not a fedleak results
database is refused, not converted. Rows are checked strictly as they are read back
(:mod:`fedleak.store.records`): a damaged row is one error naming the run's key and the field.

A run that raised is *failed*: a row in ``failures`` with its one-line error and how often it was
tried, so a study goes on with its other runs and ``fedleak runs list --failed`` shows what went
wrong. A failed run has no row in ``runs``, so a later invocation (an owner that started after the
failure) claims and retries it; the invocations that saw it fail do not loop on it. Databases made
before ``failures`` existed are read as they are (no failures) and gain the table on their next write;
a failure records the host it happened on (a Ray node's), a column older databases gain on opening
for writing (read as they are, they show no host).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from fedleak.errors import FedleakError
from fedleak.store.claims import STALE_AFTER, Claim, Owner, owner_alive
from fedleak.store.records import (
    FAILURE_COLUMNS,
    RUN_COLUMNS,
    Failure,
    RunRecord,
    read_failure,
    read_record,
    run_key,
)

__all__ = ["Claim", "Failure", "Owner", "ResultsDB", "RunRecord", "run_key"]

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
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    study TEXT NOT NULL,
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    config TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed REAL NOT NULL,
    host TEXT NOT NULL DEFAULT ''
);
"""


ROOM_TO_READ = 1 << 20  # a WAL reader needs room for SQLite's -shm file; a fuller disk is read as immutable


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs (Windows)
        return ROOM_TO_READ
    return st.f_bavail * st.f_frsize


F = TypeVar("F", bound=Callable[..., Any])


def _guarded(method: F) -> F:
    """SQLite errors of a damaged file become one line naming the database."""

    @wraps(method)
    def call(self: ResultsDB, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise FedleakError(f"results database {self.path} cannot be used: {exc}") from None

    return call  # type: ignore[return-value]


class ResultsDB:
    """A study's runs in ``path``: created on first use, or with ``create=False`` opened read-only
    (an absent, foreign or damaged file is a :class:`FedleakError`)."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            else:
                self.conn = self._open_for_reading()
            self._check_schema(create)
            if create:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.executescript(SCHEMA)
                self._add_failure_host()
        except sqlite3.DatabaseError as exc:
            if hasattr(self, "conn"):
                self.conn.close()
            raise FedleakError(f"results database {self.path} cannot be opened: {exc}") from None
        except FedleakError:
            self.conn.close()
            raise

    def _open_for_reading(self) -> sqlite3.Connection:
        """Open an existing file without creating or converting anything: as SQLite's WAL readers
        do where we may write (its -wal/-shm files go when the last reader closes), else read-only;
        where SQLite cannot even make its shared-memory file (a read-only or full disk), as an
        immutable file — nobody can be writing it there."""
        uri = f"file:{quote(str(self.path.absolute()))}"
        if not os.access(self.path, os.R_OK):
            raise FedleakError(f"results database {self.path} cannot be opened: not readable")
        writable = os.access(self.path.parent, os.W_OK) and os.access(self.path, os.W_OK)
        if writable and _free_bytes(self.path.parent) >= ROOM_TO_READ:
            return sqlite3.connect(f"{uri}?mode=rw", uri=True, timeout=30, isolation_level=None)
        if not writable:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
            try:
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                return conn
            except sqlite3.OperationalError:  # no right to make the -shm file here
                conn.close()
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=30, isolation_level=None)

    def _check_schema(self, create: bool) -> None:
        columns = tuple(r[1] for r in self.conn.execute("PRAGMA table_info(runs)"))
        if columns == RUN_COLUMNS or (create and not columns and not self._tables()):
            return
        found = f"its runs table has columns {', '.join(columns)}" if columns else "it has no runs table"
        raise FedleakError(f"{self.path} is not a fedleak results database ({found})")

    def _add_failure_host(self) -> None:
        """A ``failures`` table made before failures recorded their host gains the column (empty)."""
        def has() -> bool:
            return "host" in (r[1] for r in self.conn.execute("PRAGMA table_info(failures)"))

        if has():
            return
        try:
            self.conn.execute("ALTER TABLE failures ADD COLUMN host TEXT NOT NULL DEFAULT ''")
        except sqlite3.OperationalError:  # another process added it just now
            if not has():
                raise

    def _tables(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``) so two processes never both
        decide from the same snapshot."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @_guarded
    def has(self, key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone() is not None

    def _insert(self, record: RunRecord) -> None:
        record.finished = record.finished or time.time()
        self.conn.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.key, record.study, record.name, json.dumps(record.params), json.dumps(record.config),
             record.seed, json.dumps(record.metrics), json.dumps(record.artifacts), record.seconds,
             record.finished),
        )

    @_guarded
    def add(self, record: RunRecord) -> None:
        """Store a finished run (replacing a row with the same key) and commit at once."""
        with self._write():
            self._insert(record)

    @_guarded
    def claim(self, key: str, owner: Owner, stale_after: float = STALE_AFTER) -> Claim:
        """Claim run ``key`` for ``owner`` unless it is finished, failed since ``owner`` started, or
        held by a live other owner (a dead owner's claim, or one older than ``stale_after`` seconds,
        is taken over)."""
        with self._write():
            if self.conn.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone():
                return Claim.DONE
            failed = self.conn.execute("SELECT failed FROM failures WHERE key = ?", (key,)).fetchone()
            if failed and failed[0] >= owner.started:
                return Claim.FAILED
            held = self.conn.execute("SELECT owner, host, pid, since FROM claims WHERE key = ?", (key,)).fetchone()
            now = time.time()
            if held and held[0] != owner.token and now - held[3] < stale_after \
                    and owner_alive(held[1], held[2], held[0], owner):
                return Claim.BUSY
            self.conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                              (key, owner.token, owner.host, owner.pid, now))
            return Claim.MINE

    @_guarded
    def finish(self, record: RunRecord, owner: Owner) -> None:
        """Store a claimed run and drop its claim (and an earlier failure of it), in one commit."""
        with self._write():
            self._insert(record)
            self.conn.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (record.key, owner.token))
            self.conn.execute("DELETE FROM failures WHERE key = ?", (record.key,))

    @_guarded
    def fail(self, failure: Failure, owner: Owner) -> Failure:
        """Record that a claimed run raised (counting the attempt) and drop its claim, in one commit;
        returns the stored failure."""
        with self._write():
            before = self.conn.execute("SELECT attempts FROM failures WHERE key = ?", (failure.key,)).fetchone()
            failure.attempts = (before[0] if before else 0) + 1
            failure.failed = time.time()
            self.conn.execute(
                f"INSERT OR REPLACE INTO failures ({', '.join(FAILURE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (failure.key, failure.study, failure.name, json.dumps(failure.params), json.dumps(failure.config),
                 failure.error, failure.attempts, failure.failed, failure.host))
            self.conn.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (failure.key, owner.token))
        return failure

    @_guarded
    def failures(self, study: str | None = None) -> list[Failure]:
        """The failed runs (none in a database made before failures were recorded)."""
        if "failures" not in self._tables():
            return []
        query = "SELECT * FROM failures" + (" WHERE study = ?" if study else "") + " ORDER BY failed"
        cursor = self.conn.execute(query, (study,) if study else ())
        columns = tuple(d[0] for d in cursor.description)  # by name: a later column (a host, say) shifts none
        return [read_failure(r, self.path, columns) for r in cursor.fetchall()]

    @_guarded
    def rekey(self, moves: Iterable[tuple[str, str, dict[str, str]]]) -> int:
        """Give finished runs new keys (and artifact paths): ``(old, new, artifacts)`` each, in one
        commit; a move whose new key is already taken is skipped. Returns how many moved."""
        moved = 0
        with self._write():
            for old, new, artifacts in moves:
                if self.conn.execute("SELECT 1 FROM runs WHERE key = ?", (new,)).fetchone():
                    continue
                moved += self.conn.execute("UPDATE runs SET key = ?, artifacts = ? WHERE key = ?",
                                           (new, json.dumps(artifacts), old)).rowcount
                self.conn.execute("DELETE FROM claims WHERE key = ?", (old,))
        return moved

    @_guarded
    def release(self, owner: Owner) -> None:
        """Drop every claim ``owner`` still holds (its runs did not finish)."""
        with self._write():
            self.conn.execute("DELETE FROM claims WHERE owner = ?", (owner.token,))

    @_guarded
    def busy_elsewhere(self, owner: Owner) -> int:
        """How many runs other owners hold claims on."""
        return self.conn.execute("SELECT COUNT(*) FROM claims WHERE owner != ?", (owner.token,)).fetchone()[0]

    @_guarded
    def keep_only(self, keys: Iterable[str]) -> list[str]:
        """Delete every run (and claim) whose key is not in ``keys``; returns the deleted keys."""
        keep = set(keys)
        with self._write():
            gone = [k for (k,) in self.conn.execute("SELECT key FROM runs") if k not in keep]
            self.conn.executemany("DELETE FROM runs WHERE key = ?", [(k,) for k in gone])
            self.conn.executemany("DELETE FROM claims WHERE key = ?", [(k,) for k in gone])
            self.conn.executemany("DELETE FROM failures WHERE key = ?",
                                  [(k,) for (k,) in self.conn.execute("SELECT key FROM failures") if k not in keep])
        return gone

    @_guarded
    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    @_guarded
    def records(self, study: str | None = None) -> list[RunRecord]:
        query = "SELECT * FROM runs" + (" WHERE study = ?" if study else "") + " ORDER BY finished"
        rows = self.conn.execute(query, (study,) if study else ()).fetchall()
        return [read_record(r, self.path) for r in rows]

    def get(self, key: str) -> RunRecord:
        """The run whose key starts with ``key`` (a unique prefix is enough)."""
        found = [r for r in self.records() if r.key.startswith(key)]
        if len(found) != 1:
            raise FedleakError(f"no run {key[:40]!r} in {self.path}" if not found else
                               f"{key!r} matches {len(found)} runs; give more characters")
        return found[0]

    def to_json(self, study: str | None = None) -> str:
        """Every run (key, study, name, seed, parameters, config, metrics, artifacts, seconds,
        finished) and every failed run, as one JSON document."""
        import dataclasses

        return json.dumps({"runs": [dataclasses.asdict(r) for r in self.records(study)],
                           "failed": [dataclasses.asdict(f) for f in self.failures(study)]},
                          indent=1, default=str) + "\n"

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
