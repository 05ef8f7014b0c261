"""Run a study: plan its grid, skip what the results database already holds, run the rest with one
overall progress bar, then build the report. Each finished run is committed on its own, so a crash
or Ctrl-C loses nothing finished and re-running resumes."""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm.auto import tqdm

from fedleak.config import RunConfig, apply_override, build_config, describe_validation_error, parse_override, read_yaml
from fedleak.errors import ConfigError
from fedleak.registry import Registry
from fedleak.store import ResultsDB, RunRecord, run_key
from fedleak.studies.base import STUDIES, PlannedRun, Study

DB_NAME = "results.sqlite"
STUDY_FILE = "study.json"

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
            f"model:{c.model.name}:{c.model.checkpoint}": lambda: read_info(c.model.checkpoint)
            if c.model.checkpoint else (None if is_external(c.model.name) else MODELS.get(c.model.name)),
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
    ran: int
    skipped: int
    seconds: float
    hints: list[str] = field(default_factory=list)  # e.g. what LPIPS weights to place where


def run_study(study: Study, preset: str, out: Path, progress: bool = True, detail: bool = False) -> StudyOutcome:
    """Run every planned run not yet in ``out``'s database, then write the report."""
    from fedleak.data import load_dataset
    from fedleak.report.study import write_report

    start = time.perf_counter()
    planned = plan(study)
    loader = functools.lru_cache(maxsize=4)(load_dataset)
    preflight(planned, loader)
    out.mkdir(parents=True, exist_ok=True)
    (out / STUDY_FILE).write_text(json.dumps(
        {"study": study.name, "preset": preset, "settings": study.settings.model_dump(mode="json")}, indent=2))
    ran = skipped = 0
    hints: dict[str, None] = {}
    with ResultsDB(out / DB_NAME) as db:
        todo = [p for p in planned if not db.has(p.key)]
        skipped = len(planned) - len(todo)
        with tqdm(total=len(planned), initial=skipped, disable=not progress, desc=study.name, unit="run") as bar:
            for p in todo:
                bar.set_postfix_str(p.run.name, refresh=True)
                t0 = time.perf_counter()
                metrics, artifacts = RUN_KINDS.get(p.run.kind)(study, p.run, p.config, out / "runs" / p.key,
                                                               loader, detail)
                db.add(RunRecord(key=p.key, study=study.name, name=p.run.name, params=p.run.params,
                                 config=p.config.model_dump(mode="json"), seed=p.config.seed, metrics=metrics,
                                 artifacts=artifacts, seconds=time.perf_counter() - t0))
                ran += 1
                hints.update(dict.fromkeys(metrics.get("hints", [])))
                bar.update(1)
    write_report(out)
    return StudyOutcome(out, len(planned), ran, skipped, time.perf_counter() - start, list(hints))


def load_study(folder: Path) -> tuple[Study, str, list[Planned], list[RunRecord]]:
    """Re-create a study from its folder and pick its planned runs' records from the database."""
    meta_path = folder / STUDY_FILE
    if not meta_path.is_file() or not (folder / DB_NAME).is_file():
        raise ConfigError(f"{str(folder)!r} is not a study folder (no {STUDY_FILE} and {DB_NAME})")
    meta = json.loads(meta_path.read_text())
    cls = STUDIES.get(meta["study"])
    study = cls(cls.Settings.model_validate(meta["settings"]))
    planned = plan(study)
    with ResultsDB(folder / DB_NAME) as db:
        by_key = {r.key: r for r in db.records(study.name)}
    records = [by_key[p.key] for p in planned if p.key in by_key]
    return study, meta["preset"], planned, records


def save_images(folder: Path, result: Any) -> dict[str, str]:
    """Originals and their matched reconstructions as PNG files; returns their relative paths."""
    from fedleak.report.grid import image_grid, png_bytes

    folder.mkdir(parents=True, exist_ok=True)
    matched = result.reconstruction.images[result.evaluation.order]
    paths = {}
    for i in range(len(matched)):
        for kind, image in (("original", result.truth.images[i]), ("reconstruction", matched[i])):
            name = f"{kind}-{i}.png"
            (folder / name).write_bytes(png_bytes(image_grid([image[None]], scale=4, pad=0)))
            paths[f"{kind}-{i}"] = f"runs/{folder.name}/{name}"
    return paths


@RUN_KINDS.register("attack")
def attack_run(study: Study, run: PlannedRun, config: RunConfig, folder: Path, loader: Callable,
               detail: bool) -> tuple[dict[str, Any], dict[str, str]]:
    from fedleak.pipeline import run as run_attack

    result = run_attack(config, progress=detail, loader=loader)
    metrics = result.metrics()
    metrics.update(study.measure(result, run))
    return metrics, save_images(folder, result)
