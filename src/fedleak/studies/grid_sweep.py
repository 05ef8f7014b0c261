"""The general sweep (``fedleak sweep``): any run config keys over lists of values, crossed with the
attacked images and the run seeds, as one study — the same run unit, results database, resume,
backends, report and export as the named studies (the modules beside this one; Lim & Chan's TV and
layer studies, a fixed grid over IG's own settings, are :mod:`fedleak.studies.ig_hyperparameters`).

A run's config is the base config (a YAML file and ``--set`` overrides, read as ``fedleak attack``
reads them) with one value of every grid key on top, then the image and the seed; so each run is the
``fedleak attack`` run with those settings, and the table — one row per grid cell, with n, mean and
95 % confidence interval of each quality metric — is what the same attacks run one by one would give.

Grid syntax (``--grid KEY=VALUES``), each value read as YAML (``1e-3`` a number, ``null`` unset):

- ``attack.tv=1e-3,1e-2`` — values separated by commas;
- ``client.defense=none;topk:sparsity=0.9,scope=global`` — with a ``;`` anywhere, values are
  separated by ``;`` instead (for values that hold commas);
- ``model.options=[{norm: none}, {norm: batch}]`` — a YAML list (quote an item that holds commas).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedleak.attacks import build_attack
from fedleak.config import apply_override, build_config, describe_validation_error, load_yaml, parse_override, read_yaml
from fedleak.defenses import parse_defense
from fedleak.errors import ConfigError, FedleakError
from fedleak.identity import identity
from fedleak.models.external import named_factories
from fedleak.store import RunRecord
from fedleak.studies.aggregate import quality, summarize
from fedleak.studies.base import Figure, PlannedRun, Study, register
from fedleak.validate import short

RESERVED = {"seed": "--seeds", "data.index": "--images", "out": "--out"}  # keys the sweep sets itself
MAX_RUNS = 100_000  # a grid larger than this is surely a typo (and would make a huge database)


class SweepSettings(BaseModel):
    """A sweep: the base run config, the grid, the attacked images and the seeds."""

    model_config = ConfigDict(extra="forbid")
    base: dict[str, Any] = Field(default_factory=dict, description="run config tree every run starts from")
    grid: dict[str, list[Any]] = Field(description="config key → its values (the cells are their product)")
    images: list[int] | None = Field(None, description="one run per image index (a block of B × K indices "
                                     "from it when the client batch holds more); unset: the base config's images")
    seeds: list[int] | None = Field(None, description="run seeds (unset: the base config's seed)")
    client_seed: int | None = Field(None, ge=0, lt=2**63, description="mixed with the sweep folder's secret into "
                                    "each run's private client seed (see fedleak.studies.secret)")

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not grid:
            raise ValueError("a sweep needs at least one grid key (--grid key=v1,v2)")
        for key, values in grid.items():
            parts = key.split(".")
            if not key or any(not p for p in parts):
                raise ValueError(f"grid key {short(key)} is not a dotted config key")
            if key in RESERVED:
                raise ValueError(f"grid key {key!r} is set by the sweep itself: use {RESERVED[key]}")
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            texts = [json.dumps(v, sort_keys=True) for v in values]
            if len(set(texts)) != len(texts):
                twice = next(t for t in texts if texts.count(t) > 1)
                raise ValueError(f"grid key {key!r} repeats the value {short(twice)}")
        return grid

    @field_validator("images", "seeds")
    @classmethod
    def _indices(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and (not values or len(set(values)) != len(values) or min(values) < 0):
            raise ValueError("must be distinct non-negative integers, at least one")
        return values


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config tree as dotted flags (``{"a": {"b": 1}}`` → ``{"a.b": 1}``); empty mappings stay."""
    flags: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flags.update(flatten(value, f"{prefix}{key}."))
        else:
            flags[f"{prefix}{key}"] = value
    return flags


