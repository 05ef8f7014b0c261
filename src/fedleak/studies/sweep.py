"""The general sweep (``fedleak sweep``): any run config keys over lists of values, crossed with the
attacked images and the run seeds, as one study — the same run unit, results database, resume,
backends, report and export as the named studies (which are in :mod:`fedleak.studies.sweeps` and
the modules beside it).

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
import itertools
import json
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedleak.config import apply_override, build_config, describe_validation_error, load_yaml, parse_override, read_yaml
from fedleak.errors import ConfigError
from fedleak.store import RunRecord
from fedleak.studies.aggregate import summarize
from fedleak.studies.base import Figure, PlannedRun, Study, StudySettings, register
from fedleak.studies.sweeps import quality
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
    client_seed: int | None = Field(None, ge=0, lt=2**63, description="derive each run's private client seed "
                                    "from this (reproducible sweeps); unset: each run draws its own")

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
    Settings = SweepSettings  # type: ignore[assignment]  (not a StudySettings: the base config is a run config)
    settings: SweepSettings  # type: ignore[assignment]
    locations: ClassVar[tuple[str, ...]] = ("base.data.root", "base.device")  # where data lies / runs: no other grid
    presets = {  # examples for `fedleak study sweep`; `fedleak sweep` builds its settings from its options
        "cpu": {"grid": {"attack.tv": [1e-4, 1e-2]}, "images": [0, 1],
                "base": {"model": {"name": "convnet", "width": 0.25}, "attack": {"iterations": 200}}},
        "full": {"grid": {"attack.tv": [0.0, 1e-4, 1e-3, 1e-2, 1e-1]}, "images": list(range(8)), "seeds": [0, 1],
                 "base": {"model": {"name": "convnet"}, "attack": {"name": "ig-limchan"}}},
    }

    @property
    def keys(self) -> list[str]:
        return list(self.settings.grid)

    def cells(self) -> list[dict[str, Any]]:
        """Every grid cell (a value of each key), the last key varying fastest."""
        s = self.settings
        return [dict(zip(s.grid, values)) for values in itertools.product(*s.grid.values())]

    def plan(self) -> list[PlannedRun]:
        s = self.settings
        cells = self.cells()
        count = len(cells) * len(s.seeds or [0]) * len(s.images or [0])
        if count > MAX_RUNS:
            raise ConfigError(f"the sweep has {count:,} runs (more than {MAX_RUNS:,}); shrink the grid")
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
                    flags = flatten(run_tree)
                    if s.client_seed is not None and flags.get("client.seed") is None:
                        coordinates = {k: v for k, v in flags.items() if k != "data.root"}
                        flags["client.seed"] = StudySettings.derived_seed(s.client_seed, coordinates)
                    name = "/".join(f"{k}={label(v)}" for k, v in params.items())
                    runs.append(PlannedRun(name, params, flags))
        return runs

    @staticmethod
    def _block(tree: dict[str, Any]) -> int:
        """How many image indices one run's clients hold: batch size × aggregated clients."""
        from fedleak.defenses import parse_defense

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

def parse_grid(texts: list[str]) -> dict[str, list[Any]]:
    """``--grid`` options as key → values (see the module docstring for the syntax)."""
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
    return grid


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
        out.extend(range(lo, hi + 1))
    if len(out) > MAX_RUNS:
        raise ConfigError(f"--{what} {short(text)} names more than {MAX_RUNS:,} values")
    return out


def build_sweep(grid: list[str], images: str | None = None, seeds: str | None = None,
                config: str | Path | None = None, overrides: list[str] | None = None,
                client_seed: int | None = None) -> SweepStudy:
    """A sweep from the command line's options, every cell's config checked."""
    base: dict[str, Any] = read_yaml(config) if config else {}
    for text in overrides or []:
        apply_override(base, *parse_override(text))
    tree = {"base": base, "grid": parse_grid(grid), "client_seed": client_seed,
            "images": parse_indices(images, "images") if images is not None else None,
            "seeds": parse_indices(seeds, "seeds") if seeds is not None else None}
    try:
        settings = SweepSettings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix="sweep.")) from None
    return SweepStudy(settings)
