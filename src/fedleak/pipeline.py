"""One run, end to end, and the run unit that carries it to wherever it executes.

:func:`run` is the one place that wires an attack run: client → Payload → attack → reconstruction →
evaluation. Data flows one way. The private :class:`ClientData` goes to the client and, at the end,
to evaluation; the attack receives only the payload and the declared :class:`AttackerKnowledge`.

The *run unit* is how studies, sweeps and backends execute runs. A :class:`RunSpec` is plain,
picklable data — the run's config, its study's name and settings, its grid coordinates and the
extras of its kind — naming the dataset by identity (name, split, size, channels, options), not by
where it lies: its :attr:`~RunSpec.key` leaves ``data.root`` out, so moving the data does not make a
study redo its runs. :func:`execute` turns a spec into an :class:`Outcome` — metrics and the
artifacts as bytes keyed by their file names — on whichever machine it runs; only the driver writes
the results database and files. Every run kind (``attack``, ``fl-train``, …) is one entry of
:data:`RUN_KINDS`, so the local runner and Ray tasks share one code path.
"""

from __future__ import annotations

import copy
import hashlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedleak.attacks import AttackerKnowledge, Reconstruction, build_attack
from fedleak.config import RunConfig
from fedleak.defenses import parse_defense
from fedleak.device import device_name, peak_memory, resolve_device
from fedleak.data import ImageDataset, load_dataset, pick_indices
from fedleak.fl import Client, ClientData, Payload
from fedleak.fl.server import apply_server, record_server
from fedleak.metrics import Evaluation, evaluate, lpips_scorers
from fedleak.metrics.baselines import no_leak_baselines
from fedleak.errors import ConfigError, FedleakError
from fedleak.models import create_model
from fedleak.models.checkpoint import CheckpointInfo, load_into, read_info
from fedleak.models.normalization import Evidence, resolve_normalization
from fedleak.models.external import check_attackable, is_external
from fedleak.registry import Registry
from fedleak.store import run_key

if TYPE_CHECKING:
    from fedleak.studies.base import PlannedRun, Study


@dataclass
class RunResult:
    config: RunConfig
    attack_settings: dict[str, Any]
    dataset: ImageDataset
    truth: ClientData
    payload: Payload
    reconstruction: Reconstruction
    evaluation: Evaluation
    seconds: float
    privacy: dict[str, Any] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)  # e.g. what LPIPS weights to place where
    target: Target | None = None  # the global model and its normalisation (for the auditor's side)
    memory: dict[str, Any] = field(default_factory=dict)  # the attack's peak memory (fedleak.device.peak_memory)
    batch: int = 1  # how many runs' attacks shared one batched optimisation with this one
    checkpoint: dict[str, Any] = field(default_factory=dict)  # the attacked weights (checkpoint_summary)

    def resolved_config(self) -> dict[str, Any]:
        """The fully resolved config, attack defaults filled in."""
        tree = self.config.model_dump(mode="json")
        tree["attack"] = {"name": self.config.attack.name, **self.attack_settings}
        return tree

    def metrics(self) -> dict[str, Any]:
        ev, rec = self.evaluation, self.reconstruction
        return {
            "psnr": ev.psnr,
            "ssim": ev.ssim,
            "lpips": ev.lpips,
            **{f"lpips_{net}": v for net, v in ev.lpips.items()},
            "label_accuracy": ev.label_accuracy,
            "matching_loss": rec.matching_loss,
            "restart_losses": rec.restart_losses,
            "iterations": rec.iterations,
            "attack_seconds": round(rec.seconds, 3),
            "attack_batch": self.batch,
            "peak_memory": self.memory,
            "seconds": round(self.seconds, 3),
            "seed": self.config.seed,
            "device": self.config.device,
            "client_seed": self.config.client.seed,
            "defense": self.payload.hyper.defense,
            "privacy": self.privacy,
            "normalization": self.target.normalization() if self.target is not None else None,
            "images": [vars(s) for s in ev.images],
            "hints": self.hints,
            "checkpoint": self.checkpoint or None,
        }


