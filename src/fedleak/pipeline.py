"""One run, end to end: :func:`run` (and :func:`run_many`) is the one place that wires an attack run:
client → Payload → attack → reconstruction → evaluation. Data flows one way. The private
:class:`ClientData` goes to the client and, at the end, to evaluation; the attack receives only the
payload and the declared :class:`AttackerKnowledge`.

How studies, sweeps and backends carry a run to wherever it executes — the picklable spec, its key,
its outcome — is the run unit above this module (:mod:`fedleak.run_unit`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedleak.attacks import AttackerKnowledge, Reconstruction, build_attack
from fedleak.config import RunConfig
from fedleak.data import ImageDataset, load_dataset, pick_indices
from fedleak.data.normalization import Normalization
from fedleak.defenses import parse_defense
from fedleak.device import device_name, peak_memory, resolve_device
from fedleak.errors import ConfigError
from fedleak.fl import Client, ClientData, Payload, client_training
from fedleak.modalities import Target, modality_of
from fedleak.models.checkpoint import CheckpointInfo, read_info
from fedleak.needs import check_run
from fedleak.serving import apply_server, record_server


@dataclass
class RunResult:
    """A finished run: its resolved config and attack settings, the private truth and the payload the
    server saw, the reconstruction and its evaluation against the truth, and what the report needs
    (privacy accounting, hints, the target model, memory, the attacked checkpoint). ``metrics()`` is
    what ``metrics.json`` and the results database hold."""

    config: RunConfig
    attack_settings: dict[str, Any]
    dataset: Any  # an ImageDataset, or a text dataset (the modality's)
    truth: ClientData
    payload: Payload
    reconstruction: Reconstruction
    evaluation: Any  # the modality's evaluation (metrics.Evaluation for images; modalities.Scored)
    seconds: float
    privacy: dict[str, Any] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)  # e.g. what LPIPS weights to place where
    target: Target | None = None  # the global model and its normalisation (for the auditor's side)
    memory: dict[str, Any] = field(default_factory=dict)  # the attack's peak memory (fedleak.device.peak_memory)
    batch: int = 1  # how many runs' attacks shared one batched optimisation with this one
    checkpoint: dict[str, Any] = field(default_factory=dict)  # the attacked weights (checkpoint_summary)
    threat: dict[str, Any] = field(default_factory=dict)  # the threat model granted and used (needs.check_run)
    modality: str = "image"  # the dataset's modality (fedleak.modalities)

    def resolved_config(self) -> dict[str, Any]:
        """The fully resolved config, attack defaults filled in."""
        tree = self.config.model_dump(mode="json")
        tree["attack"] = {"name": self.config.attack.name, **self.attack_settings}
        return tree

    def metrics(self) -> dict[str, Any]:
        ev, rec = self.evaluation, self.reconstruction
        return {
            **ev.summary(),
            "modality": self.modality,
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
            "hints": self.hints,
            "checkpoint": self.checkpoint or None,
            "threat": self.threat or None,
        }


def resolve_checkpoint(config: RunConfig) -> tuple[RunConfig, CheckpointInfo | None]:
    """With a fedleak checkpoint, its architecture replaces the configured one; an image model's image
    size and channels become the data defaults (a conflicting explicit value is an error), a text
    model's data options (its corpus and tokenizer settings: the same tokenizer) do, the run's own winning."""
    if not config.model.checkpoint:
        return config, None
    info = read_info(config.model.checkpoint, named=config.model.name)  # only the user's own factory
    if info is None:
        return config, None
    d = config.data
    update: dict[str, Any] = checkpoint_data(d, info)
    if info.modality == "image":
        for key, value in (("image_size", info.image_size), ("channels", info.in_channels)):
            if getattr(d, key) not in (None, value):
                raise ConfigError(f"data.{key}={getattr(d, key)} conflicts with the checkpoint's {key} {value}")
        update.update(image_size=info.image_size, channels=info.in_channels)
    else:
        update["options"] = {**info.data_options, **update.get("options", d.options)}
    model = config.model.model_copy(update={"name": info.architecture, "width": info.width,
                                            "options": dict(info.options)})
    return config.model_copy(update={"model": model, "data": d.model_copy(update=update)}), info


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


@dataclass
class Prepared:
    """A run up to the attack: the client has computed its payload; the attacker's side (``attack``,
    ``payload``, ``knowledge``) is ready; the private ``truth`` waits for evaluation."""

    config: RunConfig
    attack: Any
    dataset: Any  # the modality's dataset
    truth: ClientData
    target: Target
    client: Client
    payload: Payload
    knowledge: AttackerKnowledge
    start: float
    checkpoint: dict[str, Any] = field(default_factory=dict)  # what the attacked weights are (checkpoint_summary)
    notes: list[str] = field(default_factory=list)
    threat: dict[str, Any] = field(default_factory=dict)


def prepare(config: RunConfig, model: nn.Module | None = None,
            loader: Callable[..., ImageDataset] = load_dataset) -> Prepared:
    """Everything of :func:`run` before the attack: data, target model, the client's update."""
    start = time.perf_counter()
    device = resolve_device(config.device)  # once; everything below takes its device from the model and data
    config = config.model_copy(update={"device": device_name(device)})  # the resolved device is recorded
    torch.manual_seed(config.seed)
    attack = build_attack(config.attack.name, config.attack.settings())
    threat = check_run(config, attack)  # refused here, before any work, if it needs more than it is granted
    config = config.model_copy(update={"threat": threat["granted"]})
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
    modality = modality_of(dataset)
    target = modality.target(config, dataset, info, model)
    truth = modality.batch(dataset, indices, target, device)
    if target.mean:  # the normalisation the run uses, written out so that config.yaml reproduces it
        written = config.model.model_copy(update={"mean": target.mean, "std": target.std})  # (source: metrics.json)
        config = config.model_copy(update={"model": written})
    target.model.to(device)
    target = apply_server(config, target, dataset, loader)  # a malicious server's modified model, made on the device
    training = client_training({**config.client.model_dump(), "model_mode": config.model.mode})
    encoding = target.encoding or Normalization(target.mean, target.std)
    client = Client(target.model, encoding, training, config.client.defense, client_seed)
    payload = record_server(client.update(truth), config)  # the threat model in the public hyperparameters
    knowledge = modality.knowledge(config, target, dataset, truth, client)
    return Prepared(config, attack, dataset, truth, target, client, payload, knowledge, start,
                    checkpoint_summary(config, info), checkpoint_notes(config, info), threat)


def finish(prepared: Prepared, reconstruction: Reconstruction, memory: dict[str, Any] | None = None,
           batch: int = 1) -> RunResult:
    """Evaluate a prepared run's reconstruction against its private truth."""
    p = prepared
    modality = modality_of(p.dataset)
    evaluation, hints = modality.evaluate(p.config, reconstruction, p.truth, p.dataset)
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
        threat=p.threat,
        modality=modality.name,
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
