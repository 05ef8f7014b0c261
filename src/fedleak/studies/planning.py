"""A study's grid as it will run: :func:`build_study` makes a study from its name, preset, settings
file and ``--set`` overrides; :func:`plan` turns it into :class:`Planned` runs — each grid cell with
its validated config and its :class:`~fedleak.run_unit.RunSpec`, checked before any work. Both the
driver (:mod:`fedleak.studies.runner`) and the reading side (:mod:`fedleak.studies.reading`) plan.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedleak.attacks import build_attack
from fedleak.config import RunConfig, apply_override, build_config, describe_validation_error, parse_override, read_yaml
from fedleak.errors import ConfigError
from fedleak.models.external import named_factories
from fedleak.needs import run_needs
from fedleak.run_unit import PlannedRun, RunSpec
from fedleak.studies.base import STUDIES, Study
from fedleak.threats import smallest


def build_study(name: str, preset: str = "cpu", file: str | Path | None = None,
                overrides: list[str] | None = None, trust_config: bool = False) -> Study:
    """The study ``name`` with settings: preset < YAML file < ``--set`` overrides. The overrides are
    the user's own: only the ``package.module:factory`` names they give may be imported when the
    study runs (:func:`fedleak.studies.checks.check_factories`), not one only the file or preset
    names — unless ``trust_config``."""
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
    attacks: dict[str, Any] = {}  # one built attack per distinct attack section (for what it needs)
    for run in study.plan():
        config = with_threat(build_config(flags=run.flags), attacks)
        spec = RunSpec(config=config.model_dump(mode="json"), study=study.name, settings=settings, name=run.name,
                       params=run.params, kind=run.kind, extra=run.extra, flags=run.flags)
        planned.append(Planned(run, config, spec))
    keys = [p.key for p in planned]
    if len(set(keys)) != len(keys):
        twice = next(p.run.name for p in planned if keys.count(p.key) > 1)
        raise ConfigError(f"the grid holds the same run twice ({twice}): its settings repeat a value")
    return planned


def with_threat(config: RunConfig, attacks: dict[str, Any] | None = None) -> RunConfig:
    """``config`` granted, where it names no threat model, the weakest that grants what it uses: a
    study's protocol decides what its attacker knows, and each run records it. ``attacks`` caches
    the built attack of each attack section across a plan."""
    if config.threat is not None:
        return config
    cache = {} if attacks is None else attacks
    key = config.attack.model_dump_json()
    if key not in cache:
        cache[key] = build_attack(config.attack.name, config.attack.settings())
    attack = cache[key]
    return config.model_copy(update={"threat": smallest(run_needs(config, attack))})