@dataclass
class Target:
    """The model a run attacks and the normalisation its clients apply (``source``: where that came
    from, see :mod:`fedleak.models.normalization`)."""

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = "dataset"

    def normalization(self) -> dict[str, Any]:
        """``{mean, std, source}`` as recorded in ``metrics.json``."""
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}


def resolve_checkpoint(config: RunConfig) -> tuple[RunConfig, CheckpointInfo | None]:
    """With a fedleak checkpoint, its architecture replaces the configured one, and its image size
    and channels become the data defaults (a conflicting explicit value is an error)."""
    if not config.model.checkpoint:
        return config, None
    info = read_info(config.model.checkpoint, named=config.model.name)  # only the user's own factory
    if info is None:
        return config, None
    d = config.data
    for key, value in (("image_size", info.image_size), ("channels", info.in_channels)):
        if getattr(d, key) not in (None, value):
            raise ConfigError(f"data.{key}={getattr(d, key)} conflicts with the checkpoint's {key} {value}")
    model = config.model.model_copy(update={"name": info.architecture, "width": info.width,
                                            "options": dict(info.options)})
    data = d.model_copy(update={"image_size": info.image_size, "channels": info.in_channels,
                                **checkpoint_data(d, info)})
    return config.model_copy(update={"model": model, "data": data}), info


def checkpoint_data(d: Any, info: CheckpointInfo) -> dict[str, Any]:
    """The data settings a checkpoint's own dataset implies where the run names none: a model trained
    on CIFAR-10 is attacked on CIFAR-10, not on the default photographs. A dataset the user names
    wins (:func:`checkpoint_notes` says so)."""
    if "name" in d.model_fields_set or not info.dataset:
        return {}
    name, _, detail = info.dataset.partition(":")
    if name == "samples":
        return {"name": name, "options": {"subset": detail or "photos", **d.options}}  # a subset named wins
    if name == "folder" and d.root is None:
        raise ConfigError(f"the checkpoint was trained on the image folder {detail!r}: name it with "
                          "--dataset folder --root PATH")
    return {"name": name}


def checkpoint_summary(config: RunConfig, info: CheckpointInfo | None) -> dict[str, Any]:
    """The attacked weights as the run report and ``metrics.json`` show them: the file, whether the
    model is trained (a fedleak checkpoint: on what, how long, its test accuracy) or a foreign state dict."""
    if not config.model.checkpoint:
        return {}
    if info is None:
        return {"path": config.model.checkpoint, "trained": "weights of unknown training (not a fedleak checkpoint)"}
    return {"path": config.model.checkpoint, "architecture": info.architecture, "dataset": info.dataset,
            "epochs": info.epochs, "test_accuracy": info.test_accuracy}


def checkpoint_notes(config: RunConfig, info: CheckpointInfo | None) -> list[str]:
    """What a run on a checkpoint should say: that the dataset is not the checkpoint's own."""
    if info is None or not info.dataset:
        return []
    d = config.data
    own = d.name if d.name != "samples" else ("samples" if d.options.get("subset", "photos") == "photos"
                                             else f"samples:{d.options['subset']}")
    if own == info.dataset or (d.name == "folder" and info.dataset.startswith("folder:")):
        return []
    return [f"the checkpoint was trained on {info.dataset}; this run attacks {own}, as you asked"]


def load_data(config: RunConfig, loader: Callable[..., ImageDataset] = load_dataset,
              split: str | None = None) -> ImageDataset:
    """The run's dataset (its ``split``, or another one such as training data) through ``loader``."""
    d = config.data
    return loader(d.name, d.root, split=split or d.split, image_size=d.image_size, channels=d.channels,
                  **d.options)


