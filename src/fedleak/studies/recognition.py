"""Lim & Chan's recognition studies: reconstructions people cannot recognise that the target model
(``stacking``) or other models (``transfer``) still classify correctly.

``stacking`` replicates one image B times in the client batch (B ∈ {1, 2, 4, 8}), attacks it, and has
the target model classify the B reconstructions: rate (a) = correct reconstructions / reconstructions,
rate (b) = originals with at least one correct reconstruction / originals, with the confidences, split
by whether the target classifies the original correctly. ``transfer`` classifies the same kind of
reconstructions with other trained models (checkpoints).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fedleak.config import RunConfig
from fedleak.metrics.classify import classify, recognition_counts, recognition_rates
from fedleak.modalities import build_target
from fedleak.pipeline import resolve_checkpoint
from fedleak.store import RunRecord
from fedleak.studies.aggregate import group, no_leak, proportion, stats
from fedleak.studies.base import Figure, PlannedRun, Study, StudySettings, register
from fedleak.studies.figures import rate_axes


class StackingSettings(StudySettings):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], description="copies B of each image")
    knowledge: dict[str, Any] = Field(default_factory=lambda: {"labels": True},
                                      description="Lim & Chan's attacker knows the label")


def stacked_runs(settings: StackingSettings) -> list[PlannedRun]:
    return [PlannedRun(f"B={b}/image={i}/seed={s}", {"batch_size": b, "image": i, "seed": s},
                       settings.flags(**{"data.index": [i] * b, "client.batch_size": b, "seed": s}))
            for b in settings.batch_sizes for s in settings.seeds for i in settings.images]


def classification(target, result) -> dict[str, Any]:
    """A model's verdict (``target``: model and its normalisation) on the original and on every
    reconstruction of a stacked run."""
    model = target.model
    truth = result.truth
    label = truth.labels[:1]
    orig = classify(model, truth.images[:1], label, target.mean, target.std)
    recs = result.reconstruction.images
    rec = classify(model, recs, label.expand(len(recs)), target.mean, target.std)
    return {
        "original_correct": orig.predicted[0] == int(label), "original_confidence": orig.true_confidence[0],
        "recon_correct": [p == int(label) for p in rec.predicted], "recon_predicted": rec.predicted,
        "recon_predicted_name": [result.dataset.classes[p] if p < len(result.dataset.classes) else str(p)
                                 for p in rec.predicted],
        "recon_confidence": rec.confidence, "recon_true_confidence": rec.true_confidence,
    }


def rate_rows(records: list[RunRecord], by: list[str], prefix: str = "") -> list[dict[str, Any]]:
    rows = []
    for key, members in group(records, by).items():
        cls = [r.metrics[prefix or "classification"] for r in members]
        row: dict[str, Any] = dict(zip(by, key))
        groups = [(c["recon_correct"], c["original_correct"]) for c in cls]
        row.update(recognition_rates(groups))
        counts = recognition_counts(groups)  # the rates with their Wilson intervals
        row.update(proportion("rate_a", *counts["rate_a"]) | proportion("rate_b", *counts["rate_b"]))
        row.update(stats("confidence", (v for c in cls for v, ok in zip(c["recon_confidence"], c["recon_correct"]) if ok)))
        row.update(stats("psnr", (r.metrics["psnr"] for r in members)))
        row.update(stats("ssim", (r.metrics["ssim"] for r in members)))
        row.update(no_leak(members, "psnr") | no_leak(members, "ssim"))  # what a guess without the update scores
        rows.append(row)
    return rows


def rates_plot(x: str):
    def draw(ax, rows):
        for key, label in (("rate_a", "rate (a)"), ("rate_b", "rate (b)")):
            ax.plot([r[x] for r in rows], [r[key] for r in rows], marker="o", label=label)
        rate_axes(ax, "batch size B (copies of one image)", "rate (fraction)", 0.05)

    return draw


@register("stacking")
class StackingStudy(Study):
    """Rates (a) and (b) against the number of stacked copies B, classified by the target."""

    title = "Stacking: one image replicated B times"
    Settings = StackingSettings
    settings: StackingSettings
    presets = {
        "cpu": {"images": [0, 1, 2], "batch_sizes": [1, 2, 4], "attack": {"name": "ig", "iterations": 200}},
        "full": {"images": list(range(20)), "batch_sizes": [1, 2, 4, 8], "attack": {"name": "ig-limchan"}},
    }

    def plan(self) -> list[PlannedRun]:
        return stacked_runs(self.settings)

    def measure(self, result, run: PlannedRun) -> dict[str, Any]:
        return {"classification": classification(result.target, result)}

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        return sorted(rate_rows(records, ["batch_size"]), key=lambda r: r["batch_size"])

    def figures(self) -> list[Figure]:
        return [Figure("rates-vs-batch", "Rates (a) and (b) against B", rates_plot("batch_size"))]

    def notes(self) -> list[str]:
        return ["rate (a): correctly classified reconstructions / reconstructions; rate (b): originals with at "
                "least one correctly classified reconstruction / originals; *_orig_correct / *_orig_wrong split "
                "by whether the target classifies the original correctly; confidence: mean softmax probability "
                "of correctly classified reconstructions."]


class TransferSettings(StackingSettings):
    transfer: list[str] = Field(default_factory=list, description="checkpoints of the models that classify")


@register("transfer")
class TransferStudy(StackingStudy):
    """The stacking runs' reconstructions classified by other trained models."""

    title = "Transfer: reconstructions classified by other models"
    Settings = TransferSettings
    settings: TransferSettings

    def plan(self) -> list[PlannedRun]:
        runs = stacked_runs(self.settings)
        for r in runs:
            r.extra = {"transfer": list(self.settings.transfer)}
        return runs

    def measure(self, result, run: PlannedRun) -> dict[str, Any]:
        out = {"classification": classification(result.target, result)}
        for path in self.settings.transfer:
            config = RunConfig.model_validate({"model": {"checkpoint": path}, "data": {"name": result.config.data.name}})
            config, info = resolve_checkpoint(config)
            classifier = build_target(config, result.dataset, info)
            classifier.model.to(result.reconstruction.images.device)  # it classifies where the run computed
            out[f"transfer:{path}"] = classification(classifier, result)
        return out

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        rows = []
        for model in ["target", *self.settings.transfer]:
            prefix = "" if model == "target" else f"transfer:{model}"
            keyed = [r for r in records if (prefix or "classification") in r.metrics]
            for row in rate_rows(keyed, ["batch_size"], prefix):
                rows.append({"classifier": model.rsplit("/", 1)[-1], **row})
        return sorted(rows, key=lambda r: (r["classifier"], r["batch_size"]))

    def figures(self) -> list[Figure]:
        def draw(ax, rows):
            for name in dict.fromkeys(r["classifier"] for r in rows):
                sel = [r for r in rows if r["classifier"] == name]
                ax.plot([r["batch_size"] for r in sel], [r["rate_a"] for r in sel], marker="o", label=name)
            rate_axes(ax, "batch size B", "rate (a)", 0.05, legend_size=7)

        return [Figure("transfer-rate-a", "Rate (a) by classifier against B", draw)]
