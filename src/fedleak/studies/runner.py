"""Run a study: plan its grid, skip what the results database already holds, execute the rest on a
backend (here, or as Ray tasks) with one overall progress bar, then build the report.

Only this driver writes the folder: every run is a :class:`~fedleak.pipeline.RunSpec` executed by the
backend, and each outcome is committed on its own as it arrives — its images written, then its row —
so a crash, a SIGKILL or Ctrl-C loses nothing finished and re-running resumes without redoing it.
Runs are claimed in the database before they are handed over, so several drivers on one folder share
the grid instead of each doing all of it. A run that raises is recorded as failed with its one-line
error and the others go on; the next invocation retries it. The folder itself (one grid per folder)
is :mod:`fedleak.studies.folder`.
"""

from __future__ import annotations

import copy
import functools
import math
import shutil
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm.auto import tqdm

from fedleak.config import RunConfig, apply_override, build_config, describe_validation_error, parse_override, read_yaml
from fedleak.errors import ConfigError, FedleakError
from fedleak.pipeline import RUN_KINDS, Outcome, RunSpec
from fedleak.store import Claim, Failure, Owner, ResultsDB, RunRecord, locked, run_key, write_atomically
from fedleak.studies.backends import Backend, LocalBackend
from fedleak.studies.base import STUDIES, PlannedRun, Study
from fedleak.studies.folder import DB_NAME, STUDY_FILE, create, prepare, read_meta, study_meta, write_meta

__all__ = ["RUN_KINDS", "Planned", "StudyOutcome", "build_study", "load_study", "plan", "preflight", "run_study"]


def build_study(name: str, preset: str = "cpu", file: str | Path | None = None,
                overrides: list[str] | None = None, trust_config: bool = False) -> Study:
    """The study ``name`` with settings: preset < YAML file < ``--set`` overrides. The overrides are
    the user's own: only the ``package.module:factory`` names they give may be imported when the
    study runs (:func:`check_factories`), not one only the file or preset names — unless
    ``trust_config``."""
    from fedleak.models.external import named_factories

    cls = STUDIES.get(name)
    if preset not in cls.presets:
        raise ConfigError(f"study {name!r} has no preset {preset!r}; choose one of: {', '.join(cls.presets)}")
    tree: dict[str, Any] = copy.deepcopy(cls.presets[preset])
    if file:
        tree.update(read_yaml(file))
    given = []
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(tree, parts, value)
        given.append(value)
    try:
        study = cls(cls.Settings.model_validate(tree))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix="study.")) from None
    study.factories = None if trust_config else named_factories(given)
    return study


def check_factories(study: Study, planned: list[Planned]) -> None:
    """Refuse to run a study whose runs would import a ``package.module:factory`` that its
    command line did not name (:attr:`Study.factories`): one a settings file, a preset or a study
    folder names. Checked before anything is looked up or made."""
    from fedleak.models.external import is_external, refuse_file_factory

    if study.factories is None:
        return
    for p in planned:
        name = p.config.model.name
        if is_external(name) and name not in study.factories:
            where = f"the {study.name} study's config (a --config file or preset)"
            refuse_file_factory(name, where, study.factory_hint)


def check_devices(planned: list[Planned], backend: Backend) -> None:
    """Every device the runs ask for must exist where they compute — a one-line error before any
    folder is made, not a failed run each: a backend with a ``check_device`` (Ray: what its tasks
    see) checks there; the others compute in this process, so the device is resolved here."""
    from fedleak.device import resolve_device

    check = getattr(backend, "check_device", resolve_device)
    for device in sorted({p.config.device for p in planned}):
        check(device)


@dataclass
class Planned:
    run: PlannedRun
    config: RunConfig
    spec: RunSpec

    @property
    def key(self) -> str:
        return self.spec.key


MAX_GRID = 2_000_000  # the product of a study's list settings' lengths, an upper bound on its runs


