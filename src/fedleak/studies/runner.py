"""Run a study: plan its grid, skip what the results database already holds, run the rest with one
overall progress bar, then build the report. Each finished run is committed on its own, so a crash
or Ctrl-C loses nothing finished and re-running resumes. Runs are claimed in the database before
they start, so several processes on one folder share the grid instead of each doing all of it; the
folder itself (one grid per folder) is :mod:`fedleak.studies.folder`."""

from __future__ import annotations

import copy
import functools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm.auto import tqdm

from fedleak.config import RunConfig, apply_override, build_config, describe_validation_error, parse_override, read_yaml
from fedleak.errors import ConfigError, FedleakError
from fedleak.registry import Registry
from fedleak.store import Claim, Owner, ResultsDB, RunRecord, locked, run_key, write_atomically
from fedleak.studies.base import STUDIES, PlannedRun, Study
from fedleak.studies.folder import DB_NAME, STUDY_FILE, create, prepare, read_meta, study_meta, write_meta

RunKind = Callable[[Study, PlannedRun, RunConfig, Path, Callable, bool], tuple[dict[str, Any], dict[str, str]]]
RUN_KINDS: Registry[RunKind] = Registry("run kind")


def build_study(name: str, preset: str = "cpu", file: str | Path | None = None,
                overrides: list[str] | None = None) -> Study:
    """The study ``name`` with settings: preset < YAML file < ``--set`` overrides."""
    cls = STUDIES.get(name)
    if preset not in cls.presets:
        raise ConfigError(f"study {name!r} has no preset {preset!r}; choose one of: {', '.join(cls.presets)}")
    tree: dict[str, Any] = copy.deepcopy(cls.presets[preset])
    if file:
        tree.update(read_yaml(file))
    for text in overrides or []:
        apply_override(tree, *parse_override(text))
    try:
        return cls(cls.Settings.model_validate(tree))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix="study.")) from None


@dataclass
class Planned:
    run: PlannedRun
    config: RunConfig
    key: str


