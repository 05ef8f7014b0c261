"""The run unit: one run as plain data (:class:`RunSpec`), executed into an :class:`Outcome` wherever it
computes — here, in another process, as a Ray task.

A :class:`RunSpec` is plain, picklable data — the run's config, its study's name and settings, its
grid coordinates and the extras of its kind — naming the dataset by identity (name, split, size,
channels, options), not by where it lies: its :attr:`~RunSpec.key` leaves ``data.root`` and the
device out (:mod:`fedleak.identity`), so moving the data does not make a study redo its runs.
:func:`execute` turns a spec into an :class:`Outcome` — metrics and the artifacts as bytes keyed by
their file names; only the driver writes the results database and files.

Every run kind is one entry of :data:`RUN_KINDS` (and, where many runs go faster together, of
:data:`BATCHED_KINDS`). The general ``attack`` kind — one :func:`fedleak.pipeline.run` — is here; a
kind that only one study plans is registered by that study's module (``fl-train`` in
:mod:`fedleak.studies.tradeoff`, ``attack-sample`` in :mod:`fedleak.studies.secure_aggregation`).
The run unit knows a study only as what adds its numbers to a finished run (:class:`Measures`): the
caller that executes a study's spec hands its study over (:func:`fedleak.studies.base.study_of`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fedleak.config import LATER_CONFIG_FIELDS, RunConfig
from fedleak.data import ImageDataset, load_dataset
from fedleak.errors import FedleakError
from fedleak.exits import one_line
from fedleak.identity import RUN_LOCATIONS, identity, without_defaults
from fedleak.modalities import MODALITIES
from fedleak.pipeline import RunResult, run, run_many
from fedleak.registry import Registry
from fedleak.store import run_key


@dataclass
class PlannedRun:
    """One cell of a study's grid: ``params`` are its coordinates, ``flags`` its config.
    ``seed_scope``: what its private client seed is derived from besides the folder's secret (runs
    with the same scope attack the same client batches); ``None``: the run's own key."""

    name: str
    params: dict[str, Any]
    flags: dict[str, Any]
    kind: str = "attack"
    extra: dict[str, Any] = field(default_factory=dict)
    seed_scope: dict[str, Any] | None = None


class Measures(Protocol):
    """What the run unit needs of a study: its numbers for a finished run (:meth:`fedleak.studies.base.Study.measure`)."""

    def measure(self, result: Any, run: PlannedRun) -> dict[str, Any]: ...


Artifacts = tuple[dict[str, Any], dict[str, bytes]]
RunKind = Callable[["Measures | None", "RunSpec", Callable[..., ImageDataset], bool], Artifacts]
RUN_KINDS: Registry[RunKind] = Registry("run kind")
"""``kind(study, spec, loader, detail) → (metrics, artifacts)``: one run of that kind; ``artifacts``
maps file names (relative to the run's folder) to their bytes."""

BatchedKind = Callable[[list["Measures | None"], list["RunSpec"], Callable[..., ImageDataset], bool], list[Artifacts]]
BATCHED_KINDS: Registry[BatchedKind] = Registry("batched run kind")
"""Run kinds that execute many specs together better than one by one (the attacks' batched
optimisation); a kind not listed here runs its specs one after another."""


@dataclass(frozen=True)
class RunSpec:
    """One run as plain data that pickles anywhere (a Ray task, another process).

    ``config`` is the run's validated :class:`RunConfig` as JSON data; ``study`` and ``settings``
    name the study whose ``measure`` adds its numbers (``None``: a bare run); ``name``, ``params``
    and ``flags`` are its grid cell; ``extra`` holds what its kind needs beyond the config.
    ``client_seed`` is the private client seed a study's driver derived from its folder's secret
    (:mod:`fedleak.studies.secret`) for a config that names none; it travels with the spec (a worker
    never reads the folder) and is no part of the run's key.
    """

    config: dict[str, Any]
    study: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "run"
    params: dict[str, Any] = field(default_factory=dict)
    kind: str = "attack"
    extra: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    client_seed: int | None = None

    @property
    def dataset(self) -> dict[str, Any]:
        """The dataset's identity: what it is, not where it lies."""
        d = self.config.get("data", {})
        return {k: d.get(k) for k in ("name", "split", "image_size", "channels", "options")}

    def identity(self) -> dict[str, Any]:
        """What makes the run this run: its kind, its config without its locations (``data.root``,
        ``device``: :data:`fedleak.identity.RUN_LOCATIONS`) and without the fields added since keys
        existed that it leaves at their defaults (:data:`fedleak.config.LATER_CONFIG_FIELDS`), its extras."""
        config = without_defaults(identity(self.config, RUN_LOCATIONS), LATER_CONFIG_FIELDS)
        return {"kind": self.kind, "config": config, "extra": self.extra}

    @property
    def key(self) -> str:
        """The run's id in a results database: its study and :meth:`identity`, hashed."""
        return run_key(self.study or "run", self.identity())

    def seeded_config(self) -> dict[str, Any]:
        """:attr:`config` with :attr:`client_seed` filled in where it names no client seed: what the
        run executes, and what its record keeps (so that it repeats exactly)."""
        client = self.config.get("client")
        if self.client_seed is None or not isinstance(client, dict) or client.get("seed") is not None:
            return self.config
        return {**self.config, "client": {**client, "seed": self.client_seed}}

    def run_config(self) -> RunConfig:
        return RunConfig.model_validate(self.seeded_config())

    def planned(self) -> PlannedRun:
        return PlannedRun(self.name, dict(self.params), dict(self.flags), self.kind, dict(self.extra))