def plan(study: Study) -> list[Planned]:
    """Every run with its validated config and run spec (all checked before any work)."""
    settings = study.settings.model_dump(mode="json")
    bound = math.prod(len(v) for v in settings.values() if isinstance(v, list) and v)
    if bound > MAX_GRID:  # before the plan is built: a settings file of long lists must not exhaust memory
        raise ConfigError(f"the study's lists span up to {bound:,} runs (more than {MAX_GRID:,}); shorten them")
    planned = []
    for run in study.plan():
        config = build_config(flags=run.flags)
        spec = RunSpec(config=config.model_dump(mode="json"), study=study.name, settings=settings, name=run.name,
                       params=run.params, kind=run.kind, extra=run.extra, flags=run.flags)
        planned.append(Planned(run, config, spec))
    keys = [p.key for p in planned]
    if len(set(keys)) != len(keys):
        twice = next(p.run.name for p in planned if keys.count(p.key) > 1)
        raise ConfigError(f"the grid holds the same run twice ({twice}): its settings repeat a value")
    return planned


def preflight(planned: list[Planned], loader: Callable) -> None:
    """Check what a run would only find out late — datasets, models, checkpoints, attacks — before
    any work starts, so a bad setting is one clear error and no half-made study folder."""
    from fedleak.attacks import build_attack
    from fedleak.models.checkpoint import read_info
    from fedleak.models.external import is_external
    from fedleak.models.registry import MODELS

    seen: set[str] = set()
    for p in planned:
        c = p.config
        RUN_KINDS.get(p.run.kind)
        checks = {
            f"data:{c.data.model_dump_json()}:{split}": functools.partial(
                _load_and_check, loader, c, split, c.data.index if split == c.data.split else None)
            for split in (c.data.split, *p.run.extra.get("splits", ()))
        }
        checks |= {
            f"model:{c.model.name}:{c.model.checkpoint}": lambda: read_info(c.model.checkpoint, named=c.model.name)
            if c.model.checkpoint else (None if is_external(c.model.name) else MODELS.get(c.model.name)),
            **{f"classifier:{path}": functools.partial(read_info, path) for path in p.run.extra.get("transfer", ())},
            f"attack:{c.attack.model_dump_json()}": lambda: build_attack(c.attack.name, c.attack.settings()),
        }
        for key, check in checks.items():
            if key not in seen:
                seen.add(key)
                check()


