"""One attack run, end to end: client → Payload → attack → reconstruction → evaluation.

Data flows one way. The private :class:`ClientData` goes to the client and, at the end, to
evaluation; the attack receives only the payload and the declared :class:`AttackerKnowledge`.
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedleak.attacks import AttackerKnowledge, Reconstruction, build_attack
from fedleak.config import RunConfig
from fedleak.defenses import parse_defense
from fedleak.data import ImageDataset, load_dataset, pick_indices
from fedleak.fl import Client, ClientData, Payload
from fedleak.metrics import Evaluation, evaluate, lpips_scorers
from fedleak.errors import ConfigError
from fedleak.models import create_model
from fedleak.models.checkpoint import CheckpointInfo, load_weights, read_info
from fedleak.models.external import check_attackable, is_external


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
            "seconds": round(self.seconds, 3),
            "seed": self.config.seed,
            "client_seed": self.config.client.seed,
            "defense": self.payload.hyper.defense,
            "privacy": self.privacy,
            "images": [vars(s) for s in ev.images],
            "hints": self.hints,
        }


@dataclass
class Target:
    """The model a run attacks and the normalisation its clients apply."""

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]


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
    data = d.model_copy(update={"image_size": info.image_size, "channels": info.in_channels})
    return config.model_copy(update={"model": model, "data": data}), info


def build_target(config: RunConfig, dataset: ImageDataset, info: CheckpointInfo | None = None,
                 model: nn.Module | None = None) -> Target:
    """The global model: a given module, or the configured architecture (sized for the dataset's real
    height and width), with checkpoint weights."""
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
    if config.model.checkpoint:
        load_weights(target, config.model.checkpoint, config.model.name)
    if model is not None or is_external(config.model.name) or (config.model.checkpoint and info is None):
        check_attackable(target, dataset.image_shape, dataset.num_classes)
    if info is not None and info.mean:
        return Target(target, tuple(info.mean), tuple(info.std))
    return Target(target, dataset.mean, dataset.std)


def run(config: RunConfig, progress: bool = False, model: nn.Module | None = None,
        loader: Callable[..., ImageDataset] = load_dataset) -> RunResult:
    """Execute one attack run described by ``config``; ``model`` (optional) is the user's own module.
    Many runs on one dataset can pass a caching ``loader`` (same signature as ``load_dataset``)."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    attack = build_attack(config.attack.name, config.attack.settings())
    config, info = resolve_checkpoint(config)
    d = config.data
    dataset = loader(d.name, d.root, split=d.split, image_size=d.image_size, channels=d.channels,
                           **d.options)
    # The client's own seed (its noise, which images it draws), never derived from what the attack
    # gets; recorded in the resolved config so that config.yaml reproduces the run.
    client_seed = config.client.seed if config.client.seed is not None else secrets.randbits(63)
    config = config.model_copy(update={"client": config.client.model_copy(update={"seed": client_seed})})
    # With aggregation the server averages K clients; all K batches are private data at risk.
    clients = parse_defense(config.client.defense).clients
    indices = pick_indices(dataset, config.client.batch_size * clients, d.index, d.classes, seed=client_seed)
    truth = ClientData(dataset.images(indices), dataset.label_of(indices), tuple(indices))

    target = build_target(config, dataset, info, model)
    c = config.client
    client = Client(target.model, target.mean, target.std, c.protocol, config.model.mode, lr=c.lr,
                    local_steps=c.local_steps, local_batch_size=c.local_batch_size,
                    shuffle_seed=c.shuffle_seed, update_scale=c.update_scale, defense=c.defense,
                    defense_seed=client_seed)
    payload = client.update(truth)

    knowledge = AttackerKnowledge(
        architecture=copy.deepcopy(target.model),
        input_shape=dataset.image_shape,
        num_classes=dataset.num_classes,
        mean=target.mean,
        std=target.std,
        labels=truth.labels.clone() if config.knowledge.labels else None,
        bn_stats=client.batch_norm_statistics(truth) if config.knowledge.bn_stats else None,
    )
    reconstruction = attack.run(payload, knowledge, seed=config.seed, progress=progress)
    scorers, hints = lpips_scorers(config.metrics.lpips, config.metrics.lpips_weights)
    evaluation = evaluate(reconstruction, truth, scorers)
    return RunResult(
        config=config,
        attack_settings=attack.config.model_dump(mode="json"),
        dataset=dataset,
        truth=truth,
        payload=payload,
        reconstruction=reconstruction,
        evaluation=evaluation,
        seconds=time.perf_counter() - start,
        privacy=client.privacy(payload.hyper),
        hints=hints,
        target=target,
    )
