"""Audits of updates a real server observed: the payload side, without ground truth.

A live federation (see :mod:`fedleak.integrations.flower`) gives the auditor what the server sees —
the global model it sent, each client's returned arrays and the train config — but not the client's
data. :func:`audit_update` runs an attack on such a :class:`~fedleak.fl.Payload` and keeps what is
observable: the reconstruction, its matching loss, the recovered labels, timings and the assumptions
the payload was built on, plus two observable measures of how much the update gave away:

- **update fit** — the cosine similarity between the update the reconstruction (with its recovered
  labels) would produce under the public training settings and the update the server observed. 1
  means the reconstructed batch explains the observed update completely;
- **label signal** — the share of the negative row sums of the classifier's weight update that falls
  on the recovered classes (1 when the update points at exactly those classes, lower when its label
  evidence is spread over others).

**Risk** is their product (update fit clipped at 0): how completely a batch the attacker can build
explains what the client sent. It is evidence, not proof — a high fit can come from an image that
only matches the update, and it says nothing about what a stronger attack could do — and is shown
beside the reconstructions so a reader can judge. Only where the auditor has ground truth (a
simulation that shares each client's batch for scoring) is an :class:`~fedleak.metrics.Evaluation`
attached, with the no-leak baselines beside it; that truth reaches the scoring only, after the attack
has returned.

Where the records go: :class:`fedleak.integrations.flower.log.AuditLog` writes them to a results
folder, a study of kind ``flower-audit`` (:class:`fedleak.studies.flower_audit.AuditStudy`) whose
grid — one cell per audited (round, client) — grows as the federation runs, so ``fedleak runs
list|show|export`` and ``fedleak report`` work on it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor

from fedleak.attacks.base import Attack, AttackerKnowledge, Reconstruction, build_attack
from fedleak.attacks.labels import last_layer_weight_grad
from fedleak.attacks.simulation import Simulation
from fedleak.config import AttackSection, KnowledgeSection, describe_validation_error, read_yaml
from fedleak.device import device_name
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.client import normalize
from fedleak.fl.payload import ClientData, Payload, PublicHyperparameters
from fedleak.images import image_grid, png_bytes
from fedleak.metrics.baselines import scores as baseline_scores
from fedleak.metrics.evaluate import Evaluation, evaluate
from fedleak.metrics.lpips import LPIPS

PREVIEW_IMAGES = 16  # images of a batch kept as a preview in the database (for the report's figure)
DEFAULT_ATTACK = {"name": "ig", "iterations": 300}  # a CPU-sized default: seconds per update on a small model
Truth = Callable[[], ClientData | None]


# --- the attack's side: observables -------------------------------------------------------------------------


def update_fit(payload: Payload, knowledge: AttackerKnowledge, images: Tensor, labels: Tensor) -> float:
    """Cosine similarity, over every parameter, between the update ``images`` (in [0, 1]) with
    ``labels`` would produce under the payload's public settings and the observed update."""
    simulation = Simulation(payload, knowledge)
    with torch.enable_grad():
        simulated = simulation.update(normalize(images, knowledge.mean, knowledge.std), labels)
    names = list(payload.update)
    a = torch.cat([simulated[n].detach().flatten() for n in names]).double()
    b = torch.cat([payload.update[n].flatten() for n in names]).double()
    denominator = float(a.norm() * b.norm())
    return float(a @ b) / denominator if denominator > 0 else 0.0


def label_signal(payload: Payload, num_classes: int, labels: Tensor) -> float | None:
    """Share of the negative row sums of the classifier's weight update on the classes in
    ``labels`` (``None`` when the model has no final layer with one row per class). Both a gradient
    and a FedAvg update θ₀ − θ_τ point into the classes the batch holds."""
    try:
        rows = last_layer_weight_grad(payload, num_classes).sum(dim=1).double()
    except FedleakError:
        return None
    negative = (-rows).clamp_min(0)
    total = float(negative.sum())
    if total == 0:
        return 0.0
    present = labels.long().unique().clamp(0, num_classes - 1)
    return float(negative[present].sum()) / total


@dataclass
class AuditRecord:
    """One audited update: the payload side (always) and an evaluation (only with ground truth).

    ``client`` names who sent the update (a Flower node id, or ``aggregate`` when the server saw
    only the mean of ``hyper.clients`` updates). ``assumptions`` lists every training setting the
    attacker did not observe and what it assumed instead."""

    round: int
    client: str
    hyper: PublicHyperparameters
    reconstruction: Reconstruction
    update_fit: float
    label_signal: float | None
    seconds: float
    assumptions: list[str] = field(default_factory=list)
    view: str = "clients"
    evaluation: Evaluation | None = None
    baseline: dict[str, float] | None = None  # the mean-colour guess scored against the truth
    truth_images: Tensor | None = None  # kept for the report's image grid only

    @property
    def images(self) -> Tensor:
        """The reconstructed images, each paired with its original (Hungarian matching) where there is
        ground truth, so that the two line up in the report."""
        images = self.reconstruction.images
        return images[self.evaluation.order] if self.evaluation is not None else images

    def labels_shown(self) -> list[int]:
        """The recovered labels in the order of :attr:`images`."""
        labels = self.reconstruction.labels.flatten()
        if self.evaluation is not None and labels.numel() == len(self.evaluation.order):
            labels = labels[self.evaluation.order]
        return [int(v) for v in labels.tolist()]

    @property
    def risk(self) -> float:
        """Update fit (at least 0) × label signal (1 when the model has no class layer to read)."""
        signal = 1.0 if self.label_signal is None else self.label_signal
        return max(0.0, self.update_fit) * signal

    def metrics(self) -> dict[str, Any]:
        rec = self.reconstruction
        labels = [int(v) for v in rec.labels.flatten().tolist()]
        out: dict[str, Any] = {
            "round": self.round, "client": self.client, "view": self.view, "clients": self.hyper.clients,
            "observed_images": self.hyper.observed_images, "risk": self.risk, "update_fit": self.update_fit,
            "label_signal": self.label_signal, "matching_loss": rec.matching_loss,
            "restart_losses": rec.restart_losses, "iterations": rec.iterations,
            "recovered_labels": labels, "labels": ", ".join(map(str, labels)),
            "attack_seconds": round(rec.seconds, 3), "seconds": round(self.seconds, 3),
            "device": device_name(rec.images.device),  # where the attack ran
            "hyper": asdict(self.hyper), "assumptions": list(self.assumptions),
            "hints": [f"Assumed (not sent by the server): {a}" for a in self.assumptions],
            "preview": {"reconstruction": _preview(self.images), "labels": self.labels_shown()[:PREVIEW_IMAGES],
                        "original": _preview(self.truth_images) if self.truth_images is not None else None},
        }
        if self.evaluation is not None:
            ev = self.evaluation
            out |= {"psnr": ev.psnr, "ssim": ev.ssim, "label_accuracy": ev.label_accuracy, "lpips": ev.lpips,
                    **{f"lpips_{net}": v for net, v in ev.lpips.items()},
                    "images": [asdict(s) for s in ev.images]}
            if self.baseline is not None:
                out |= {"psnr_mean_colour": self.baseline["psnr"], "ssim_mean_colour": self.baseline["ssim"],
                        "psnr_gain": ev.psnr - self.baseline["psnr"]}
        return out


