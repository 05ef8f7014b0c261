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

Before attacking, the audit checks that its simulation can explain the update at all
(:func:`fedleak.specification.check_specification`: the update's norm and per-layer structure
against updates the declared training makes on public data of the same size); where the batch is
shared for scoring it also measures how well the client's own batch, simulated, explains its update
(``truth_fit``). Every record ends in a **verdict** (:mod:`fedleak.verdicts`): ``leaks`` (evidence
named), ``no leak found`` (which attack, at how many iterations, the simulation verified) or
``inconclusive`` (why: mis-specified, under the attack's minimum of iterations, the data order
unknown); ``iterations_run`` says how many ran.

**Risk** is the calibrated probability that the reconstruction is recognisable given its update fit
and the batch size (:mod:`fedleak.calibration`: measured in simulation against the truth), and only
where the simulation is verified — ``nan`` otherwise, since a fit under a wrong simulation means
nothing. It is evidence, not proof, and says nothing about what a stronger attack could do. Only
where the auditor has ground truth (a simulation that shares each client's batch for scoring) is an
:class:`~fedleak.metrics.Evaluation` attached, with the no-leak baselines beside it; that truth
reaches the scoring only, after the attack has returned.

What depends on the inputs' modality — how a batch reaches the model, the mis-specification check,
the scores, whether the label and imprint what-ifs apply, the preview — is a :class:`Scoring`
(:data:`IMAGES` by default; text: :class:`fedleak.integrations.flower.text.TextScoring`, whose scores
come from the text modality's evaluate and whose verdict rule is :func:`fedleak.verdicts.text_evidence`).

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
from typing import Any, Protocol

import torch
from pydantic import ValidationError
from torch import Tensor

from fedleak.attacks.base import Attack, AttackerKnowledge, Reconstruction, build_attack
from fedleak.attacks.labels import last_layer_weight_grad
from fedleak.attacks.simulation import Simulation
from fedleak.calibration import calibrated
from fedleak.config import AttackSection, KnowledgeSection, describe_validation_error, read_yaml
from fedleak.device import device_name
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.client import normalize
from fedleak.fl.payload import ClientData, Payload, PublicHyperparameters
from fedleak.images import image_grid, png_bytes
from fedleak.leaks import LabelHistogram, MaliciousServer, label_histogram_leak, malicious_server
from fedleak.metrics.baselines import scores as baseline_scores
from fedleak.metrics.evaluate import evaluate
from fedleak.metrics.lpips import LPIPS
from fedleak.specification import SpecificationCheck, check_specification
from fedleak.verdicts import INCONCLUSIVE, Findings, decide, minimum_iterations, order_unknown, recognisable

PREVIEW_IMAGES = 16  # images of a batch kept as a preview in the database (for the report's figure)
DEFAULT_ATTACK = {"name": "ig", "iterations": 1000}  # IG at its stated minimum (fedleak.verdicts.MIN_ITERATIONS)
Truth = Callable[[], ClientData | None]


# --- the attack's side: observables -------------------------------------------------------------------------


def update_fit(payload: Payload, knowledge: AttackerKnowledge, images: Tensor, labels: Tensor,
               scoring: Scoring | None = None) -> float:
    """Cosine similarity, over every parameter, between the update the inputs ``images`` (images in
    [0, 1]; token ids for text) with ``labels`` would produce under the payload's public settings and
    the observed update; ``scoring`` (default images) says what the model takes of them."""
    simulation = Simulation(payload, knowledge)
    inputs, targets = (scoring or IMAGES).model_inputs(knowledge, images, labels)
    with torch.enable_grad():
        simulated = simulation.update(inputs, targets)
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


# --- the modality's side: what an audit does with its inputs (DESIGN.md §7) ----------------------------------


@dataclass(frozen=True)
class Score:
    """A reconstruction scored against the client's batch: the modality's ``evaluation`` (``order``,
    ``label_accuracy``, ``summary()``), what the record's row holds of it (``metrics``), the
    :class:`~fedleak.verdicts.Findings` fields it decides (``findings``) and a short ``headline``."""

    evaluation: Any
    metrics: dict[str, Any]
    findings: dict[str, Any]
    headline: str = ""


class Scoring(Protocol):
    """What an audit of one modality does that depends on its inputs (:data:`IMAGES` here; text in
    :mod:`fedleak.integrations.flower.text`): ``name`` (the modality), ``leaks`` (whether the label
    histogram and the imprint what-if of :mod:`fedleak.leaks` apply), the model's inputs and labels
    of a batch (the update fit), the mis-specification check, the scoring against the truth, why the
    attack did not apply (``None``: it did) and what the record previews."""

    @property
    def name(self) -> str: ...

    @property
    def leaks(self) -> bool: ...

    def model_inputs(self, knowledge: AttackerKnowledge, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]: ...

    def check(self, payload: Payload, knowledge: AttackerKnowledge, public: Tensor | None,
              public_labels: Tensor | None, seed: int) -> SpecificationCheck: ...

    def score(self, reconstruction: Reconstruction, truth: ClientData, lpips: Mapping[str, LPIPS | None]) -> Score: ...

    def not_applicable(self, reconstruction: Reconstruction) -> str | None: ...

    def preview(self, record: AuditRecord) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ImageScoring:
    """Images in [0, 1]: normalised for the model; the check on public (or smooth random) images;
    PSNR/SSIM/LPIPS beside the mean-colour guess, recognisable images and label accuracy."""

    name: str = "image"
    leaks: bool = True

    def model_inputs(self, knowledge: AttackerKnowledge, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return normalize(inputs, knowledge.mean, knowledge.std), labels

    def check(self, payload: Payload, knowledge: AttackerKnowledge, public: Tensor | None,
              public_labels: Tensor | None, seed: int) -> SpecificationCheck:
        return check_specification(payload, knowledge, public, public_labels, seed=seed)

    def score(self, reconstruction: Reconstruction, truth: ClientData, lpips: Mapping[str, LPIPS | None]) -> Score:
        if tuple(truth.images.shape) != tuple(reconstruction.images.shape):
            raise FedleakError(f"the batch shared for scoring is {tuple(truth.images.shape)}, the update stands "
                               f"for {tuple(reconstruction.images.shape)}")
        ev = evaluate(reconstruction, truth, dict(lpips))
        base = baseline_scores(truth.images.mean((2, 3), keepdim=True), truth.images)
        found = recognisable(reconstruction.images[ev.order], truth.images)
        metrics = {"psnr": ev.psnr, "ssim": ev.ssim, "label_accuracy": ev.label_accuracy, "lpips": ev.lpips,
                   **{f"lpips_{net}": v for net, v in ev.lpips.items()}, "images": [asdict(s) for s in ev.images],
                   "psnr_mean_colour": base["psnr"], "ssim_mean_colour": base["ssim"],
                   "psnr_gain": ev.psnr - base["psnr"], "recognisable_images": found}
        return Score(ev, metrics, {"recognisable": found, "label_accuracy": ev.label_accuracy},
                     f", PSNR {ev.psnr:.1f} dB")

    def not_applicable(self, reconstruction: Reconstruction) -> str | None:
        return None

    def preview(self, record: AuditRecord) -> dict[str, Any]:
        return {"reconstruction": _preview(record.images), "labels": record.labels_shown()[:PREVIEW_IMAGES],
                "original": _preview(record.truth_images) if record.truth_images is not None else None}


IMAGES = ImageScoring()


@dataclass
class AuditRecord:
    """One audited update: the payload side (always) and an evaluation (only with ground truth).

    ``client`` names who sent the update (a Flower node id, or ``aggregate`` when the server saw
    only the mean of ``hyper.clients`` updates). ``assumptions`` lists every training setting the
    attacker did not observe and what it assumed instead. ``verdict`` (one of
    :data:`fedleak.verdicts.VERDICTS`) and ``verdict_reason`` say what the audit concluded and why;
    ``iterations_run`` how many iterations the attack ran, ``min_iterations`` the least it needs."""

    round: int
    client: str
    hyper: PublicHyperparameters
    reconstruction: Reconstruction
    update_fit: float
    label_signal: float | None
    seconds: float
    assumptions: list[str] = field(default_factory=list)
    view: str = "clients"
    evaluation: Any = None  # the modality's evaluation (metrics.Evaluation for images), with ground truth only
    scored: dict[str, Any] | None = None  # what the row holds of it, beside its baselines (Score.metrics)
    truth_images: Tensor | None = None  # the batch's inputs, kept for the report's grid (images) or texts
    specification: SpecificationCheck | None = None  # the mis-specification check, where it ran
    truth_fit: float | None = None  # cosine with which the client's own batch, simulated, explains the update
    probability: float | None = None  # calibrated P(recognisable) of the update fit (used where verified)
    recognisable: int | None = None  # reconstructions beating their original's mean-colour guess (ground truth)
    iterations_run: int = 0
    min_iterations: int = 0
    verdict: str = INCONCLUSIVE
    verdict_reason: str = ""
    verified: bool = False  # the simulation verified (on the client's batch, or by the check)
    sources: dict[str, str] = field(default_factory=dict)  # each training setting → where it was read (or assumed)
    label_counts: LabelHistogram | None = None  # the client's class counts as recovered (fedleak.leaks)
    malicious: MaliciousServer | None = None  # what an imprint server would recover of this client exactly
    scoring: Scoring = IMAGES  # the modality's side of the audit (its inputs, scores, preview)
    headline: str = ""  # the score's short summary for the log line

    @property
    def images(self) -> Tensor:
        """The reconstructed inputs, each paired with its original (matching) where there is ground
        truth, so that the two line up in the report (an unmatched original's row: the first one's)."""
        images = self.reconstruction.images
        if self.evaluation is None or not len(images):
            return images
        return images[[max(j, 0) for j in self.evaluation.order]]

    def labels_shown(self) -> list[int]:
        """The recovered labels in the order of :attr:`images`."""
        labels = self.reconstruction.labels.flatten()
        if self.evaluation is not None and labels.numel() == len(self.evaluation.order):
            labels = labels[self.evaluation.order]
        return [int(v) for v in labels.tolist()]

    @property
    def risk(self) -> float:
        """The calibrated P(recognisable) where the simulation is verified; ``nan`` where it is not (a
        fit under a wrong simulation is no evidence either way) or no calibration applies."""
        if not self.verified or self.probability is None:
            return float("nan")
        return self.probability

    def metrics(self) -> dict[str, Any]:
        rec = self.reconstruction
        labels = [int(v) for v in rec.labels.flatten().tolist()]
        out: dict[str, Any] = {
            "round": self.round, "client": self.client, "view": self.view, "clients": self.hyper.clients,
            "observed_images": self.hyper.observed_images, "risk": self.risk, "update_fit": self.update_fit,
            "label_signal": self.label_signal, "matching_loss": rec.matching_loss,
            "restart_losses": rec.restart_losses, "iterations": rec.iterations,
            "recovered_labels": labels, "labels": ", ".join(map(str, labels)),
            "attack_notes": list(rec.notes), "attack_seconds": round(rec.seconds, 3), "seconds": round(self.seconds, 3),
            "verdict": self.verdict, "verdict_reason": self.verdict_reason, "iterations_run": self.iterations_run,
            "min_iterations": self.min_iterations, "simulation_verified": self.verified,
            "specification": self.specification.as_dict() if self.specification is not None else None,
            "truth_fit": self.truth_fit, "risk_probability": self.probability, "sources": dict(self.sources),
            "label_counts": self.label_counts.as_dict() if self.label_counts is not None else None,
            "histogram_error": self.label_counts.error if self.label_counts is not None else None,
            "malicious_server": self.malicious.as_dict() if self.malicious is not None else None,
            "malicious_share": self.malicious.share if self.malicious is not None else None,
            "device": device_name(rec.images.device),  # where the attack ran
            "hyper": asdict(self.hyper), "assumptions": list(self.assumptions),
            "hints": [f"Assumed (not sent by the server): {a}" for a in self.assumptions],
            "modality": self.scoring.name, "preview": self.scoring.preview(self),
        }
        return out | (self.scored or {})


def audit_update(payload: Payload, knowledge: AttackerKnowledge, attack: Attack, *, round: int, client: str,
                 seed: int = 0, assumptions: list[str] | None = None, view: str = "clients",
                 truth: Truth | ClientData | None = None,
                 lpips: Mapping[str, LPIPS | None] | None = None,
                 check: bool | SpecificationCheck = True, public: Tensor | None = None,
                 public_labels: Tensor | None = None, min_iterations: int | None = None,
                 sources: Mapping[str, str] | None = None, leaks: bool = True,
                 scoring: Scoring | None = None) -> AuditRecord:
    """Check the simulation, attack one observed update, measure what is observable and decide the
    verdict; score against the truth only if ``truth`` gives some — a callable asked after the
    attack has returned, so nothing it holds can reach the attack.

    ``check``: run the mis-specification check before the attack (on ``public`` images in [0, 1]
    with ``public_labels`` where given, else random inputs), skip it (``False``: the simulation is
    then verified only on a shared batch), or a check already made on this payload.
    ``min_iterations``: the least iterations the attack needs (default its stated minimum,
    :func:`fedleak.verdicts.minimum_iterations`). ``sources`` says where each training setting was read
    (kept in the record). ``leaks``: also recover the label histogram and the malicious-server figure
    (:mod:`fedleak.leaks`; the histogram scored against the truth where given, after the attack;
    only where the modality's ``scoring`` says they apply). ``scoring``: the inputs' modality
    (:class:`Scoring`; default :data:`IMAGES`): how the check, the update fit and the scores read them."""
    if knowledge.labels is not None or knowledge.bn_stats is not None:
        raise FedleakError("an audit attacks what the server sees: the attacker cannot know the client's "
                           "labels or batch-norm statistics")
    start = time.perf_counter()
    side = scoring or IMAGES
    leaks = leaks and side.leaks
    if isinstance(check, SpecificationCheck):
        specification: SpecificationCheck | None = check
    else:
        specification = side.check(payload, knowledge, public, public_labels, seed) if check else None
    reconstruction = attack.run(payload, knowledge, seed=seed)
    fit = update_fit(payload, knowledge, reconstruction.images, reconstruction.labels, side)
    signal = label_signal(payload, knowledge.num_classes, reconstruction.labels) if side.leaks else None
    data = truth() if callable(truth) else truth
    counts = label_histogram_leak(payload, knowledge, None if data is None else data.labels, public, public_labels,
                                  seed) if leaks and knowledge.num_classes else None
    malicious = malicious_server(payload.hyper.observed_images, tuple(knowledge.input_shape)) if leaks else None
    score = truth_fit = None
    if data is not None:
        score = side.score(reconstruction, data, lpips or {})
        truth_fit = update_fit(payload, knowledge, data.images, data.labels, side)
    minimum = minimum_iterations(attack.name, attack.config) if min_iterations is None else min_iterations
    probability, bound = calibrated(fit, payload.hyper.observed_images) or (None, "estimate") \
        if side is IMAGES else (None, "estimate")  # the calibration is measured on images
    findings = Findings(attack.name, reconstruction.iterations, minimum, payload.hyper.observed_images,
                        specification, truth_fit, probability=probability, bound=bound,
                        order_unknown=order_unknown(payload.hyper, assumptions or []),
                        histogram_error=None if counts is None else counts.error,
                        not_applicable=side.not_applicable(reconstruction), **(score.findings if score else {}))
    verdict = decide(findings)
    return AuditRecord(round=round, client=client, hyper=payload.hyper, reconstruction=reconstruction,
                       update_fit=fit, label_signal=signal, seconds=time.perf_counter() - start,
                       assumptions=list(assumptions or []), view=view,
                       evaluation=score.evaluation if score else None, scored=score.metrics if score else None,
                       truth_images=None if data is None else data.images.detach().clone(),
                       specification=specification, truth_fit=truth_fit, probability=findings.probability,
                       recognisable=findings.recognisable, iterations_run=reconstruction.iterations,
                       min_iterations=minimum, verdict=verdict.verdict, verdict_reason=verdict.reason,
                       verified=findings.verified, sources=dict(sources or {}), label_counts=counts,
                       malicious=malicious, scoring=side, headline=score.headline if score else "")


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