def _load_and_check(loader: Callable, c: RunConfig, split: str, index: list[int] | None) -> None:
    """Load a run's split as its run would, and check that the images it names are in it."""
    dataset = loader(c.data.name, c.data.root, split=split, image_size=c.data.image_size,
                     channels=c.data.channels, **c.data.options)
    for i in index or ():
        dataset.check_index(i)


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
    another), then write the report.

    Everything that can be checked is checked before ``out`` is touched: the settings, every run's
    data, model and attack (:func:`preflight`), and that ``out`` is new or holds this same grid
    (another grid only with ``force``, which keeps just the runs of this one; the same grid with its
    data somewhere else is the same grid). Runs are claimed in the database before they start, so
    several processes on one folder share the grid; each waits for the others' runs and writes the
    complete report. A run that raises is recorded as failed (:attr:`StudyOutcome.failed`) and the
    others go on. A study that fails before any run of it is recorded, or whose every run fails,
    removes the folder it created (the latter raises a :class:`FedleakError` with the first error).

    Every run's private client seed comes from the folder's secret (:mod:`fedleak.studies.secret`),
    drawn when the folder has none; ``client_secret`` is the secret a folder without one takes instead
    (another folder's, to repeat its runs exactly)."""
    from fedleak.data import load_dataset
    from fedleak.report.study import write_report
    from fedleak.studies.secret import folder_secret, seed_runs

    start = time.perf_counter()
    planned = plan(study)
    check_factories(study, planned)
    loader = functools.lru_cache(maxsize=4)(load_dataset)
    preflight(planned, loader)
    backend = backend or LocalBackend()
    check_devices(planned, backend)
    meta = study_meta(study.name, preset, study.settings.model_dump(mode="json"))
    created = prepare(out, _as_stored(out, meta, type(study)), force)
    owner = Owner.me()
    try:
        if _anything_to_run(out, planned):  # nothing left to run: no cluster joined, no Ray started
            backend.start(loader)  # e.g. joining a cluster: before any folder is made
        if created and not create(out, meta):  # another process made it just now: it must hold this grid
            created = prepare(out, _as_stored(out, meta, type(study)), force)
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
    with locked(out):  # processes sharing the folder finish at about the same time: one writes at a time
        write_report(out)
    return StudyOutcome(out, len(planned), counts["ran"], counts["skipped"], time.perf_counter() - start,
                        hints, counts["elsewhere"], failed, backend.describe())


def _as_stored(out: Path, meta: dict[str, Any], cls: type[Study]) -> dict[str, Any]:
    """``meta`` as the folder would compare it: where the folder's ``study.json`` differs from it
    only in settings that say where things lie or run (:attr:`Study.locations`: the data root, the
    device), those
    take the folder's values — moving the data is no other grid; the new values are written after."""
    try:
        old = read_meta(out)
    except (FedleakError, OSError):
        return meta
    stored = copy.deepcopy(meta)
    for dotted in getattr(cls, "locations", ("root", "device")):
        *parents, leaf = dotted.split(".")
        new_node, old_node = stored.get("settings"), old.get("settings")
        for part in parents:
            new_node = new_node.get(part) if isinstance(new_node, dict) else None
            old_node = old_node.get(part) if isinstance(old_node, dict) else None
        if isinstance(new_node, dict) and isinstance(old_node, dict):
            if leaf in old_node:
                new_node[leaf] = old_node[leaf]
            else:  # a folder written before the setting existed
                new_node.pop(leaf, None)
    return stored


def _legacy_keys(records: list[RunRecord], study: Study, planned: list[Planned]) -> dict[str, Planned]:
    """Old key → planned run, for the records of a database written before keys left ``data.root``
    out. A record is matched only when its stored config, with its own data root put back into the
    plan's, hashes to its old key exactly."""
    known = {p.key for p in planned}
    by_name = {p.run.name: p for p in planned}
    found = {}
    for record in records:
        p = by_name.get(record.name)
        if record.key in known or p is None:
            continue
        stored = record.config.get("data")
        config = copy.deepcopy(p.spec.config)
        config["data"]["root"] = stored.get("root") if isinstance(stored, dict) else None
        if run_key(study.name, {"kind": p.spec.kind, "config": config, "extra": p.spec.extra}) == record.key:
            found[record.key] = p
    return found


def _adopt_old_keys(db: ResultsDB, study: Study, planned: list[Planned], out: Path) -> None:
    """Give the runs of an older database (:func:`_legacy_keys`) the keys they have now — folder
    ``runs/<key>`` and artifact paths too — so resuming such a study redoes nothing."""
    records = db.records(study.name)
    by_key = {r.key: r for r in records}
    moves = []
    for old_key, p in _legacy_keys(records, study, planned).items():
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


def load_study(folder: Path) -> tuple[Study, str, list[Planned], list[RunRecord]]:
    """Re-create a study from its folder and pick its planned runs' records from the database, in
    plan order (whatever order a backend finished them in). The folder is read as a file someone
    else made: anything damaged is one :class:`FedleakError`."""
    if not (folder / STUDY_FILE).is_file() or not (folder / DB_NAME).is_file():
        raise ConfigError(f"{str(folder)!r} is not a study folder (no {STUDY_FILE} and {DB_NAME})")
    meta = read_meta(folder)
    cls = STUDIES.get(meta["study"])
    try:
        study = cls(cls.Settings.model_validate(meta["settings"], strict=True))  # as written: no "1" for 1
    except ValidationError as exc:
        raise ConfigError(f"{folder / STUDY_FILE}: {describe_validation_error(exc, prefix='settings.')}") from None
    study.factories = frozenset()  # a folder names no code to import: read, never run (run_study refuses it)
    planned = plan(study)
    with ResultsDB(folder / DB_NAME, create=False) as db:
        stored = db.records(study.name)
    by_key = {r.key: r for r in stored}
    for old_key, p in _legacy_keys(stored, study, planned).items():  # an older database, read as it is
        by_key.setdefault(p.key, by_key[old_key])
    records = [by_key[p.key] for p in planned if p.key in by_key]
    return study, meta["preset"], planned, records


def failures_summary(failed: list[Failure], folder: Path, limit: int = 1) -> str:
    """One line about the runs that failed: how many, the first error(s), what to do."""
    first = "; ".join(f"{f.name}: {f.error}" for f in failed[:limit])
    return (f"{len(failed)} run{'s' if len(failed) != 1 else ''} failed (first: {first}); "
            f"`fedleak runs list {folder} --failed` lists them, running the study again retries them")

