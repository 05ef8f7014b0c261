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

:class:`AuditLog` writes records to a results database with the study tooling: the folder is a
study of kind ``flower-audit`` (:class:`AuditStudy`) whose grid — one cell per audited (round,
client) — grows as the federation runs, so ``fedleak runs list|show|export`` and ``fedleak report``
work on it.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from fedleak.attacks.base import Attack, AttackerKnowledge, Reconstruction, build_attack
from fedleak.attacks.labels import last_layer_weight_grad
from fedleak.attacks.simulation import Simulation
from fedleak.config import AttackSection, KnowledgeSection, describe_validation_error, read_yaml
from fedleak.device import device_name
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.client import normalize
from fedleak.fl.payload import ClientData, Payload, PublicHyperparameters
from fedleak.metrics.baselines import scores as baseline_scores
from fedleak.metrics.evaluate import Evaluation, evaluate
from fedleak.metrics.lpips import LPIPS
from fedleak.store import ResultsDB, RunRecord
from fedleak.studies.base import Figure, PlannedRun, Study, register

STUDY = "flower-audit"
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


# --- the results folder -------------------------------------------------------------------------------------


class AuditCell(BaseModel):
    model_config = ConfigDict(extra="forbid")
    round: int = Field(ge=0)
    client: str


class AuditSettings(BaseModel):
    """What an audit folder's ``study.json`` holds: the attack, what was audited, and the cells so far."""

    model_config = ConfigDict(extra="forbid")

    attack: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_ATTACK), description="the attack section")
    knowledge: dict[str, Any] = Field(default_factory=dict, description="the knowledge section")
    view: Literal["clients", "aggregate"] = Field("clients", description="each client's update, or only their "
                                                  "mean (what a server under secure aggregation sees)")
    model: str = Field("", description="the audited architecture")
    selection: dict[str, Any] = Field(default_factory=dict, description="which rounds and clients were audited")
    cells: list[AuditCell] = Field(default_factory=list, description="every audited (round, client), in order")


@register(STUDY)
class AuditStudy(Study):
    """What an honest-but-curious server could reconstruct from each update it received in a live
    federation, round by round and client by client. Without ground truth (the real case) the table
    shows what the server can observe: the matching loss the attack reached, the labels it recovered,
    the update fit (cosine similarity between the update the reconstruction would produce and the one
    observed), the label signal (share of the classifier update's negative evidence on the recovered
    classes) and their product, the risk: 1 means a batch the attacker built explains the update
    completely. Where a simulation shared each client's batch for scoring, PSNR and SSIM stand beside
    the mean-colour baseline (what a guess knowing only each image's average colour scores)."""

    title = "Leakage audit of a Flower federation"
    Settings = AuditSettings  # type: ignore[assignment]
    settings: AuditSettings  # type: ignore[assignment]
    live: ClassVar[bool] = True  # its grid is discovered while the federation runs: presets plan nothing
    grid_columns = False

    def __init__(self, settings: AuditSettings) -> None:  # type: ignore[override]
        super().__init__(settings)  # type: ignore[arg-type]
        self._previews: list[dict[str, Any]] = []

    def plan(self) -> list[PlannedRun]:
        flags = {f"attack.{k}": v for k, v in self.settings.attack.items()}
        flags |= {f"knowledge.{k}": v for k, v in self.settings.knowledge.items()}
        return [PlannedRun(name=f"round {c.round} · client {c.client}", params={"round": c.round, "client": c.client},
                           flags=dict(flags), kind=STUDY, extra={"round": c.round, "client": c.client})
                for c in self.settings.cells]

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        rows, self._previews = [], []
        for r in sorted(records, key=lambda r: (str(r.metrics.get("round", "")).zfill(9), str(r.metrics.get("client", "")))):
            m = r.metrics
            # At most eight columns, so the page shows one row per update; `fedleak runs export` has every number.
            row = {"round": m.get("round"), "client": m.get("client"), "risk": m.get("risk")}
            if "psnr" in m:
                row |= {"matching_loss": m.get("matching_loss"), "labels": m.get("labels", ""), "psnr": m["psnr"],
                        "psnr_mean_colour": m.get("psnr_mean_colour"), "ssim": m.get("ssim")}
            else:
                row |= {"images": m.get("observed_images"), "update_fit": m.get("update_fit"),
                        "label_signal": m.get("label_signal"), "matching_loss": m.get("matching_loss"),
                        "labels": m.get("labels", "")}
            rows.append(row)
            preview = m.get("preview") or {}
            if preview.get("reconstruction"):
                self._previews.append({"label": f"r{m.get('round')} · {str(m.get('client'))[-6:]}",
                                       "labels": m.get("recovered_labels", []), **preview})
        return rows

    def figures(self) -> list[Figure]:
        figures = [Figure("risk", "Risk per round and client", _draw_risk),
                   Figure("reconstructions", "What the server reconstructed, per round and client",
                          lambda ax, rows: _draw_previews(ax, self._previews))]
        if any(p.get("original") for p in self._previews):
            figures.append(Figure("psnr-vs-risk", "PSNR against risk (ground truth shared for scoring)",
                                  _draw_psnr_vs_risk))
        return figures

    def notes(self) -> list[str]:
        return ["risk = update fit (≥ 0) × label signal, from what the server observes only; it ranks updates by how "
                "completely an attack's reconstruction explains them, and is no proof that an image is "
                "recognisable (nor that a stronger attack would not do better).",
                "Under a defense that drops or coarsens coordinates (top-k, quantisation, sign) even the true batch "
                "does not reproduce the observed update exactly: the update fit is then capped below 1 by what the "
                "defense removed.",
                "Reconstructions are drawn in the figure \"What the server reconstructed\" (the originals to their "
                "left where a batch was shared for scoring); the grid below needs per-image originals. Every number "
                "of every update: fedleak runs export DIR."]


