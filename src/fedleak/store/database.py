"""The results database: one SQLite file per study folder, one row per run.

A row holds the run's resolved config, seed, metrics and artifact paths, keyed by a hash of the config
(so the same run is never done twice: re-running a study skips what is finished, and a crash or
Ctrl-C loses nothing finished — each run is committed on its own). SQLite in WAL mode keeps readers
(``fedleak runs list``) working while a study writes.

Several processes may work on one study: before a run starts, its process *claims* it (a row in
``claims`` naming the owner's host, pid and a token). Others skip a claimed run; a claim whose owner
died (its pid is gone on this host) or that is older than ``stale_after`` seconds may be taken over,
so a killed study never blocks the next one. A database is opened for reading without changing it:
a file that is not a fedleak results database is refused, not converted.

Rows are read back as files other people made: each column, and the metrics the reports and tables
read, must have the type fedleak writes (strictly: a number is never a string that looks like one),
else one error names the run's key and the field (``metrics.images[0].psnr``).

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
import hashlib
import io
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Any, Optional, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from fedleak.errors import FedleakError
from fedleak.validate import short

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
FAILURE_COLUMNS = ("key", "study", "name", "params", "config", "error", "attempts", "failed", "host")
RUN_COLUMNS = ("key", "study", "name", "params", "config", "seed", "metrics", "artifacts", "seconds", "finished")
STALE_AFTER = 24 * 3600.0  # a claim older than this is taken over even when its owner cannot be checked


def run_key(study: str, config: dict[str, Any]) -> str:
    """A stable id of a run: the study and its fully specified config, hashed (the caller leaves out
    what only says where things lie, such as ``data.root``: see :meth:`fedleak.pipeline.RunSpec.key`)."""
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


@dataclass
class Failure:
    """A run that raised: its coordinates, config and one-line error, how often it was tried, and
    the host it last failed on."""

    key: str
    study: str
    name: str
    params: dict[str, Any]
    config: dict[str, Any]
    error: str
    attempts: int = 1
    failed: float = 0.0
    host: str = ""  # where it last failed (a Ray node's host; "" when unknown)


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: a process on a host, with a token unique to this study invocation and the
    time the invocation started (failures recorded since then are not retried by it)."""

    host: str
    pid: int
    token: str
    started: float = field(default_factory=time.time, compare=False)

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex)


class Claim(Enum):
    """What :meth:`ResultsDB.claim` found: the run is finished, now ours, another's, or failed
    during this invocation (this one or another process sharing the folder tried it)."""

    DONE = "done"
    MINE = "mine"
    BUSY = "busy"
    FAILED = "failed"


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie — dead but not yet reaped — counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): trust the signal check
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _owner_alive(host: str, pid: int, token: str, me: Owner) -> bool:
    if host != me.host:
        return True  # cannot be checked from here: only ``stale_after`` frees it
    if pid == me.pid:
        return token == me.token  # an earlier, finished study call of this same process is gone
    return _process_alive(pid)


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


class _Stored(BaseModel):
    """What fedleak writes, checked strictly on the way back (a number is a number, never a string
    that looks like one); keys fedleak does not know are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)


class _Guess(_Stored):
    psnr: float
    ssim: float
    index: Optional[int] = None


class _Baselines(_Stored):
    mean_colour: _Guess
    other_image: Optional[_Guess] = None


class _ImageScore(_Stored):
    psnr: float
    ssim: float
    position: Optional[int] = None
    dataset_index: Optional[int] = None
    matched: Optional[int] = None
    label: Optional[int] = None
    recovered_label: Optional[int] = None
    lpips: dict[str, Optional[float]] = {}


class _Classification(_Stored):
    original_correct: bool
    original_confidence: float
    recon_correct: list[bool]
    recon_predicted: list[int] = []
    recon_predicted_name: list[str] = []
    recon_confidence: list[float] = []
    recon_true_confidence: list[float] = []


class _Metrics(_Stored):
    """The metrics the report and the studies' tables read; every field optional (a training run
    has no PSNR), typed where present."""

    psnr: Optional[float] = None
    ssim: Optional[float] = None
    lpips: Optional[dict[str, Optional[float]]] = None
    label_accuracy: Optional[float] = None
    matching_loss: Optional[float] = None
    restart_losses: Optional[list[Optional[float]]] = None
    iterations: Optional[int] = None
    attack_seconds: Optional[float] = None
    seconds: Optional[float] = None
    seed: Optional[int] = None
    images: list[_ImageScore] = []
    hints: list[str] = []
    baselines: Optional[_Baselines] = None
    classification: Optional[_Classification] = None
    exact_images: Optional[int] = None
    observed_images: Optional[int] = None
    test_accuracy: Optional[float] = None
    accuracy_per_round: Optional[list[float]] = None
    ran_on: Optional[dict[str, Any]] = None
    dataset: Optional[dict[str, Any]] = None



EXTRA_METRICS: dict[str, TypeAdapter] = {  # metrics named by a prefix, and what each holds
    "lpips_": TypeAdapter(Optional[float]),  # a backbone's score beside ``lpips``
    "transfer:": TypeAdapter(_Classification),  # another classifier's verdict (the transfer study)
}


class _Row(_Stored):
    """A ``runs`` row, its JSON columns decoded."""

    model_config = ConfigDict(extra="forbid", strict=True)
    key: str
    study: str
    name: str
    params: dict[str, Any]
    config: dict[str, Any]
    seed: int
    metrics: _Metrics
    artifacts: dict[str, str]
    seconds: float
    finished: float


class _FailureRow(_Stored):
    model_config = ConfigDict(extra="ignore", strict=True)  # columns added later (a host, say) are read elsewhere
    key: str
    study: str
    name: str
    params: dict[str, Any]
    config: dict[str, Any]
    error: str
    attempts: int
    failed: float


JSON_COLUMNS = ("params", "config", "metrics", "artifacts")


def _where(loc: tuple) -> str:
    """A pydantic error location as a dotted field name: ``metrics.images[0].psnr``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "model-")):  # a validator's own step, not a field
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


