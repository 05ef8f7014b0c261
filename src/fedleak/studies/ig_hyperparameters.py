"""Lim & Chan's studies of Inverting Gradients' own settings: the total-variation weight α (``tv``)
and which layers' gradients are matched (``layers``). The general sweep over any config key,
``fedleak sweep``, is :mod:`fedleak.studies.grid_sweep`."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fedleak.store import RunRecord
from fedleak.studies.aggregate import quality, summarize
from fedleak.studies.base import Figure, PlannedRun, Study, StudySettings, image_runs, register


def line_plot(x: str, ys: list[str], log_x: bool = False, x_label: str | None = None, y_label: str | None = None):
    """Mean ± std of the ``ys`` columns against column ``x`` (a legend only when there are several)."""
    def draw(ax, rows: list[dict[str, Any]]) -> None:
        xs = [r[x] for r in rows]
        for y in ys:
            ax.errorbar(xs, [r[y] for r in rows], yerr=[r.get(f"{y}_std", 0) for r in rows], marker="o",
                        capsize=3, label=y.upper())
        if log_x:
            ax.set_xscale("symlog", linthresh=min([v for v in xs if v] or [1e-4]))
        ax.set_xlabel(x_label or x)
        ax.set_ylabel(y_label or ", ".join(y.upper() for y in ys))
        if len(ys) > 1:
            ax.legend()
        ax.grid(alpha=0.3)

    return draw


class TVSettings(StudySettings):
    alphas: list[float] = Field(default_factory=lambda: [0.0, 1e-4, 1e-3, 1e-2, 1e-1], description="TV weights α")


@register("tv")
class TVStudy(Study):
    """Reconstruction quality against the total-variation weight α (Lim & Chan, Fig. 2)."""

    title = "Total-variation weight α"
    Settings = TVSettings
    settings: TVSettings
    presets = {
        "cpu": {"images": [0, 1], "alphas": [0.0, 1e-4, 1e-3, 1e-2, 1e-1], "attack": {"name": "ig", "iterations": 300}},
        "full": {"images": list(range(8)), "alphas": [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0],
                 "attack": {"name": "ig-limchan"}},
    }

    def plan(self) -> list[PlannedRun]:
        return [r for a in self.settings.alphas for r in image_runs(self.settings, f"alpha={a:g}", {"alpha": a},
                                                                     **{"attack.tv": a})]

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        return sorted(summarize(records, ["alpha"], quality(records)), key=lambda r: r["alpha"])

    def figures(self) -> list[Figure]:
        return [Figure("quality-vs-alpha", "PSNR against the TV weight α",
                       line_plot("alpha", ["psnr"], True, "TV weight α", "PSNR (dB)")),
                Figure("ssim-vs-alpha", "SSIM against the TV weight α",
                       line_plot("alpha", ["ssim"], True, "TV weight α", "SSIM"))]


class LayersSettings(StudySettings):
    selections: list[str] = Field(default_factory=lambda: ["all", "largest-norm:2", "largest-norm:4", "first:2", "last:2"],
                                  description="layer selections, 'name' or 'name:k'")


@register("layers")
class LayersStudy(Study):
    """Matching all layers ("averaged") against the k layers with the largest gradient norm (Lim & Chan)."""

    title = "Layer selection"
    Settings = LayersSettings
    settings: LayersSettings
    presets = {
        "cpu": {"images": [0, 1], "attack": {"name": "ig", "iterations": 300}},
        "full": {"images": list(range(8)), "attack": {"name": "ig-limchan"},
                 "selections": ["all", "largest-norm:1", "largest-norm:2", "largest-norm:4", "largest-norm:8",
                                "first:4", "last:4"]},
    }

    def plan(self) -> list[PlannedRun]:
        runs = []
        for sel in self.settings.selections:
            name, _, k = sel.partition(":")
            flags = {"attack.layers": name, "attack.layer_count": int(k) if k else None}
            runs += image_runs(self.settings, f"layers={sel}", {"layers": sel}, **flags)
        return runs

    def table(self, records: list[RunRecord]) -> list[dict[str, Any]]:
        return summarize(records, ["layers"], quality(records))

    def figures(self) -> list[Figure]:
        def bars(ax, rows):
            ax.bar([r["layers"] for r in rows], [r["psnr"] for r in rows],
                   yerr=[r["psnr_std"] for r in rows], capsize=3)
            ax.set_xlabel("layers matched")
            ax.set_ylabel("PSNR (dB)")
            ax.tick_params(axis="x", rotation=30)

        return [Figure("psnr-by-layers", "PSNR by layer selection", bars)]
