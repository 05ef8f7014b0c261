"""The ``flower-audit`` study: a live Flower federation's audit as a study folder — one grid cell per
audited (round, client), discovered while the federation runs (so its presets plan nothing and
``fedleak study`` does not run it), written by :class:`fedleak.integrations.flower.log.AuditLog` and
read by ``fedleak report`` and ``fedleak runs`` like any study. Its table and figures show what the
server could observe (:mod:`fedleak.audit`): risk, verdict, update fit, the recovered labels as a
histogram, the reconstructions.

An audit re-run into a folder that already holds one writes into a fresh numbered sub-folder
(``audit-2``, ``audit-3``, …: :func:`audit_folders` lists them all).
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from fedleak.audit import DEFAULT_ATTACK, PREVIEW_IMAGES
from fedleak.calibration import draw_calibration
from fedleak.errors import FedleakError
from fedleak.store import RunRecord
from fedleak.studies.base import Figure, PlannedRun, Study, register
from fedleak.studies.figures import grouped_bars
from fedleak.studies.folder import STUDY_FILE, read_meta

STUDY = "flower-audit"
RERUN_PREFIX = "audit-"  # a re-run into a folder holding an audit writes into out/audit-2, out/audit-3, …
NO_VERDICT = "n/a"


def label_histogram(labels: Iterable[int]) -> dict[str, int]:
    """Recovered labels as class → count (keys as JSON writes them, in class order)."""
    counts = Counter(int(v) for v in labels)
    return {str(c): counts[c] for c in sorted(counts)}


def histogram_text(histogram: dict[str, int] | None) -> str:
    """``class: count`` pairs, e.g. ``0: 3, 2: 5`` (empty without labels)."""
    return ", ".join(f"{c}: {n}" for c, n in (histogram or {}).items())


def labels_of(metrics: dict[str, Any]) -> dict[str, int]:
    """A stored audit's label histogram: the client's class counts recovered from its update
    (:mod:`fedleak.leaks`) where the audit recovered them, else the histogram of the labels its attack
    recovered (from those labels where an older row has none)."""
    counts = (metrics.get("label_counts") or {}).get("counts") if isinstance(metrics.get("label_counts"), dict) else None
    if isinstance(counts, list):
        return {str(c): int(n) for c, n in enumerate(counts) if n}
    stored = metrics.get("label_histogram")
    if isinstance(stored, dict):
        return {str(k): int(v) for k, v in stored.items()}
    return label_histogram(metrics.get("recovered_labels") or [])


def verdict_text(verdict: Any) -> str:
    """A verdict as one word or phrase: a string as it is, an enum's value, a mapping's or a
    dataclass's ``verdict``/``kind``/``label`` entry; ``n/a`` for none."""
    if verdict is None:
        return NO_VERDICT
    if isinstance(verdict, Enum):
        return str(verdict.value)
    if is_dataclass(verdict) and not isinstance(verdict, type):
        verdict = asdict(verdict)
    if isinstance(verdict, dict):
        for key in ("verdict", "kind", "label", "name"):
            if isinstance(verdict.get(key), (str, Enum)):
                return verdict_text(verdict[key])
    return str(verdict)


def is_audit(folder: Path) -> bool:
    """Whether ``folder`` holds an audit (a study folder of kind ``flower-audit``)."""
    try:
        return (folder / STUDY_FILE).is_file() and read_meta(folder).get("study") == STUDY
    except FedleakError:  # a damaged study.json is no audit to add to
        return False