EXPECTS = {"float_type": "a number", "int_type": "an integer", "string_type": "a string", "bool_type": "true or false",
           "dict_type": "a JSON object", "list_type": "a JSON list", "model_type": "a JSON object",
           "missing": "present", "extra_forbidden": "absent"}


def _decoded(row: Any, columns: tuple[str, ...], what: str, path: Path) -> dict[str, Any]:
    """A row as a column → value mapping, its JSON columns decoded; a column that is no JSON is
    one error naming the row and the column."""
    values = dict(zip(columns, row))
    key = values.get("key")
    for column in JSON_COLUMNS:
        if column not in values:
            continue
        try:
            values[column] = json.loads(values[column])
        except (json.JSONDecodeError, TypeError, RecursionError) as exc:
            detail = (f"({str(exc)[:60]})" if isinstance(exc, json.JSONDecodeError) else "(it nests too deeply)"
                      if isinstance(exc, RecursionError) else f"(a {type(values[column]).__name__})")
            raise FedleakError(f"results database {path}: {what} {str(key)[:40]!r} is corrupt: "
                               f"{column} is not valid JSON {detail}") from None
    return values


def _invalid(exc: ValidationError, key: Any, what: str, path: Path, within: tuple = ()) -> FedleakError:
    """The first problem of a row as one line naming the run's key and the field."""
    err = exc.errors()[0]
    expect = EXPECTS.get(err["type"], err["msg"].removeprefix("Input should be ").removeprefix("Value error, "))
    got = "" if err["type"] == "missing" else f", got {short(err.get('input'))}"
    where = _where((*within, *err["loc"]))
    return FedleakError(f"results database {path}: {what} {str(key)[:40]!r} is corrupt: "
                        f"{where or 'the row'} must be {expect}{got}")


def _record(row: tuple, path: Path) -> RunRecord:
    """A row as a :class:`RunRecord`; a row that is not what fedleak wrote is one clear error naming
    the run and the field."""
    values = _decoded(row, RUN_COLUMNS, "run", path)
    try:
        _Row.model_validate(values)
    except ValidationError as exc:
        raise _invalid(exc, values.get("key"), "run", path) from None
    for name, value in values["metrics"].items():
        adapter = next((a for prefix, a in EXTRA_METRICS.items() if name.startswith(prefix)), None)
        try:
            if adapter is not None:
                adapter.validate_python(value, strict=True)
        except ValidationError as exc:  # located under its own name
            raise _invalid(exc, values.get("key"), "run", path, ("metrics", name)) from None
    return RunRecord(key=values["key"], study=values["study"], name=values["name"], params=values["params"],
                     config=values["config"], seed=values["seed"], metrics=values["metrics"],
                     artifacts=values["artifacts"], seconds=float(values["seconds"]),
                     finished=float(values["finished"]))


def _failure(row: sqlite3.Row | tuple, path: Path, columns: tuple[str, ...] | None = None) -> Failure:
    """A ``failures`` row as a :class:`Failure`; a damaged row is one clear error naming the run
    and the field."""
    columns = columns or ("key", "study", "name", "params", "config", "error", "attempts", "failed")
    values = _decoded(row, columns, "failed run", path)
    try:
        _FailureRow.model_validate(values)
    except ValidationError as exc:
        raise _invalid(exc, values.get("key"), "failed run", path) from None
    return Failure(key=values["key"], study=values["study"], name=values["name"], params=values["params"],
                   config=values["config"], error=values["error"], attempts=values["attempts"],
                   failed=float(values["failed"]), host=_host(values.get("host")))


def _host(value: Any) -> str:
    """A failure's host column: a database made before it existed (or a damaged value) has none."""
    return value if isinstance(value, str) else ""


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
                    and _owner_alive(held[1], held[2], held[0], owner):
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
        return [_failure(r, self.path, columns) for r in cursor.fetchall()]

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
        return [_record(r, self.path) for r in rows]

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
