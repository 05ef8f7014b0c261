"""Any fedleak attack on the gradient a fishing server isolated (Wen et al., ICML 2022).

Under class fishing (:mod:`fedleak.fl.modifications`) the update below the classifier is the gradient
of the target-class images alone; the classifier's own rows still mix every image (the zeroed rows'
weight gradients are (p_k − y_k)·features of all images), so they are left out. The classifier's
target bias says how many target images stand behind the update: ∂L/∂b_target = (1/N) Σ_j (p_j − y_j)
≈ −n/N with p ≈ 0. The inner attack (IG by default) then reconstructs those n images with their
label known — the server chose it — from that isolated update rescaled by N/n (it is the mean over
all N images), as if the client had sent a batch of n. The other observed images are not reconstructed; they come back as the mean colour.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from pydantic import Field, field_validator

from fedleak.attacks.base import (
    Attack,
    AttackConfig,
    AttackerKnowledge,
    Reconstruction,
    build_attack,
    register_attack,
    target_model,
)
from fedleak.attacks.labels import recover_labels
from fedleak.device import payload_device
from fedleak.errors import FedleakError
from fedleak.fl.modifications import Fishing, classifier_of
from fedleak.fl.payload import Payload
from fedleak.fl.server import modification_of

INNER = {"name": "ig", "iterations": 400}  # the inner attack unless the run names another


class FishingAttackConfig(AttackConfig):
    attack: dict[str, Any] = Field(default_factory=lambda: dict(INNER),
                                   description="the attack run on the isolated gradient: name and its settings "
                                   "(settings without a name add to the default, IG with 400 iterations)")

    @field_validator("attack")
    @classmethod
    def _inner(cls, v: dict[str, Any]) -> dict[str, Any]:
        v = {**INNER, **v} if "name" not in v else v
        if v["name"] == "fishing":
            raise ValueError("attack.attack must name another attack, e.g. {name: ig}")
        build_attack(v["name"], {k: x for k, x in v.items() if k != "name"})  # its settings, checked now
        return v


def target_share(payload: Payload, bias_update: float) -> float:
    """How many target-class images the classifier's target bias update stands for, unrounded: the
    FedSGD gradient is −n/N; a FedAvg one-step Δ is lr times that (unless sent as Δ/lr)."""
    h = payload.hyper
    scale = h.lr if h.protocol == "fedavg" and h.update_scale == "delta" and h.lr else 1.0
    return -bias_update / scale * h.observed_images


def isolated_count(payload: Payload, bias_update: float) -> int:
    """:func:`target_share` rounded, at least 1 and at most the observed images."""
    return int(min(max(round(target_share(payload, bias_update)), 1), payload.hyper.observed_images))


def other_labels(payload: Payload, knowledge: AttackerKnowledge, target: int, n: int, rest: int) -> torch.Tensor:
    """Labels for the ``rest`` images not reconstructed: the batch's recovered labels (known, or
    Wainakh et al.'s count) with ``n`` copies of the target class taken out."""
    try:
        every = recover_labels(payload, knowledge, "auto").tolist()
    except FedleakError:  # no class stands out: nothing better than the target class to say
        every = []
    for _ in range(n):
        if target in every:
            every.remove(target)
    every = (every + [target] * rest)[:rest]
    return torch.tensor(every, dtype=torch.long, device=payload_device(payload))


@register_attack("fishing")
class FishingAttack(Attack[FishingAttackConfig]):
    """Wen et al.'s fishing: an inner attack on the gradient of the isolated target class."""


    def run(self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False) -> Reconstruction:
        start = time.perf_counter()
        fishing = modification_of(payload.hyper.server)
        if not isinstance(fishing, Fishing):
            raise FedleakError("the fishing attack needs a fishing server (--server fishing:target=C); "
                               f"this payload's server is {payload.hyper.server!r}")
        target = fishing.config.target
        name, _ = classifier_of(target_model(payload, knowledge), knowledge.num_classes)
        prefix = f"{name}." if name else ""
        head = {prefix + "weight", prefix + "bias"}
        if prefix + "bias" not in payload.update:
            raise FedleakError(f"the update holds no gradient of the classifier's bias ({prefix}bias)")
        bias = float(payload.update[prefix + "bias"][target])
        n, share = isolated_count(payload, bias), target_share(payload, bias)
        notes = [] if share >= 0.5 else [
            f"the fished class {target} has no image in this batch (its bias update stands for {share:.2f} "
            "images): the server isolated nothing, and the one image reconstructed from it is no leak; "
            "choose a batch with an image of that class (e.g. --index) or another --server fishing:target"]
        # The isolated part is the mean over all N observed images of the n target images' gradients,
        # (1/N) Σ_target ∇ℓ_j; a batch of n would send (1/n) Σ_target ∇ℓ_j. Rescaled by N/n, it is what
        # the inner attack's simulation produces — which a squared-L2 matching loss (ROG, DLG) needs.
        scale = payload.hyper.observed_images / n
        isolated = dataclasses.replace(
            payload, update={k: v * scale for k, v in payload.update.items() if k not in head},
            hyper=dataclasses.replace(payload.hyper, batch_size=n, clients=1))
        device = payload_device(payload)
        told = dataclasses.replace(knowledge, labels=torch.full((n,), target, dtype=torch.long, device=device))
        inner = build_attack(self.config.attack["name"], {k: v for k, v in self.config.attack.items() if k != "name"})
        found = inner.run(isolated, told, seed=seed, progress=progress)
        rest = payload.hyper.observed_images - n
        shape = knowledge.input_shape
        mean_colour = knowledge.normalization.to_pixels(torch.zeros(rest, *shape, device=device))
        return Reconstruction(
            images=torch.cat([found.images, mean_colour]),
            labels=torch.cat([found.labels, other_labels(payload, knowledge, target, n, rest)]),
            matching_loss=found.matching_loss, restart_losses=found.restart_losses, iterations=found.iterations,
            seconds=time.perf_counter() - start,
            trace=[*found.trace, {"isolated_images": n, "target_class": target}], notes=[*found.notes, *notes],
        )