def plan(study: Study) -> list[Planned]:
    """Every run with its validated config and database key (all checked before any work)."""
    planned = []
    for run in study.plan():
        config = build_config(flags=run.flags)
        tree = {"kind": run.kind, "config": config.model_dump(mode="json"), "extra": run.extra}
        planned.append(Planned(run, config, run_key(study.name, tree)))
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
        checks = {
            f"data:{c.data.model_dump_json()}:{split}": functools.partial(
                loader, c.data.name, c.data.root, split=split, image_size=c.data.image_size,
                channels=c.data.channels, **c.data.options)
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


@dataclass
class StudyOutcome:
    folder: Path
    total: int
    ran: int  # runs this process computed
    skipped: int  # runs the folder already held
    seconds: float
    hints: list[str] = field(default_factory=list)  # e.g. what LPIPS weights to place where
    elsewhere: int = 0  # runs another process sharing the folder finished meanwhile


def run_study(study: Study, preset: str, out: Path, progress: bool = True, detail: bool = False,
              force: bool = False) -> StudyOutcome:
    """Run every planned run not yet in ``out``'s database, then write the report.

    Everything that can be checked is checked before ``out`` is touched: the settings, every run's
    data, model and attack (:func:`preflight`), and that ``out`` is new or holds this same grid
    (another grid only with ``force``, which keeps just the runs of this one). Runs are claimed in
    the database before they start, so several processes on one folder share the grid; each waits
    for the others' runs and writes the complete report. A study that fails before any run of it is
    committed removes the folder it created."""
    from fedleak.data import load_dataset
    from fedleak.report.study import write_report

    start = time.perf_counter()
    planned = plan(study)
    loader = functools.lru_cache(maxsize=4)(load_dataset)
    preflight(planned, loader)
    meta = study_meta(study.name, preset, study.settings.model_dump(mode="json"))
    created = prepare(out, meta, force)
    if created and not create(out, meta):  # another process made it just now: it must hold this grid
        created = prepare(out, meta, force)
    owner = Owner.me()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with ResultsDB(out / DB_NAME) as db:
            if force:
                for key in db.keep_only(p.key for p in planned):
                    shutil.rmtree(out / "runs" / key, ignore_errors=True)
            write_meta(out, meta)
            counts, hints = _run_pending(study, planned, out, db, owner, loader, progress, detail)
    except BaseException:
        if created:
            _remove_if_unused(out, owner)
        raise
    with locked(out):  # processes sharing the folder finish at about the same time: one writes at a time
        write_report(out)
    return StudyOutcome(out, len(planned), counts["ran"], counts["skipped"], time.perf_counter() - start,
                        hints, counts["elsewhere"])


POLL_SECONDS = 1.0  # how often a process waiting for another's runs looks again


def _run_pending(study: Study, planned: list[Planned], out: Path, db: ResultsDB, owner: Owner,
                 loader: Callable, progress: bool, detail: bool) -> tuple[dict[str, int], list[str]]:
    """Claim and run each unfinished run; runs another live process holds are waited for."""
    pending = [p for p in planned if not db.has(p.key)]
    counts = {"ran": 0, "skipped": len(planned) - len(pending), "elsewhere": 0}
    hints: dict[str, None] = {}
    with tqdm(total=len(planned), initial=counts["skipped"], disable=not progress, desc=study.name,
              unit="run") as bar:
        try:
            while pending:
                waiting = []
                for p in pending:
                    state = db.claim(p.key, owner)
                    if state is Claim.BUSY:
                        waiting.append(p)
                        continue
                    if state is Claim.MINE:
                        bar.set_postfix_str(p.run.name, refresh=True)
                        metrics = _run_one(study, p, out, db, owner, loader, detail)
                        hints.update(dict.fromkeys(metrics.get("hints", [])))
                    counts["ran" if state is Claim.MINE else "elsewhere"] += 1
                    bar.update(1)
                pending = waiting
                if pending:
                    bar.set_postfix_str(f"waiting for {len(pending)} runs of another process", refresh=True)
                    time.sleep(POLL_SECONDS)
        finally:
            try:
                db.release(owner)
            except FedleakError:  # best effort: a dead owner's claims are taken over anyway
                pass
    return counts, list(hints)


def _run_one(study: Study, p: Planned, out: Path, db: ResultsDB, owner: Owner, loader: Callable,
             detail: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    metrics, artifacts = RUN_KINDS.get(p.run.kind)(study, p.run, p.config, out / "runs" / p.key, loader, detail)
    db.finish(RunRecord(key=p.key, study=study.name, name=p.run.name, params=p.run.params,
                        config=p.config.model_dump(mode="json"), seed=p.config.seed, metrics=metrics,
                        artifacts=artifacts, seconds=time.perf_counter() - t0), owner)
    return metrics


def _remove_if_unused(out: Path, owner: Owner) -> None:
    """Remove the folder this study created if it holds no finished run and no other process's
    claim — nothing of value: a failed or interrupted first attempt leaves no empty study behind."""
    if (out / DB_NAME).exists():
        try:
            with ResultsDB(out / DB_NAME) as db:
                if db.count() or db.busy_elsewhere(owner):
                    return
        except FedleakError:  # a database this call could not even set up holds nothing
            pass
    shutil.rmtree(out, ignore_errors=True)


def load_study(folder: Path) -> tuple[Study, str, list[Planned], list[RunRecord]]:
    """Re-create a study from its folder and pick its planned runs' records from the database.
    The folder is read as a file someone else made: anything damaged is one :class:`FedleakError`."""
    if not (folder / STUDY_FILE).is_file() or not (folder / DB_NAME).is_file():
        raise ConfigError(f"{str(folder)!r} is not a study folder (no {STUDY_FILE} and {DB_NAME})")
    meta = read_meta(folder)
    cls = STUDIES.get(meta["study"])
    try:
        study = cls(cls.Settings.model_validate(meta["settings"]))
    except ValidationError as exc:
        raise ConfigError(f"{folder / STUDY_FILE}: {describe_validation_error(exc, prefix='settings.')}") from None
    planned = plan(study)
    with ResultsDB(folder / DB_NAME, create=False) as db:
        by_key = {r.key: r for r in db.records(study.name)}
    records = [by_key[p.key] for p in planned if p.key in by_key]
    return study, meta["preset"], planned, records


def save_images(folder: Path, result: Any) -> dict[str, str]:
    """Originals and their matched reconstructions as PNG files; returns their relative paths."""
    from fedleak.report.grid import image_grid, png_bytes

    matched = result.reconstruction.images[result.evaluation.order]
    paths = {}

    def fill(tmp: Path) -> None:  # the folder appears whole or not at all
        for i in range(len(matched)):
            for kind, image in (("original", result.truth.images[i]), ("reconstruction", matched[i])):
                name = f"{kind}-{i}.png"
                (tmp / name).write_bytes(png_bytes(image_grid([image[None]], scale=4, pad=0)))
                paths[f"{kind}-{i}"] = f"runs/{folder.name}/{name}"

    write_atomically(folder, fill)
    return paths


@RUN_KINDS.register("attack")
def attack_run(study: Study, run: PlannedRun, config: RunConfig, folder: Path, loader: Callable,
               detail: bool) -> tuple[dict[str, Any], dict[str, str]]:
    from fedleak.pipeline import run as run_attack

    result = run_attack(config, progress=detail, loader=loader)
    metrics = result.metrics()
    metrics.update(study.measure(result, run))
    return metrics, save_images(folder, result)