def audit_folders(folder: Path) -> list[Path]:
    """``folder`` (when it holds an audit) and the audits of its re-runs (``audit-N``), in order."""
    reruns = sorted((p for p in folder.glob(f"{RERUN_PREFIX}*") if p.name[len(RERUN_PREFIX):].isdigit()),
                    key=lambda p: int(p.name[len(RERUN_PREFIX):])) if folder.is_dir() else []
    return [f for f in [folder, *reruns] if is_audit(f)]


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
    federation, round by round and client by client, and what it concluded: a verdict per update
    (leaks, no leak found, inconclusive — each with its reason), the risk (the calibrated probability
    that the reconstruction is recognisable, where the audit's simulation of the client is verified),
    the client's class counts as the server recovers them, and what a malicious server planting an
    imprint block would recover of the same client exactly. Without ground truth (the real case) the
    table shows what the server can observe (the update fit: cosine similarity between the update the
    reconstruction would produce and the one observed); where a simulation shared each client's batch
    for scoring, the PSNR gain over the mean-colour baseline (what a guess knowing only each image's
    average colour scores) and the class counts' error stand beside it."""

    title = "Leakage audit of a Flower federation"
    Settings = AuditSettings  # type: ignore[assignment]
    settings: AuditSettings  # type: ignore[assignment]
    live: ClassVar[bool] = True  # its grid is discovered while the federation runs: presets plan nothing
    grid_columns = False
    units: ClassVar[str] = "audited updates"  # what the report counts (a cell is planned when its audit starts)

    def __init__(self, settings: AuditSettings) -> None:
        super().__init__(settings)  # type: ignore[arg-type]
        self._previews: list[dict[str, Any]] = []
        self._records: list[RunRecord] = []

    def plan(self) -> list[PlannedRun]:
        flags = {f"attack.{k}": v for k, v in self.settings.attack.items()}
        flags |= {f"knowledge.{k}": v for k, v in self.settings.knowledge.items()}
        return [PlannedRun(name=f"round {c.round} · client {c.client}", params={"round": c.round, "client": c.client},
                           flags=dict(flags), kind=STUDY, extra={"round": c.round, "client": c.client})
                for c in self.settings.cells]

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        rows, self._previews, self._records = [], [], list(records)
        for r in sorted(records, key=_order):
            m = r.metrics
            # At most eight columns, so the page shows one row per update; `fedleak runs export` has every number.
            if m.get("modality") == "text":
                rows.append(_text_row(m))
                continue
            row = {"round": m.get("round"), "client": m.get("client"), "verdict": verdict_text(m.get("verdict")),
                   "risk": m.get("risk")}
            labels = histogram_text(labels_of(m))
            if "psnr" in m:
                row |= {"psnr_gain": m.get("psnr_gain"), "histogram_tv": m.get("histogram_error")}
            else:
                row |= {"images": m.get("observed_images"), "update_fit": m.get("update_fit")}
            row |= {"class counts (class: count)": labels, "imprint_share": m.get("malicious_share")}
            rows.append(row)
            preview = m.get("preview") or {}
            if preview.get("reconstruction"):
                total = m.get("observed_images") or len(m.get("recovered_labels") or [])
                shown = min(PREVIEW_IMAGES, total) if total else None
                counted = f" · {shown} of {total} shown" if shown is not None and total > shown else ""
                self._previews.append({"label": f"r{m.get('round')} · {str(m.get('client'))[-6:]}{counted}",
                                       "labels": m.get("recovered_labels", []), **preview})
        return rows

    def figures(self) -> list[Figure]:
        if self._records and all(r.metrics.get("modality") == "text" for r in self._records):
            return [Figure("rouge1", "ROUGE-1 of what the server recovered, per round and client", _draw_rouge)]
        figures = [Figure("risk", "Risk per round and client", _draw_risk),
                   Figure("reconstructions", "What the server reconstructed, per round and client",
                          lambda ax, rows: _draw_previews(ax, self._previews))]
        figures.append(Figure("calibration", "How the risk is measured: P(recognisable) against update fit, "
                              "measured in simulation against the truth", lambda ax, rows: draw_calibration(ax)))
        if any(p.get("original") for p in self._previews):
            figures.append(Figure("psnr-vs-risk", "PSNR against risk (ground truth shared for scoring)",
                                  _draw_psnr_vs_risk))
        return figures

    def notes(self) -> list[str]:
        """The verdicts' reasons and the training's sources of the records :meth:`table` was last given,
        then what the columns mean."""
        records = self._records
        reasons = [f"round {r.metrics.get('round')} · client {r.metrics.get('client')}: {r.metrics.get('verdict')} — "
                   f"{r.metrics.get('verdict_reason')}" for r in sorted(records, key=_order)
                   if r.metrics.get("verdict_reason")]
        sources = _sources_text(records)
        if records and all(r.metrics.get("modality") == "text" for r in records):
            return reasons + sources + [TEXT_NOTE]
        return reasons + sources + [
                "verdict: leaks (evidence named), no leak found (by which attack, at what budget, the simulation "
                "verified), inconclusive (why). risk: the calibrated probability that the reconstruction is "
                "recognisable given its update fit and batch size (measured in simulation against the truth: "
                "fedleak.calibration), only where the simulation is verified — blank otherwise, since a fit under "
                "a wrong simulation is no evidence either way.",
                "class counts: the client's class counts as the server recovers them from the classifier's update "
                "(fedleak.leaks); histogram_tv their total-variation error against the shared batch. imprint_share: "
                "the share of the client's examples a malicious server planting Robbing the Fed's 128-bin imprint "
                "block would recover exactly (closed form; the bins it would need for half of them: fedleak runs "
                "show DIR KEY, malicious_server).",
                "Under a defense that drops or coarsens coordinates (top-k, quantisation, sign) even the true batch "
                "does not reproduce the observed update exactly: the update fit is then capped below 1 by what the "
                "defense removed.",
                "Reconstructions are drawn in the figure \"What the server reconstructed\" (the originals to their "
                "left where a batch was shared for scoring): at most 16 images of each update, as in its runs/KEY/ "
                "PNGs. Every number of every update: fedleak runs export DIR."]


TEXT_NOTE = ("A text federation's columns: exact (sequences recovered token for token, matched by ROUGE-L, of "
             "the client's batch), rouge1 beside no_leak_rouge1 (an unrelated sentence of the corpus scored "
             "against each original: what recovering nothing scores), pii (recorded PII spans — names, e-mails, "
             "phone and card numbers, addresses — that came back verbatim). These need a batch shared for scoring; "
             "without one the verdict is inconclusive and the recovered sentences are in runs/KEY/recovered.txt. "
             "The update fit is what the server can observe; a text audit has no calibrated risk.")


def _text_row(m: dict[str, Any]) -> dict[str, Any]:
    """A text audit's row: verdict, update fit, and — where the batch was shared — exact sequences,
    ROUGE-1 beside the no-leak sentence, PII spans recovered."""
    other = m.get("other_text") if isinstance(m.get("other_text"), dict) else {}
    shared = m.get("sequences") is not None
    return {"round": m.get("round"), "client": m.get("client"), "verdict": verdict_text(m.get("verdict")),
            "update_fit": m.get("update_fit"),
            "exact": f"{m.get('exact_sequences')}/{m.get('sequences')}" if shared else None,
            "rouge1": m.get("rouge1") if shared else None,
            "no_leak_rouge1": (other or {}).get("rouge1"),
            "pii": f"{m.get('pii_recovered_spans')}/{m.get('pii_spans')}" if m.get("pii_spans") else None}


def _order(r: RunRecord) -> tuple[str, str]:
    return str(r.metrics.get("round", "")).zfill(9), str(r.metrics.get("client", ""))


def _sources_text(records: list[RunRecord]) -> list[str]:
    """One line naming where each training setting was read, for the settings every update read alike."""
    found = [r.metrics.get("sources") for r in records if isinstance(r.metrics.get("sources"), dict)]
    if not found:
        return []
    first: dict[str, Any] = found[0] or {}
    common = {k: v for k, v in first.items() if v != "unused" and all((f or {}).get(k) == v for f in found)}
    return ["Where the audit read the client's training: " + ", ".join(f"{k} — {v}" for k, v in common.items()) + "."]


def _draw_risk(ax: Any, rows: list[dict[str, Any]]) -> None:
    rounds = sorted({r["round"] for r in rows})
    clients = list(dict.fromkeys(r["client"] for r in rows))
    grouped_bars(ax, rows, lambda r: r["round"], "client", "risk", groups=rounds, label=lambda c: f"client {str(c)[-6:]}")
    ax.set_xticklabels([str(t) for t in rounds])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("risk: P(recognisable)")
    if not rows:
        ax.text(0.5, 0.5, "no audited update yet", ha="center", va="center", transform=ax.transAxes)
    elif len(clients) <= 12:
        ax.legend(fontsize=7)


def _draw_rouge(ax: Any, rows: list[dict[str, Any]]) -> None:
    """ROUGE-1 bars per round and client (none where no batch was shared for scoring)."""
    rows = [{**r, "rouge1": float("nan") if r.get("rouge1") is None else r["rouge1"]} for r in rows]
    rounds = sorted({r["round"] for r in rows})
    grouped_bars(ax, rows, lambda r: r["round"], "client", "rouge1", groups=rounds,
                 label=lambda c: f"client {str(c)[-6:]}")
    ax.set_xticklabels([str(t) for t in rounds])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("ROUGE-1 (1: every word back)")
    if rows and len({r["client"] for r in rows}) <= 12:
        ax.legend(fontsize=7)


def _draw_previews(ax: Any, previews: list[dict[str, Any]]) -> None:
    """One cell per audited update — its reconstructions, with the originals to their left where the
    batch was shared for scoring — labelled with its round, client and recovered labels; two columns
    of cells beyond four updates."""
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
    for i, ((original, reconstruction), _p) in enumerate(zip(cells, shown)):
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
    ax.set_xlabel("risk: P(recognisable)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
