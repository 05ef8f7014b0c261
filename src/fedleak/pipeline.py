"""One attack run, end to end: client → Payload → attack → reconstruction → evaluation.

Data flows one way. The private :class:`ClientData` goes to the client and, at the end, to
evaluation; the attack receives only the payload and the declared :class:`AttackerKnowledge`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedleak.attacks import AttackerKnowledge, Reconstruction, build_attack
from fedleak.config import RunConfig
from fedleak.data import ImageDataset, load_dataset, pick_indices
from fedleak.fl import Client, ClientData, Payload
from fedleak.metrics import Evaluation, evaluate
from fedleak.models import create_model


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
            "label_accuracy": ev.label_accuracy,
            "matching_loss": rec.matching_loss,
            "restart_losses": rec.restart_losses,
            "iterations": rec.iterations,
            "attack_seconds": round(rec.seconds, 3),
            "seconds": round(self.seconds, 3),
            "seed": self.config.seed,
            "images": [vars(s) for s in ev.images],
        }


def build_target(config: RunConfig, dataset: ImageDataset) -> nn.Module:
    c, h, _ = dataset.image_shape
    seed = config.model.seed if config.model.seed is not None else config.seed
    return create_model(config.model.name, dataset.num_classes, c, h, width=config.model.width,
                        seed=seed, **config.model.options)


def run(config: RunConfig, progress: bool = False) -> RunResult:
    """Execute one attack run described by ``config``."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    attack = build_attack(config.attack.name, config.attack.settings())
    d = config.data
    dataset = load_dataset(d.name, d.root, split=d.split, image_size=d.image_size, channels=d.channels,
                           **d.options)
    indices = pick_indices(dataset, config.client.batch_size, d.index, d.classes, seed=config.seed)
    truth = ClientData(dataset.images(indices), dataset.label_of(indices), tuple(indices))

    model = build_target(config, dataset)
    c = config.client
    client = Client(model, dataset.mean, dataset.std, c.protocol, config.model.mode, lr=c.lr,
                    local_steps=c.local_steps, local_batch_size=c.local_batch_size,
                    shuffle_seed=c.shuffle_seed, update_scale=c.update_scale)
    payload = client.update(truth)

    knowledge = AttackerKnowledge(
        architecture=copy.deepcopy(model),
        input_shape=dataset.image_shape,
        num_classes=dataset.num_classes,
        mean=dataset.mean,
        std=dataset.std,
        labels=truth.labels.clone() if config.knowledge.labels else None,
        bn_stats=client.batch_norm_statistics(truth) if config.knowledge.bn_stats else None,
    )
    reconstruction = attack.run(payload, knowledge, seed=config.seed, progress=progress)
    evaluation = evaluate(reconstruction, truth)
    return RunResult(
        config=config,
        attack_settings=attack.config.model_dump(mode="json"),
        dataset=dataset,
        truth=truth,
        payload=payload,
        reconstruction=reconstruction,
        evaluation=evaluation,
        seconds=time.perf_counter() - start,
    )