def audit_update(payload: Payload, knowledge: AttackerKnowledge, attack: Attack, *, round: int, client: str,
                 seed: int = 0, assumptions: list[str] | None = None, view: str = "clients",
                 truth: Truth | ClientData | None = None,
                 lpips: Mapping[str, LPIPS | None] | None = None) -> AuditRecord:
    """Attack one observed update and measure what is observable; score against the truth only if
    ``truth`` gives some — a callable asked after the attack has returned, so nothing it holds can
    reach the attack."""
    if knowledge.labels is not None or knowledge.bn_stats is not None:
        raise FedleakError("an audit attacks what the server sees: the attacker cannot know the client's "
                           "labels or batch-norm statistics")
    start = time.perf_counter()
    reconstruction = attack.run(payload, knowledge, seed=seed)
    fit = update_fit(payload, knowledge, reconstruction.images, reconstruction.labels)
    signal = label_signal(payload, knowledge.num_classes, reconstruction.labels)
    data = truth() if callable(truth) else truth
    evaluation = baseline = None
    if data is not None:
        if tuple(data.images.shape) != tuple(reconstruction.images.shape):
            raise FedleakError(f"the batch shared for scoring is {tuple(data.images.shape)}, the update stands "
                               f"for {tuple(reconstruction.images.shape)}")
        evaluation = evaluate(reconstruction, data, dict(lpips or {}))
        baseline = baseline_scores(data.images.mean((2, 3), keepdim=True), data.images)
    return AuditRecord(round=round, client=client, hyper=payload.hyper, reconstruction=reconstruction,
                       update_fit=fit, label_signal=signal, seconds=time.perf_counter() - start,
                       assumptions=list(assumptions or []), view=view, evaluation=evaluation, baseline=baseline,
                       truth_images=None if data is None else data.images.detach().clone())


# --- the attack configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditAttack:
    """The attack an audit runs, from the ``attack`` and ``knowledge`` sections of a run config."""

    name: str
    settings: dict[str, Any]
    knowledge: dict[str, Any]

    def build(self, **overrides: Any) -> Attack:
        return build_attack(self.name, {**self.settings, **overrides})

    def resolved(self) -> dict[str, Any]:
        """The attack section with every default filled in (as ``config.yaml`` shows it)."""
        return {"name": self.name, **self.build().config.model_dump(mode="json")}


def audit_attack(spec: str | Path | Mapping[str, Any] | None) -> AuditAttack:
    """The audit's attack from ``spec``: a YAML file or a mapping with ``attack`` (and optionally
    ``knowledge``) sections as ``fedleak attack`` reads them, a bare attack section (``{"name": "ig",
    "iterations": 300}``, the default), or an attack or preset name. Validated now, so a bad setting
    fails before the federation starts. The knowledge section may declare nothing the server cannot see."""
    if spec is None:
        tree: dict[str, Any] = {"attack": dict(DEFAULT_ATTACK)}
    elif isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        tree = read_yaml(spec)
        unknown = sorted(set(tree) - {"attack", "knowledge"})
        if unknown:
            raise ConfigError(f"audit config {spec}: only attack and knowledge sections apply (found {unknown[0]!r})")
    elif isinstance(spec, str):
        tree = {"attack": {"name": spec}}
    elif "attack" in spec or "knowledge" in spec:
        tree = dict(spec)
    else:
        tree = {"attack": dict(spec)}
    try:
        section = AttackSection.model_validate(tree.get("attack") or {})
        knowledge = KnowledgeSection.model_validate(tree.get("knowledge") or {})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix="audit.")) from None
    if knowledge.labels or knowledge.bn_stats:
        raise ConfigError("an audit attacks what the server sees: knowledge.labels and knowledge.bn_stats must be "
                          "false (the server knows neither)")
    chosen = AuditAttack(section.name, section.settings(), knowledge.model_dump())
    chosen.build()  # validates the settings
    return chosen


def _preview(images: Tensor) -> str:
    """The first :data:`PREVIEW_IMAGES` images side by side at their own resolution, as base64 PNG."""
    return base64.b64encode(png_bytes(image_grid([images[:PREVIEW_IMAGES].cpu()], scale=1, pad=0))).decode("ascii")