def build_target(config: RunConfig, dataset: ImageDataset, info: CheckpointInfo | None = None,
                 model: nn.Module | None = None) -> Target:
    """The global model: a given module, or the configured architecture (sized for the dataset's real
    height and width), with checkpoint weights; and its normalisation, from the first source that has
    one: the fedleak checkpoint's > ``model.mean``/``model.std`` > a bring-your-own module's declared
    values > the model card's when a torchvision/timm state dict was loaded > the dataset's
    (:func:`fedleak.models.normalization.resolve_normalization`)."""
    c, h, w = dataset.image_shape
    if info is not None and info.num_classes != dataset.num_classes:
        raise ConfigError(
            f"the checkpoint's model has {info.num_classes} classes, dataset {dataset.name} has {dataset.num_classes}"
        )
    if model is not None:
        target = copy.deepcopy(model)
    else:
        seed = config.model.seed if config.model.seed is not None else config.seed
        target = create_model(config.model.name, dataset.num_classes, c, (h, w), width=config.model.width,
                              seed=seed, **config.model.options)
    layout = load_into(target, config.model.checkpoint, config.model.name) if config.model.checkpoint else ""
    own = model is not None or is_external(config.model.name)  # a bring-your-own module
    if own or (config.model.checkpoint and info is None):
        check_attackable(target, dataset.image_shape, dataset.num_classes)
    m = config.model
    norm = resolve_normalization(Evidence(
        channels=c, dataset=(dataset.mean, dataset.std),
        checkpoint=(info.mean, info.std) if info is not None else None,
        configured=(m.mean, m.std) if m.mean is not None and m.std is not None else None,
        module=target if own else None, card_name=m.name if layout and not own else None))
    return Target(target, norm.mean, norm.std, norm.source)


@dataclass
class Prepared:
    """A run up to the attack: the client has computed its payload; the attacker's side (``attack``,
    ``payload``, ``knowledge``) is ready; the private ``truth`` waits for evaluation."""

    config: RunConfig
    attack: Any
    dataset: ImageDataset
    truth: ClientData
    target: Target
    client: Client
    payload: Payload
    knowledge: AttackerKnowledge
    start: float
    checkpoint: dict[str, Any] = field(default_factory=dict)  # what the attacked weights are (checkpoint_summary)
    notes: list[str] = field(default_factory=list)


def prepare(config: RunConfig, model: nn.Module | None = None,
            loader: Callable[..., ImageDataset] = load_dataset) -> Prepared:
    """Everything of :func:`run` before the attack: data, target model, the client's update."""
    start = time.perf_counter()
    device = resolve_device(config.device)  # once; everything below takes its device from the model and data
    config = config.model_copy(update={"device": device_name(device)})  # the resolved device is recorded
    torch.manual_seed(config.seed)
    attack = build_attack(config.attack.name, config.attack.settings())
    config, info = resolve_checkpoint(config)
    d = config.data
    dataset = load_data(config, loader)
    # The client's own seed (its noise, which images it draws), never derived from what the attack
    # gets; recorded in the resolved config so that config.yaml reproduces the run.
    client_seed = config.client.seed if config.client.seed is not None else secrets.randbits(63)
    config = config.model_copy(update={"client": config.client.model_copy(update={"seed": client_seed})})
    # With aggregation the server averages K clients; all K batches are private data at risk.
    clients = parse_defense(config.client.defense).clients
    indices = pick_indices(dataset, config.client.batch_size * clients, d.index, d.classes, seed=client_seed)
    truth = ClientData(dataset.images(indices).to(device), dataset.label_of(indices).to(device), tuple(indices))

    target = build_target(config, dataset, info, model)
    # the normalisation the run uses, written out so that config.yaml reproduces it (its source: metrics.json)
    written = config.model.model_copy(update={"mean": target.mean, "std": target.std})
    config = config.model_copy(update={"model": written})
    target.model.to(device)
    target = apply_server(config, target, dataset, loader)  # a malicious server's modified model, made on the device
    c = config.client
    client = Client(target.model, target.mean, target.std, c.protocol, config.model.mode, lr=c.lr,
                    local_steps=c.local_steps, local_batch_size=c.local_batch_size,
                    shuffle_seed=c.shuffle_seed, update_scale=c.update_scale, defense=c.defense,
                    defense_seed=client_seed, momentum=c.momentum, weight_decay=c.weight_decay, epochs=c.epochs)
    payload = record_server(client.update(truth), config)  # the threat model in the public hyperparameters

    knowledge = AttackerKnowledge(
        architecture=copy.deepcopy(target.model),
        input_shape=dataset.image_shape,
        num_classes=dataset.num_classes,
        mean=target.mean,
        std=target.std,
        labels=truth.labels.clone() if config.knowledge.labels else None,
        bn_stats=client.batch_norm_statistics(truth) if config.knowledge.bn_stats else None,
    )
    return Prepared(config, attack, dataset, truth, target, client, payload, knowledge, start,
                    checkpoint_summary(config, info), checkpoint_notes(config, info))