def label(value: Any) -> str:
    """A grid value as it appears in run names."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return "null" if value is None else str(value)


@register("sweep")
class SweepStudy(Study):
    """Runs over a grid of any config settings, images and seeds (``fedleak sweep``); one table row
    per grid cell."""

    title = "Sweep over config settings"
    Settings = SweepSettings  # type: ignore[assignment]  # not a StudySettings: the base config is a run config
    settings: SweepSettings  # type: ignore[assignment]
    locations: ClassVar[tuple[str, ...]] = ("base.data.root", "base.device")  # where data lies / runs: no other grid
    presets = {  # examples for `fedleak study sweep`; `fedleak sweep` builds its settings from its options
        "cpu": {"grid": {"attack.tv": [1e-4, 1e-2]}, "images": [0, 1],
                "base": {"model": {"name": "convnet", "width": 0.25}, "attack": {"iterations": 200}}},
        "full": {"grid": {"attack.tv": [0.0, 1e-4, 1e-3, 1e-2, 1e-1]}, "images": list(range(8)), "seeds": [0, 1],
                 "base": {"model": {"name": "convnet"}, "attack": {"name": "ig-limchan"}}},
    }

    factory_hint = "--set model.name={name} or --grid model.name={name}"

    @property
    def keys(self) -> list[str]:
        return list(self.settings.grid)

    def folder_name(self) -> str:
        """The sweep's default folder, ``sweep-HASH``: the same for the same sweep, wherever its data
        lies and whatever device it runs on (its settings' :func:`~fedleak.identity.identity`)."""
        what = identity(self.settings.model_dump(mode="json"), self.locations)
        return f"sweep-{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]}"

    def count(self) -> int:
        """How many runs the sweep has, from the lengths alone (nothing is built)."""
        s = self.settings
        return math.prod(len(v) for v in s.grid.values()) * len(s.seeds or [0]) * len(s.images or [0])

    def check_size(self) -> None:
        """Refuse a sweep of more than :data:`MAX_RUNS` runs before its cells are built."""
        count = self.count()
        if count > MAX_RUNS:
            raise ConfigError(f"the sweep has {count:,} runs (more than {MAX_RUNS:,}); shrink the grid")

    def cells(self) -> list[dict[str, Any]]:
        """Every grid cell (a value of each key), the last key varying fastest."""
        s = self.settings
        self.check_size()
        return [dict(zip(s.grid, values)) for values in itertools.product(*s.grid.values())]

    def plan(self) -> list[PlannedRun]:
        s = self.settings
        self.check_size()
        cells = self.cells()
        runs = []
        for cell in cells:
            tree = copy.deepcopy(s.base)
            for key, value in cell.items():
                apply_override(tree, key.split("."), value)
            block = self._block(tree) if s.images is not None else 0
            seeds = s.seeds if s.seeds is not None else [build_config(flags=flatten(tree)).seed]
            for seed in seeds:
                for image in s.images if s.images is not None else [None]:
                    run_tree = copy.deepcopy(tree)
                    params = dict(cell)
                    if image is not None:
                        apply_override(run_tree, ["data", "index"], [image + k for k in range(block)])
                        params["image"] = image
                    apply_override(run_tree, ["seed"], seed)
                    params["seed"] = seed
                    flags = flatten(run_tree)  # no client seed: the folder's secret gives it as the run executes
                    name = "/".join(f"{k}={label(v)}" for k, v in params.items())
                    runs.append(PlannedRun(name, params, flags))
        return runs

    @staticmethod
    def _block(tree: dict[str, Any]) -> int:
        """How many image indices one run's clients hold: batch size × aggregated clients."""
        flags = {k: v for k, v in flatten(tree).items() if k != "data.index"}
        config = build_config(flags=flags)
        return config.client.batch_size * parse_defense(config.client.defense).clients

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        return summarize(records, self.keys, quality(records))

    def figures(self) -> list[Figure]:
        keys = self.keys

        def bars(ax, rows):
            names = [" · ".join(label(r[k]) for k in keys) for r in rows]
            means = [r["psnr"] for r in rows]
            low = [m - r["psnr_ci_low"] if r["psnr_ci_low"] == r["psnr_ci_low"] else 0 for m, r in zip(means, rows)]
            high = [r["psnr_ci_high"] - m if r["psnr_ci_high"] == r["psnr_ci_high"] else 0 for m, r in zip(means, rows)]
            ax.bar(range(len(rows)), means, yerr=[low, high], capsize=3)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
            ax.set_xlabel(" · ".join(keys))
            ax.set_ylabel("PSNR (dB), 95 % CI")

        return [Figure("psnr-by-cell", "PSNR per grid cell", bars)]

    def notes(self) -> list[str]:
        s = self.settings
        over = []
        if s.images is not None:
            over.append(f"{len(s.images)} image{'s' if len(s.images) > 1 else ''}")
        if s.seeds is not None and len(s.seeds) > 1:
            over.append(f"{len(s.seeds)} seeds")
        return [f"One row per grid cell ({' × '.join(self.keys)}), over {' × '.join(over) or 'its runs'}."]


# ------------------------------------------------------------------------------ the command's options

def parse_grid(texts: list[str], base: dict[str, Any] | None = None) -> dict[str, list[Any]]:
    """``--grid`` options as key → values (see the module docstring for the syntax). With the
    sweep's ``base`` config, two values of a key that give the same run once validated (``1`` and
    ``1.0``, ``"1e-3"`` and ``0.001``, a default spelled out and ``null``) are refused: the sweep would
    run that run twice and count it as two samples."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise ConfigError(f"malformed --grid {short(text)}: expected key.path=v1,v2 (or key=[v1, v2]; "
                              "separate values with ';' when they hold commas)")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; give all its values in one option")
        if raw.startswith("["):
            values = _yaml(raw, text)
            if not isinstance(values, list):
                raise ConfigError(f"malformed --grid {short(text)}: the value is not a YAML list")
        else:
            parts = raw.split(";") if ";" in raw else raw.split(",")
            values = [_yaml(p.strip(), text) for p in parts if p.strip()]
        grid[key] = values
    if base is not None:
        for key, values in grid.items():
            seen: dict[str, int] = {}
            for i, v in enumerate(values):
                first = seen.setdefault(validated(key, v, base), i)
                literally = json.dumps(values[first], sort_keys=True) == json.dumps(v, sort_keys=True)
                if first != i and not literally:  # the very same value: SweepSettings says it repeats
                    raise ConfigError(f"--grid {key}: the values {short(values[first])} and {short(v)} are the same "
                                      "setting once validated, so the sweep would run the same runs twice; "
                                      "give each value once")
    return grid


def validated(key: str, value: Any, base: dict[str, Any]) -> str:
    """The run config that ``key=value`` on top of ``base`` gives, validated (the attack's settings by
    its own config class, defaults filled in), as canonical JSON text. A value that does not validate
    is its own JSON text: its error is reported when the sweep is planned."""
    tree = copy.deepcopy(base)
    try:
        apply_override(tree, key.split("."), value)
        config = build_config(flags=flatten(tree))
        attack = build_attack(config.attack.name, config.attack.settings())
    except (FedleakError, ValueError, TypeError):
        return json.dumps(["unvalidated", value], sort_keys=True, default=str)
    dumped = config.model_dump(mode="json")
    dumped["attack"] = {"class": type(attack).__name__, **attack.config.model_dump(mode="json")}
    return json.dumps(dumped, sort_keys=True, default=str)


def _yaml(raw: str, text: str) -> Any:
    try:
        return load_yaml(raw)
    except yaml.YAMLError:
        raise ConfigError(f"malformed --grid {short(text)}: {short(raw)} is not valid YAML") from None


def parse_indices(text: str, what: str) -> list[int]:
    """``0-15``, ``3`` or ``0,2,5-7`` as a list of integers (ranges inclusive)."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        first, dash, last = part.partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            raise ConfigError(f"--{what} {short(text)}: expected integers and ranges, e.g. 0-15 or 0,3,5-7") from None
        if hi < lo or lo < 0:
            raise ConfigError(f"--{what} {short(text)}: {part!r} is not a range of non-negative integers")
        if len(out) + (hi - lo + 1) > MAX_RUNS:  # counted before the range is written out
            raise ConfigError(f"--{what} {short(text)} names more than {MAX_RUNS:,} values")
        out.extend(range(lo, hi + 1))
    return out


def build_sweep(grid: list[str], images: str | None = None, seeds: str | None = None,
                config: str | Path | None = None, overrides: list[str] | None = None,
                client_seed: int | None = None, trust_config: bool = False) -> SweepStudy:
    """A sweep from the command line's options, every cell's config checked. A
    ``package.module:factory`` only the ``config`` file names is refused when the sweep runs, unless
    ``trust_config`` (the grid and ``overrides`` are the user's own)."""
    base: dict[str, Any] = read_yaml(config) if config else {}
    given = []
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(base, parts, value)
        given.append(value)
    cells = parse_grid(grid, base)
    tree = {"base": base, "grid": cells, "client_seed": client_seed,
            "images": parse_indices(images, "images") if images is not None else None,
            "seeds": parse_indices(seeds, "seeds") if seeds is not None else None}
    try:
        settings = SweepSettings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix="sweep.")) from None
    study = SweepStudy(settings)  # type: ignore[arg-type]  # SweepSettings, as SweepStudy.Settings says
    study.check_size()
    study.factories = None if trust_config else named_factories(list(cells.values()), given)
    return study
