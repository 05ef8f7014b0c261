"""A study is a declared grid of runs plus an aggregation (the seeds' experiments, one command each).

``Study.plan(settings)`` lists :class:`PlannedRun` s — each the dotted config flags of one attack run
(or another run kind, e.g. FL training for utility) and the grid coordinates it stands for.
``measure`` adds study-specific numbers to a finished run (e.g. how the target model classifies the
reconstructions); ``table`` aggregates the stored records into rows; ``figures`` draws them. Settings
come from a named preset (``cpu`` finishes within 15 minutes on 2 cores, ``full`` is for bigger
machines), then a YAML file, then ``--set`` overrides, validated like run configs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedleak.device import check_device
from fedleak.registry import Registry
from fedleak.run_unit import PlannedRun, RunSpec
from fedleak.store import RunRecord


class StudySettings(BaseModel):
    """Settings every study shares: whose images, which target, which attack, how many repeats."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("cifar10", description="dataset of the attacked clients")
    root: str | None = Field(None, description="data folder ($FEDLEAK_DATA when unset)")
    split: str = Field("test", description="split the client images come from")
    image_size: int | None = None
    model: str = Field("convnet", description="target architecture (ignored with a checkpoint)")
    width: float = 0.25
    model_options: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="trained target (fedleak train)")
    images: list[int] = Field(default_factory=lambda: [0, 1], description="dataset indices attacked")
    seeds: list[int] = Field(default_factory=lambda: [0], description="repeats with these run seeds")
    attack: dict[str, Any] = Field(default_factory=lambda: {"name": "ig", "iterations": 300},
                                   description="the attack of a study that runs one; a cell that names its own "
                                   "attack (attack.name in its flags) gets that attack's settings alone")
    client: dict[str, Any] = Field(default_factory=dict, description="client section overrides")
    knowledge: dict[str, Any] = Field(default_factory=dict, description="knowledge section overrides")
    device: str = Field("auto", description="where every run computes: auto | cpu | cuda | cuda:N | mps "
                        "(resolved by each run and recorded in its metrics)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)
    client_seed: int | None = Field(None, description="mixed with the study folder's secret into "
                                    "every run's private client seed (see fedleak.studies.secret)")

    def flags(self, **extra: Any) -> dict[str, Any]:
        """The dotted config flags of one run of this study, ``extra`` on top. They hold no client
        seed: each run's private client seed is derived when it executes, from the study folder's
        secret (:mod:`fedleak.studies.secret`), so nothing public — these flags, the run key, the
        payload — gives it away."""
        flags: dict[str, Any] = {
            "data.name": self.dataset, "data.root": self.root, "data.split": self.split,
            "data.image_size": self.image_size, "model.name": self.model, "model.width": self.width,
            "model.checkpoint": self.checkpoint,
        }
        if self.model_options:
            flags["model.options"] = dict(self.model_options)
        # A cell naming its own attack does not inherit this default attack's settings: ig's 300 iterations
        # must not become ROG's budget (ROG's own default is its paper's 100).
        attack = {} if "attack.name" in extra else self.attack
        for section, values in (("attack", attack), ("client", self.client), ("knowledge", self.knowledge)):
            flags.update({f"{section}.{k}": v for k, v in values.items()})
        flags.update(extra)
        flags["device"] = self.device  # where, not what: no coordinate of the run
        return flags


def image_runs(settings: StudySettings, name: str, params: dict[str, Any], **flags: Any) -> list[PlannedRun]:
    """One planned run per attacked image and seed, all with ``flags``."""
    return [PlannedRun(f"{name}/image={i}/seed={s}", {**params, "image": i, "seed": s},
                       settings.flags(**{"data.index": [i], "seed": s, **flags}))
            for s in settings.seeds for i in settings.images]


@dataclass
class Figure:
    """One plot of a study: ``draw(ax, rows)`` on a matplotlib axis."""

    name: str
    title: str
    draw: Any


class Study(ABC):
    """A named experiment: validated ``Settings`` (from a preset, a file and ``--set``), ``plan()`` —
    the grid of :class:`PlannedRun` s the runner executes on any backend — and the read side,
    ``table()`` and ``figures()`` over the stored records. ``locations`` are the settings that say
    where (data roots, devices), which no run key or folder identity includes."""

    name: ClassVar[str] = "study"
    title: ClassVar[str] = ""
    Settings: ClassVar[type[StudySettings]] = StudySettings
    presets: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {}, "full": {}}
    grid_columns: ClassVar[bool] = True  # show reconstructions of every run in the image grid
    # The ``package.module:factory`` names the user's own command line gave (``build_study``): a run
    # may import no other. ``None``: built in Python, which names what it likes.
    factories: frozenset[str] | None = None
    factory_hint: ClassVar[str] = "--set model={name}"  # how the command line names a study's model
    # The settings that say where its data lies or where its runs compute (dotted paths): no part of
    # what the study is (:mod:`fedleak.identity`) — moving the data is no other grid.
    locations: ClassVar[tuple[str, ...]] = ("root", "device")

    def __init__(self, settings: StudySettings) -> None:
        self.settings = settings

    @abstractmethod
    def plan(self) -> list[PlannedRun]:
        """Every run of the study, in the order they execute."""

    def measure(self, result: Any, run: PlannedRun) -> dict[str, Any]:
        """Study-specific numbers of a finished run (stored with its metrics)."""
        return {}

    @abstractmethod
    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        """Aggregate the stored runs into the study's table (one dict a row)."""

    def figures(self) -> list[Figure]:
        return []

    def notes(self) -> list[str]:
        """Lines the report shows under the table (what the numbers mean)."""
        return []


STUDIES: Registry[type[Study]] = Registry("study")


def study_of(spec: RunSpec) -> Study | None:
    """The spec's study, rebuilt from its name and settings (``None`` for a bare run): what
    :func:`fedleak.run_unit.execute` takes to add the study's numbers to the run."""
    if spec.study is None:
        return None
    cls = STUDIES.get(spec.study)
    return cls(cls.Settings.model_validate(spec.settings))


def register(name: str):
    def add(cls: type[Study]) -> type[Study]:
        cls.name = name
        return STUDIES.register(name)(cls)

    return add