def finish(prepared: Prepared, reconstruction: Reconstruction, memory: dict[str, Any] | None = None,
           batch: int = 1) -> RunResult:
    """Evaluate a prepared run's reconstruction against its private truth."""
    p = prepared
    scorers, hints = lpips_scorers(p.config.metrics.lpips, p.config.metrics.lpips_weights)
    evaluation = evaluate(reconstruction, p.truth, scorers)
    return RunResult(
        config=p.config,
        attack_settings=p.attack.config.model_dump(mode="json"),
        dataset=p.dataset,
        truth=p.truth,
        payload=p.payload,
        reconstruction=reconstruction,
        evaluation=evaluation,
        seconds=time.perf_counter() - p.start,
        privacy=p.client.privacy(p.payload.hyper),
        hints=[*p.notes, *reconstruction.notes, *hints],
        target=p.target,
        checkpoint=p.checkpoint,
        memory=memory or {},
        batch=batch,
    )


def run(config: RunConfig, progress: bool = False, model: nn.Module | None = None,
        loader: Callable[..., ImageDataset] = load_dataset) -> RunResult:
    """Execute one attack run described by ``config``; ``model`` (optional) is the user's own module.
    Many runs on one dataset can pass a caching ``loader`` (same signature as ``load_dataset``)."""
    return run_many([config], progress, model, loader)[0]


def batch_key(prepared: Prepared) -> str:
    """Runs whose attacks can share one batched optimisation: the same attack with the same settings
    and seed-independent config on the same device (the attack then checks the model state and
    public hyperparameters itself, see :func:`fedleak.attacks.engine.groups`)."""
    return repr((prepared.config.attack.name, prepared.attack.config.model_dump(mode="json"),
                 prepared.config.device))


def run_many(configs: Sequence[RunConfig], progress: bool = False, model: nn.Module | None = None,
             loader: Callable[..., ImageDataset] = load_dataset) -> list[RunResult]:
    """Execute several attack runs, attacking together those that can share one batched optimisation
    (:meth:`~fedleak.attacks.base.Attack.run_many`: e.g. many clients of one round, or the cells of
    a study with one model and attack setting). Each result is the run's own, as :func:`run` would
    give it (up to float rounding); its ``attack_seconds`` and peak memory are the shared batch's."""
    prepared = [prepare(c, model, loader) for c in configs]
    batches: dict[str, list[int]] = {}
    for i, p in enumerate(prepared):
        batches.setdefault(batch_key(p), []).append(i)
    results: dict[int, RunResult] = {}
    for members in batches.values():
        ps = [prepared[i] for i in members]
        device = resolve_device(ps[0].config.device)
        with peak_memory(device) as memory:
            recs = ps[0].attack.run_many([p.payload for p in ps], [p.knowledge for p in ps],
                                         [p.config.seed for p in ps], progress)
        results.update({i: finish(p, r, memory, len(ps)) for i, p, r in zip(members, ps, recs)})
    return [results[i] for i in range(len(prepared))]


# ---------------------------------------------------------------------------------------- the run unit

RunKind = Callable[["Study | None", "RunSpec", Callable[..., ImageDataset], bool],
                   tuple[dict[str, Any], dict[str, bytes]]]