def _draw_risk(ax: Any, rows: list[dict[str, Any]]) -> None:
    rounds = sorted({r["round"] for r in rows})
    clients = list(dict.fromkeys(r["client"] for r in rows))
    width = 0.8 / max(1, len(clients))
    for j, client in enumerate(clients):
        values = {r["round"]: r["risk"] for r in rows if r["client"] == client}
        ax.bar([i + j * width for i in range(len(rounds))], [values.get(t, 0.0) for t in rounds], width,
               label=f"client {str(client)[-6:]}")
    ax.set_xticks([i + width * (len(clients) - 1) / 2 for i in range(len(rounds))])
    ax.set_xticklabels([str(t) for t in rounds])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("risk (update fit × label signal)")
    if not rows:
        ax.text(0.5, 0.5, "no audited update yet", ha="center", va="center", transform=ax.transAxes)
    elif len(clients) <= 12:
        ax.legend(fontsize=7)


def _draw_previews(ax: Any, previews: list[dict[str, Any]]) -> None:
    """One cell per audited update — its reconstructions, with the originals to their left where the
    batch was shared for scoring — labelled with its round, client and recovered labels; two columns
    of cells beyond four updates."""
    import numpy as np
    from PIL import Image

    def pixels(b64: str | None) -> Any:
        return None if not b64 else np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))

    decoded = []
    for p in previews:
        try:  # a hand-edited database may hold anything: what does not decode is left out
            decoded.append((p, pixels(p.get("original")), pixels(p["reconstruction"])))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    if decoded:  # images of another size than the first update's do not share its mosaic
        side = decoded[0][2].shape[0]
        decoded = [d for d in decoded if d[2].shape[0] == side and (d[1] is None or d[1].shape[0] == side)]
    previews = [p for p, _, _ in decoded]
    truth = any(p.get("original") for p in previews)
    ax.set_xlabel("originals (shared for scoring)  |  reconstructions" if truth else "reconstructions of each batch")
    ax.set_ylabel("round · client → recovered labels")
    ax.set_xticks([])
    ax.set_yticks([])
    if not previews:
        ax.text(0.5, 0.5, "no audited update yet", ha="center", va="center", transform=ax.transAxes)
        return
    shown = previews[:16]
    cells = [(original, reconstruction) for _, original, reconstruction in decoded[:16]]
    side = cells[0][1].shape[0]
    gap = max(2, side // 4)
    left = max((o.shape[1] for o, _ in cells if o is not None), default=0)
    cell_w = left + (gap if truth else 0) + max(r.shape[1] for _, r in cells)
    columns = 1 if len(cells) <= 4 else 2
    rows = -(-len(cells) // columns)
    label_h = max(6, side // 3)
    canvas = np.full((rows * (label_h + side + gap), columns * (cell_w + 2 * gap), 3), 255, np.uint8)
    for i, ((original, reconstruction), p) in enumerate(zip(cells, shown)):
        top, x0 = (i % rows) * (label_h + side + gap) + label_h, (i // rows) * (cell_w + 2 * gap)
        if original is not None:
            canvas[top:top + original.shape[0], x0:x0 + original.shape[1]] = original
        start = x0 + left + (gap if truth else 0)
        canvas[top:top + reconstruction.shape[0], start:start + reconstruction.shape[1]] = reconstruction
    ax.imshow(canvas, interpolation="nearest")
    for i, p in enumerate(shown):
        labels = ",".join(str(v) for v in (p.get("labels") or [])[:PREVIEW_IMAGES])
        ax.text((i // rows) * (cell_w + 2 * gap), (i % rows) * (label_h + side + gap) + label_h - 1,
                f"{p['label']} → {labels}" if labels else p["label"], fontsize=6, va="bottom")


def _draw_psnr_vs_risk(ax: Any, rows: list[dict[str, Any]]) -> None:
    scored = [r for r in rows if r.get("psnr") is not None]
    ax.scatter([r["risk"] for r in scored], [r["psnr"] for r in scored], label="reconstruction PSNR")
    ax.scatter([r["risk"] for r in scored], [r["psnr_mean_colour"] for r in scored], marker="x",
               label="mean-colour baseline PSNR")
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("risk (update fit × label signal)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _preview(images: Tensor) -> str:
    """The first :data:`PREVIEW_IMAGES` images side by side at their own resolution, as base64 PNG."""
    from fedleak.report.grid import image_grid, png_bytes

    return base64.b64encode(png_bytes(image_grid([images[:PREVIEW_IMAGES].cpu()], scale=1, pad=0))).decode("ascii")


class AuditLog:
    """An audit's results folder: ``study.json`` (kind ``flower-audit``), ``results.sqlite`` (one
    row per audited update), ``runs/KEY/`` (its images) and the study report, rebuilt on request.

    ``out`` must be new or empty; a folder holding an earlier audit is replaced only with
    ``overwrite`` (and a folder holding anything else never)."""

    def __init__(self, out: str | Path, attack: AuditAttack, view: str = "clients", model: str = "",
                 selection: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
        from fedleak.studies.folder import DB_NAME, STUDY_FILE

        self.out = Path(out)
        self._prepare(overwrite, STUDY_FILE)
        self.settings = AuditSettings(attack=attack.resolved(), knowledge=attack.knowledge, view=view, model=model,
                                      selection=json.loads(json.dumps(dict(selection or {}), default=str)))
        self.db_path = self.out / DB_NAME
        self._write_meta()
        with ResultsDB(self.db_path):
            pass

    def _prepare(self, overwrite: bool, study_file: str) -> None:
        from fedleak.studies.folder import read_meta

        out = self.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"audit folder {str(out)!r} exists and is not a folder")
        if not out.exists() or not any(out.iterdir()):
            out.mkdir(parents=True, exist_ok=True)
            return
        is_audit = (out / study_file).is_file() and read_meta(out).get("study") == STUDY
        if not is_audit:
            raise ConfigError(f"folder {str(out)!r} is not empty and holds no audit; choose another folder")
        if not overwrite:
            raise ConfigError(f"folder {str(out)!r} holds an earlier audit; choose another folder or pass overwrite=True")
        shutil.rmtree(out)
        out.mkdir(parents=True)

    def _write_meta(self) -> None:
        from fedleak.studies.folder import study_meta, write_meta

        write_meta(self.out, study_meta(STUDY, "live", self.settings.model_dump(mode="json")))

    def key(self, round: int, client: str) -> str:
        """The database key of cell (round, client), as the study's plan computes it."""
        from fedleak.studies.runner import plan

        settings = self.settings.model_copy(update={"cells": [AuditCell(round=round, client=client)]})
        return plan(AuditStudy(settings))[0].key

    def add(self, record: AuditRecord, seed: int = 0) -> str:
        """Store ``record`` (and its images) and extend the folder's grid by its cell; returns its key."""
        from fedleak.report.grid import image_grid, png_bytes
        from fedleak.store import write_atomically

        key = self.key(record.round, record.client)
        artifacts: dict[str, str] = {}

        def fill(tmp: Path) -> None:
            batches = {"reconstruction": record.images}
            if record.truth_images is not None:
                batches["original"] = record.truth_images
            for name, images in batches.items():
                (tmp / f"{name}.png").write_bytes(png_bytes(image_grid([images.cpu()])))
                artifacts[name] = f"runs/{key}/{name}.png"

        write_atomically(self.out / "runs" / key, fill)
        cell = AuditCell(round=record.round, client=record.client)
        if cell not in self.settings.cells:
            self.settings.cells.append(cell)
        self._write_meta()
        config = {"attack": self.settings.attack, "knowledge": self.settings.knowledge, "view": record.view,
                  "hyper": asdict(record.hyper), "assumptions": list(record.assumptions)}
        with ResultsDB(self.db_path) as db:
            db.add(RunRecord(key=key, study=STUDY, name=f"round {record.round} · client {record.client}",
                             params={"round": record.round, "client": record.client}, config=config, seed=seed,
                             metrics=record.metrics(), artifacts=artifacts, seconds=record.seconds))
        return key

    def write_report(self) -> Path:
        """(Re)build the folder's report (``fedleak report`` does the same)."""
        from fedleak.report.study import write_report

        return write_report(self.out)