@dataclass
class Outcome:
    """What executing a :class:`RunSpec` gives back to the driver: metrics and artifact bytes, or
    the one-line ``error`` of a run that raised; where and how long it ran."""

    key: str
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    @property
    def ok(self) -> bool:
        return self.error is None


def _check_study(spec: RunSpec, study: Measures | None) -> None:
    if spec.study is not None and study is None:
        raise FedleakError(f"run {spec.name!r} of study {spec.study!r} needs its study to add its numbers: "
                           "pass study=fedleak.studies.base.study_of(spec)")


def execute(spec: RunSpec, loader: Callable[..., ImageDataset] = load_dataset, detail: bool = False,
            study: Measures | None = None) -> Outcome:
    """Run ``spec`` here and return its outcome; an error propagates (see :func:`attempt`). ``study``
    is the spec's study (:func:`fedleak.studies.base.study_of`), required for a study's spec."""
    _check_study(spec, study)
    start = time.perf_counter()
    metrics, artifacts = RUN_KINDS.get(spec.kind)(study, spec, loader, detail)
    metrics.setdefault("dataset", spec.dataset)
    return Outcome(spec.key, metrics, artifacts, round(time.perf_counter() - start, 3))


def describe_error(exc: BaseException) -> str:
    """One line for a run's error: a user-facing error's message, otherwise its type and message."""
    text = str(exc) if isinstance(exc, FedleakError) else f"{type(exc).__name__}: {exc}"
    return one_line(text)


def attempt(spec: RunSpec, loader: Callable[..., ImageDataset] = load_dataset, detail: bool = False,
            study: Measures | None = None) -> Outcome:
    """:func:`execute`, with a run that raises turned into an outcome carrying its one-line error,
    so one bad run never stops a study (Ctrl-C still does)."""
    start = time.perf_counter()
    try:
        return execute(spec, loader, detail, study)
    except Exception as exc:  # noqa: BLE001 - any failure of one run is that run's result
        return Outcome(spec.key, seconds=round(time.perf_counter() - start, 3), error=describe_error(exc))


def attempt_many(specs: Sequence[RunSpec], loader: Callable[..., ImageDataset] = load_dataset,
                 detail: bool = False, studies: Sequence[Measures | None] | None = None) -> list[Outcome]:
    """:func:`attempt` for several specs (``studies``: each one's study, as for :func:`execute`), those
    of a batched kind executed together. When a batch raises, its specs are attempted one by one, so
    each failing run gets its own one-line error and the others their results."""
    of = list(studies) if studies is not None else [None] * len(specs)
    outcomes: dict[int, Outcome] = {}
    together: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        if len(specs) > 1 and spec.kind in BATCHED_KINDS:
            together.setdefault(spec.kind, []).append(i)
        else:
            outcomes[i] = attempt(spec, loader, detail, of[i])
    for kind, members in together.items():
        start = time.perf_counter()
        group = [specs[i] for i in members]
        try:
            for i in members:
                _check_study(specs[i], of[i])
            done = BATCHED_KINDS.get(kind)([of[i] for i in members], group, loader, detail)
        except Exception:  # noqa: BLE001 - find the failing run(s): one at a time
            outcomes.update({i: attempt(specs[i], loader, detail, of[i]) for i in members})
            continue
        seconds = round(time.perf_counter() - start, 3)
        for i, spec, (metrics, artifacts) in zip(members, group, done):
            metrics.setdefault("dataset", spec.dataset)
            outcomes[i] = Outcome(spec.key, metrics, artifacts, seconds)
    return [outcomes[i] for i in range(len(specs))]


# ------------------------------------------------------------------------------- the attack run kind


def content_digest(images: torch.Tensor) -> str:
    """A short SHA-256 of the attacked images' pixels: evidence that a moved dataset is the same data."""
    return hashlib.sha256(images.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def _attack_outcome(study: Measures | None, spec: RunSpec, result: RunResult) -> Artifacts:
    metrics = result.metrics()
    metrics["dataset"] = {**spec.dataset, "content": content_digest(result.truth.images)}
    modality = MODALITIES.get(result.modality)
    metrics["baselines"] = modality.baselines(result.truth, result.dataset)
    if study is not None:
        metrics.update(study.measure(result, spec.planned()))
    return metrics, modality.files(result.truth, result.reconstruction, result.evaluation)


@RUN_KINDS.register("attack")
def attack_kind(study: Measures | None, spec: RunSpec, loader: Callable[..., ImageDataset],
                detail: bool) -> Artifacts:
    """One attack run (:func:`fedleak.pipeline.run`), with the study's own measurements and the images."""
    return _attack_outcome(study, spec, run(spec.run_config(), progress=detail, loader=loader))


@BATCHED_KINDS.register("attack")
def attack_kind_many(studies: list[Measures | None], specs: list[RunSpec], loader: Callable[..., ImageDataset],
                     detail: bool) -> list[Artifacts]:
    """Several attack runs through :func:`fedleak.pipeline.run_many` (one batched optimisation where
    they allow it)."""
    results = run_many([spec.run_config() for spec in specs], progress=detail, loader=loader)
    return [_attack_outcome(study, spec, result) for study, spec, result in zip(studies, specs, results)]
