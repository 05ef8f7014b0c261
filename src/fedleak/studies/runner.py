"""Run a study: plan its grid, skip what the results database already holds, execute the rest on a
backend (here, or as Ray tasks) with one overall progress bar.

Only this driver writes the folder: every run is a :class:`~fedleak.run_unit.RunSpec` executed by the
backend, and each outcome is committed on its own as it arrives — its images written, then its row —
so a crash, a SIGKILL or Ctrl-C loses nothing finished and re-running resumes without redoing it.
Runs are claimed in the database before they are handed over, so several drivers on one folder share
the grid instead of each doing all of it. A run that raises is recorded as failed with its one-line
error and the others go on; the next invocation retries it. The folder itself (one grid per folder)
is :mod:`fedleak.studies.folder`; its report is written by the caller (``fedleak study``:
:func:`fedleak.report.study.write_report`), from what :mod:`fedleak.studies.reading` reads.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fedleak.data import load_dataset
from fedleak.errors import FedleakError
from fedleak.run_unit import RUN_KINDS, Outcome
from fedleak.store import Claim, Failure, Owner, ResultsDB, RunRecord, write_atomically
from fedleak.studies.backends import Backend, LocalBackend
from fedleak.studies.base import Study
from fedleak.studies.checks import check_devices, check_factories, preflight
from fedleak.studies.folder import DB_NAME, create, prepare, study_meta, write_meta
from fedleak.studies.planning import Planned, plan
from fedleak.studies.reading import legacy_keys
from fedleak.studies.secret import folder_secret, seed_runs

__all__ = ["DB_NAME", "RUN_KINDS", "StudyOutcome", "failures_summary", "preflight", "run_study"]


def _anything_to_run(out: Path, planned: list[Planned]) -> bool:
    """Whether ``out`` lacks a finished run of the plan (a new folder lacks all): a study with nothing
    left to run starts no backend (no Ray)."""
    if not (out / DB_NAME).is_file():
        return True
    try:
        with ResultsDB(out / DB_NAME, create=False) as db:
            return not all(db.has(p.key) for p in planned)
    except FedleakError:  # a damaged database is the run's own error to report, on the usual path
        return True


@dataclass
class StudyOutcome:
    folder: Path
    total: int
    ran: int  # runs this process computed
    skipped: int  # runs the folder already held
    seconds: float
    hints: list[str] = field(default_factory=list)  # e.g. what LPIPS weights to place where
    elsewhere: int = 0  # runs another process sharing the folder finished meanwhile
    failed: list[Failure] = field(default_factory=list)  # runs that raised in this invocation
    backend: str = "local"


def run_study(study: Study, preset: str, out: Path, progress: bool = True, detail: bool = False,
              force: bool = False, backend: Backend | None = None,
              client_secret: bytes | None = None) -> StudyOutcome:
    """Run every planned run not yet in ``out``'s database on ``backend`` (default: here, one after
    another); the caller writes the report (:func:`fedleak.report.study.write_report`).

    Everything that can be checked is checked before ``out`` is touched: the settings, every run's
    data, model and attack (:func:`preflight`), and that ``out`` is new or holds this same grid
    (another grid only with ``force``, which keeps just the runs of this one; the same grid with its
    data somewhere else is the same grid). Runs are claimed in the database before they start, so
    several processes on one folder share the grid; each waits for the others' runs, so that the
    report its caller writes is complete. A run that raises is recorded as failed (:attr:`StudyOutcome.failed`) and the
    others go on. A study that fails before any run of it is recorded, or whose every run fails,
    removes the folder it created (the latter raises a :class:`FedleakError` with the first error).

    Every run's private client seed comes from the folder's secret (:mod:`fedleak.studies.secret`),
    drawn when the folder has none; ``client_secret`` is the secret a folder without one takes instead
    (another folder's, to repeat its runs exactly)."""
    start = time.perf_counter()
    planned = plan(study)
    check_factories(study, planned)
    loader = functools.lru_cache(maxsize=4)(load_dataset)
    preflight(planned, loader)
    backend = backend or LocalBackend()
    check_devices(planned, backend)
    meta = study_meta(study.name, preset, study.settings.model_dump(mode="json"))
    created = prepare(out, meta, force, type(study).locations)
    owner = Owner.me()
    try:
        if _anything_to_run(out, planned):  # nothing left to run: no cluster joined, no Ray started
            backend.start(loader)  # e.g. joining a cluster: before any folder is made
        if created and not create(out, meta):  # another process made it just now: it must hold this grid
            created = prepare(out, meta, force, type(study).locations)
        out.mkdir(parents=True, exist_ok=True)
        with ResultsDB(out / DB_NAME) as db:
            _adopt_old_keys(db, study, planned, out)
            if force:
                for key in db.keep_only(p.key for p in planned):
                    shutil.rmtree(out / "runs" / key, ignore_errors=True)
            write_meta(out, meta)
            # Derived here, on the driver: the seeds travel with the specs (no worker reads the folder).
            seed_runs(study, planned, folder_secret(out, client_secret))
            counts, hints, failed = _run_pending(study, planned, out, db, owner, backend, progress, detail)
    except BaseException:
        if created:
            _remove_if_unused(out, owner)
        raise
    finally:
        backend.close()
    if created and failed and not counts["ran"] and _remove_if_unused(out, owner, failures_count=False):
        first = failed[0]
        raise FedleakError(f"every run failed, so {str(out)!r} was not kept (first: {first.name}: {first.error})")
    return StudyOutcome(out, len(planned), counts["ran"], counts["skipped"], time.perf_counter() - start,
                        hints, counts["elsewhere"], failed, backend.describe())


def _adopt_old_keys(db: ResultsDB, study: Study, planned: list[Planned], out: Path) -> None:
    """Give the runs of an older database (:func:`fedleak.studies.reading.legacy_keys`) the keys they have now — folder
    ``runs/<key>`` and artifact paths too — so resuming such a study redoes nothing."""
    records = db.records(study.name)
    by_key = {r.key: r for r in records}
    moves = []
    for old_key, p in legacy_keys(records, study, planned).items():
        old, new = out / "runs" / old_key, out / "runs" / p.key
        if old.is_dir() and not new.exists():
            old.rename(new)
        artifacts = {k: v.replace(f"runs/{old_key}/", f"runs/{p.key}/", 1) for k, v in by_key[old_key].artifacts.items()}
        moves.append((old_key, p.key, artifacts))
    if moves:
        db.rekey(moves)


POLL_SECONDS = 1.0  # how often a process waiting for another's runs looks again


def _run_pending(study: Study, planned: list[Planned], out: Path, db: ResultsDB, owner: Owner, backend: Backend,
                 progress: bool, detail: bool) -> tuple[dict[str, int], list[str], list[Failure]]:
    """Claim each unfinished run and hand it to the backend, keeping at most ``backend.capacity`` in
    flight; commit outcomes as they arrive. Runs another live process holds are waited for."""
    pending = deque(p for p in planned if not db.has(p.key))
    counts = {"ran": 0, "skipped": len(planned) - len(pending), "elsewhere": 0}
    hints: dict[str, None] = {}
    failed: list[Failure] = []
    in_flight: dict[Hashable, Planned] = {}
    waiting: list[Planned] = []
    with tqdm(total=len(planned), initial=counts["skipped"], disable=not progress, desc=study.name,
              unit="run") as bar:
        try:
            while pending or in_flight or waiting:
                while pending and len(in_flight) < backend.capacity:
                    p = pending.popleft()
                    state = db.claim(p.key, owner)
                    if state is Claim.BUSY:
                        waiting.append(p)
                    elif state is Claim.MINE:
                        in_flight[backend.submit(p.spec, detail)] = p
                    else:  # finished, or failed meanwhile, by another process sharing the folder
                        counts["elsewhere"] += int(state is Claim.DONE)
                        bar.update(1)
                if in_flight:
                    names = [q.run.name for q in in_flight.values()]
                    bar.set_postfix_str(names[0] if len(names) == 1 else f"{len(names)} running", refresh=True)
                    for ticket, outcome in backend.collect(timeout=POLL_SECONDS if waiting else None):
                        p = in_flight.pop(ticket)
                        if outcome.ok:
                            _commit(study, p, outcome, out, db, owner)
                            hints.update(dict.fromkeys(outcome.metrics.get("hints", [])))
                            counts["ran"] += 1
                        else:
                            failed.append(db.fail(Failure(p.key, study.name, p.run.name, p.run.params,
                                                          p.spec.seeded_config(), outcome.error or "failed",
                                                          host=outcome.host), owner))
                        bar.update(1)
                elif waiting:
                    bar.set_postfix_str(f"waiting for {len(waiting)} runs of another process", refresh=True)
                    time.sleep(POLL_SECONDS)
                if waiting and not pending:  # look at the other process's runs again
                    pending.extend(waiting)
                    waiting.clear()
        finally:
            try:
                db.release(owner)
            except FedleakError:  # best effort: a dead owner's claims are taken over anyway
                pass
    return counts, list(hints), failed


def _commit(study: Study, p: Planned, outcome: Outcome, out: Path, db: ResultsDB, owner: Owner) -> None:
    """Write a finished run's files (its folder appears whole or not at all), then its row."""
    artifacts = {}
    if outcome.artifacts:
        folder = out / "runs" / p.key

        def fill(tmp: Path) -> None:
            for name, data in outcome.artifacts.items():
                if Path(name).name != name or name.startswith("."):
                    raise FedleakError(f"run {p.run.name}: artifact name {name!r} is not a plain file name")
                (tmp / name).write_bytes(data)
                artifacts[Path(name).stem] = f"runs/{p.key}/{name}"

        write_atomically(folder, fill)
    metrics = dict(outcome.metrics)
    metrics["ran_on"] = {"host": outcome.host, "pid": outcome.pid}
    db.finish(RunRecord(key=p.key, study=study.name, name=p.run.name, params=p.run.params,
                        config=p.spec.seeded_config(), seed=p.config.seed, metrics=metrics,
                        artifacts=artifacts, seconds=outcome.seconds), owner)


def _remove_if_unused(out: Path, owner: Owner, failures_count: bool = True) -> bool:
    """Remove the folder this study created if it holds no finished run (nor, with
    ``failures_count``, a failed one) and no other process's claim — nothing of value: an
    interrupted or wholly failed first attempt leaves no empty study behind. Returns whether it went."""
    if (out / DB_NAME).exists():
        try:
            with ResultsDB(out / DB_NAME) as db:
                if db.count() or (failures_count and db.failures()) or db.busy_elsewhere(owner):
                    return False
        except FedleakError:  # a database this call could not even set up holds nothing
            pass
    shutil.rmtree(out, ignore_errors=True)
    return True


def failures_summary(failed: list[Failure], folder: Path, limit: int = 1) -> str:
    """One line about the runs that failed: how many, the first error(s), what to do."""
    first = "; ".join(f"{f.name}: {f.error}" for f in failed[:limit])
    return (f"{len(failed)} run{'s' if len(failed) != 1 else ''} failed (first: {first}); "
            f"`fedleak runs list {folder} --failed` lists them, running the study again retries them")