RUN_KINDS: Registry[RunKind] = Registry("run kind")
"""``kind(study, spec, loader, detail) → (metrics, artifacts)``: one run of that kind; ``artifacts``
maps file names (relative to the run's folder) to their bytes."""


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
        """What makes the run this run: its kind, its config without ``data.root`` and ``device``,
        its extras."""
        config = copy.deepcopy(self.config)
        if isinstance(config.get("data"), dict):
            config["data"]["root"] = None  # where the data lies is no part of the run
        config.pop("device", None)  # nor where it runs: a study started on a CPU resumes on a GPU
        model = config.get("model")
        if isinstance(model, dict):  # an unset normalisation (the default) leaves keys as they were before it existed
            for key in ("mean", "std"):
                if model.get(key) is None:
                    model.pop(key, None)
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
        from fedleak.studies.base import PlannedRun

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


def study_of(spec: RunSpec) -> Study | None:
    """The spec's study, rebuilt from its name and settings (``None`` for a bare run)."""
    if spec.study is None:
        return None
    from fedleak.studies import STUDIES

    cls = STUDIES.get(spec.study)
    return cls(cls.Settings.model_validate(spec.settings))


def execute(spec: RunSpec, loader: Callable[..., ImageDataset] = load_dataset, detail: bool = False) -> Outcome:
    """Run ``spec`` here and return its outcome; an error propagates (see :func:`attempt`)."""
    start = time.perf_counter()
    metrics, artifacts = RUN_KINDS.get(spec.kind)(study_of(spec), spec, loader, detail)
    metrics.setdefault("dataset", spec.dataset)
    return Outcome(spec.key, metrics, artifacts, round(time.perf_counter() - start, 3))


def describe_error(exc: BaseException) -> str:
    """One line for a run's error: a user-facing error's message, otherwise its type and message."""
    from fedleak.exits import one_line

    text = str(exc) if isinstance(exc, FedleakError) else f"{type(exc).__name__}: {exc}"
    return one_line(text)


def attempt(spec: RunSpec, loader: Callable[..., ImageDataset] = load_dataset, detail: bool = False) -> Outcome:
    """:func:`execute`, with a run that raises turned into an outcome carrying its one-line error,
    so one bad run never stops a study (Ctrl-C still does)."""
    start = time.perf_counter()
    try:
        return execute(spec, loader, detail)
    except Exception as exc:  # noqa: BLE001 - any failure of one run is that run's result
        return Outcome(spec.key, seconds=round(time.perf_counter() - start, 3), error=describe_error(exc))


def image_files(result: RunResult) -> dict[str, bytes]:
    """Each original and its matched reconstruction as PNG bytes: ``original-<i>.png``, …"""
    from fedleak.report.grid import image_grid, png_bytes

    matched = result.reconstruction.images[result.evaluation.order]
    return {f"{kind}-{i}.png": png_bytes(image_grid([image[None]], pad=0))
            for i in range(len(matched))
            for kind, image in (("original", result.truth.images[i]), ("reconstruction", matched[i]))}


