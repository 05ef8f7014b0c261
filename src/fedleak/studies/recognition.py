"""Lim & Chan's recognition studies: reconstructions people cannot recognise that the target model
(``stacking``) or other models (``transfer``) still classify correctly.

Which originals: the listed ``images``, or (``originals``) the first ``per_group`` images of the
split, in index order, that the target *misclassifies* — Lim & Chan's protocol: their rate (a)
climbs with B from a low start because the target gets these originals wrong — or classifies
correctly, or both groups, each its own table rows (column ``original``). The selection runs once,
when the study is planned, on the target the runs attack (:func:`select_originals`).

``stacking`` replicates one image B times in the client batch (B ∈ {1, 2, 4, 8}), attacks it, and has
the target model classify the B reconstructions: rate (a) = correct reconstructions / reconstructions,
rate (b) = originals with at least one correct reconstruction / originals, with the confidences, split
by whether the target classifies the original correctly. ``transfer`` classifies the same kind of
reconstructions with other trained models (checkpoints).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from fedleak.config import RunConfig, build_config
from fedleak.errors import ConfigError
from fedleak.metrics.classify import classify, recognition_counts, recognition_rates
from fedleak.modalities import build_target
from fedleak.pipeline import load_data, resolve_checkpoint
from fedleak.store import RunRecord
from fedleak.studies.aggregate import group, no_leak, proportion, stats
from fedleak.studies.base import Figure, PlannedRun, Study, StudySettings, register
from fedleak.studies.figures import rate_axes


class StackingSettings(StudySettings):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], description="copies B of each image")
    knowledge: dict[str, Any] = Field(default_factory=lambda: {"labels": True},
                                      description="Lim & Chan's attacker knows the label")
    originals: Literal["listed", "misclassified", "correct", "both"] = Field(
        "listed", description="the listed images, or the first per_group images of the split that the target "
        "misclassifies (Lim & Chan's protocol) / classifies correctly / both groups")
    per_group: int = Field(16, ge=1, description="originals per group when they are selected")


GROUPS = {"misclassified": ("misclassified",), "correct": ("correct",), "both": ("misclassified", "correct")}


def select_originals(settings: StackingSettings, chunk: int = 256) -> dict[str, list[int]]:
    """Per group (``misclassified`` / ``correct``), the first ``per_group`` indices of the split, in
    index order, that the study's target classifies wrongly / rightly (one clear line when the split
    has too few)."""
    config = build_config(None, settings.flags(**{"data.index": [0]}), [])
    config, info = resolve_checkpoint(config)
    dataset = load_data(config)
    target = build_target(config, dataset, info)
    wanted = GROUPS[settings.originals]
    found: dict[str, list[int]] = {g: [] for g in wanted}
    for start in range(0, len(dataset), chunk):
        indices = list(range(start, min(start + chunk, len(dataset))))
        labels = dataset.labels[indices].to(torch.long)
        verdicts = classify(target.model, dataset.images(indices), labels, target.mean, target.std)
        for i, p, y in zip(indices, verdicts.predicted, labels.tolist()):
            group = "correct" if p == y else "misclassified"
            if group in found and len(found[group]) < settings.per_group:
                found[group].append(i)
        if all(len(v) >= settings.per_group for v in found.values()):
            return found
    short = {g: len(v) for g, v in found.items() if len(v) < settings.per_group}
    raise ConfigError(f"the {settings.split} split has too few originals the target "
                      + ", ".join(f"{'misclassifies' if g == 'misclassified' else 'classifies correctly'} ({n} of "
                                  f"{settings.per_group})" for g, n in short.items()) + ": lower per_group")


def stacked_runs(settings: StackingSettings) -> list[PlannedRun]:
    if settings.originals == "listed":
        chosen = [("listed", i) for i in settings.images]
    else:
        chosen = [(g, i) for g, indices in select_originals(settings).items() for i in indices]
    extra = (lambda g: {}) if settings.originals == "listed" else (lambda g: {"original": g})
    return [PlannedRun(f"B={b}/image={i}/seed={s}", {"batch_size": b, "image": i, "seed": s, **extra(g)},
                       settings.flags(**{"data.index": [i] * b, "client.batch_size": b, "seed": s}))
            for b in settings.batch_sizes for s in settings.seeds for g, i in chosen]


def grouping(settings: StackingSettings) -> list[str]:
    """The table's row keys: by selected group, then B."""
    return ["batch_size"] if settings.originals == "listed" else ["original", "batch_size"]


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
        # Lim & Chan's protocol: originals the target misclassifies (and, as second rows, correct ones),
        # IG for 1,200 iterations at TV 0.1 without a box constraint (their settings: ig-limchan), true labels
        "paper": {"originals": "both", "per_group": 16, "batch_sizes": [1, 2, 4, 8],
                  "attack": {"name": "ig-limchan"}, "knowledge": {"labels": True}},
    }

    def plan(self) -> list[PlannedRun]:
        return stacked_runs(self.settings)

    def measure(self, result, run: PlannedRun) -> dict[str, Any]:
        return {"classification": classification(result.target, result)}

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        by = grouping(self.settings)
        return sorted(rate_rows(records, by), key=lambda r: tuple(r[k] for k in by))

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
            for row in rate_rows(keyed, grouping(self.settings), prefix):
                rows.append({"classifier": model.rsplit("/", 1)[-1], **row})
        by = ["classifier", *grouping(self.settings)]
        return sorted(rows, key=lambda r: tuple(r[k] for k in by))

    def figures(self) -> list[Figure]:
        def draw(ax, rows):
            for name in dict.fromkeys(r["classifier"] for r in rows):
                sel = [r for r in rows if r["classifier"] == name]
                ax.plot([r["batch_size"] for r in sel], [r["rate_a"] for r in sel], marker="o", label=name)
            rate_axes(ax, "batch size B", "rate (a)", 0.05, legend_size=7)

        return [Figure("transfer-rate-a", "Rate (a) by classifier against B", draw)]