def content_digest(images: torch.Tensor) -> str:
    """A short SHA-256 of the attacked images' pixels: evidence that a moved dataset is the same data."""
    return hashlib.sha256(images.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def _attack_outcome(study: Study | None, spec: RunSpec, result: RunResult) -> tuple[dict[str, Any], dict[str, bytes]]:
    metrics = result.metrics()
    metrics["dataset"] = {**spec.dataset, "content": content_digest(result.truth.images)}
    metrics["baselines"] = no_leak_baselines(result.truth.images, result.dataset, result.truth.indices)
    if study is not None:
        metrics.update(study.measure(result, spec.planned()))
    return metrics, image_files(result)


@RUN_KINDS.register("attack")
def attack_kind(study: Study | None, spec: RunSpec, loader: Callable[..., ImageDataset],
                detail: bool) -> tuple[dict[str, Any], dict[str, bytes]]:
    """One attack run (:func:`run`), with the study's own measurements and the images."""
    return _attack_outcome(study, spec, run(spec.run_config(), progress=detail, loader=loader))


BatchedKind = Callable[[list["Study | None"], list[RunSpec], Callable[..., ImageDataset], bool],
                       list[tuple[dict[str, Any], dict[str, bytes]]]]
BATCHED_KINDS: Registry[BatchedKind] = Registry("batched run kind")
"""Run kinds that execute many specs together better than one by one (the attacks' batched
optimisation); a kind not listed here runs its specs one after another."""


@BATCHED_KINDS.register("attack")
def attack_kind_many(studies: list[Study | None], specs: list[RunSpec], loader: Callable[..., ImageDataset],
                     detail: bool) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    """Several attack runs through :func:`run_many` (one batched optimisation where they allow it)."""
    results = run_many([spec.run_config() for spec in specs], progress=detail, loader=loader)
    return [_attack_outcome(study, spec, result) for study, spec, result in zip(studies, specs, results)]


def attempt_many(specs: Sequence[RunSpec], loader: Callable[..., ImageDataset] = load_dataset,
                 detail: bool = False) -> list[Outcome]:
    """:func:`attempt` for several specs, those of a batched kind executed together. When a batch
    raises, its specs are attempted one by one, so each failing run gets its own one-line error and
    the others their results."""
    outcomes: dict[int, Outcome] = {}
    together: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        if len(specs) > 1 and spec.kind in BATCHED_KINDS:
            together.setdefault(spec.kind, []).append(i)
        else:
            outcomes[i] = attempt(spec, loader, detail)
    for kind, members in together.items():
        start = time.perf_counter()
        group = [specs[i] for i in members]
        try:
            done = BATCHED_KINDS.get(kind)([study_of(s) for s in group], group, loader, detail)
        except Exception:  # noqa: BLE001 - find the failing run(s): one at a time
            outcomes.update({i: attempt(specs[i], loader, detail) for i in members})
            continue
        seconds = round(time.perf_counter() - start, 3)
        for i, spec, (metrics, artifacts) in zip(members, group, done):
            metrics.setdefault("dataset", spec.dataset)
            outcomes[i] = Outcome(spec.key, metrics, artifacts, seconds)
    return [outcomes[i] for i in range(len(specs))]


@RUN_KINDS.register("fl-train")
def fl_train_kind(study: Study | None, spec: RunSpec, loader: Callable[..., ImageDataset],
                  detail: bool) -> tuple[dict[str, Any], dict[str, bytes]]:
    """FedAvg training of the configured model with the run's defense (``extra``: train_images,
    test_images, fl_clients, rounds, local_epochs, fl_lr, fl_batch_size); returns its test accuracy."""
    from fedleak.fl.federated import FederatedSettings, federated_train

    config, info = resolve_checkpoint(spec.run_config())
    x = spec.extra
    train, test = load_data(config, loader, "train"), load_data(config, loader, "test")
    torch.manual_seed(config.seed)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    train_idx = sorted(pick[: x["train_images"]])
    test_idx = list(range(min(x["test_images"], len(test))))
    target = build_target(config, train, info)
    device = resolve_device(config.device)
    target.model.to(device)  # federated_train follows the model's device
    settings = FederatedSettings(clients=x["fl_clients"], rounds=x["rounds"], local_epochs=x["local_epochs"],
                                 lr=x["fl_lr"], batch_size=x["fl_batch_size"], defense=config.client.defense,
                                 seed=config.seed)
    history = federated_train(target.model, train.images(train_idx), train.label_of(train_idx),
                              test.images(test_idx), test.label_of(test_idx), target.mean, target.std, settings,
                              progress=detail)
    return {"test_accuracy": history.final_accuracy, "accuracy_per_round": history.test_accuracy,
            "fl_seconds": round(history.seconds, 3), "defense": config.client.defense,
            "device": device_name(device), "client_seed": config.client.seed}, {}
