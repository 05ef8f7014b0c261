"""The artifacts of one attack run: config.yaml, metrics.json, trace.json, reconstruction.png,
report.html.

The report is one self-contained HTML file (images embedded as data URIs): the scores beside what a
guess without the update scores (the no-leak baselines), each original above its reconstruction with
a caption, the matching-loss curve, the defense and the configuration.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import yaml

from fedleak import __version__
from fedleak.defenses import parse_defense
from fedleak.images import image_grid, png_bytes
from fedleak.metrics.baselines import best_guess, verdict
from fedleak.metrics.recovery import recovery_summary
from fedleak.modalities import MODALITIES
from fedleak.pipeline import RunResult
from fedleak.report import text_run as _text_run  # noqa: F401  (registers the text page, where the text extra is)
from fedleak.report.html import data_uri, render
from fedleak.report.pages import PAGES, Page, Parts
from fedleak.report.plots import figure_bytes, pyplot
from fedleak.store import dump_json

IMAGE_COLUMNS = ["#", "dataset index", "class", "recovered label", "PSNR (dB)", "SSIM"]
DISPLAY_SIDE = 128  # CSS pixels of an image's longer side in the report, whatever its resolution
LOG_SPAN = 20  # a loss falling by more than this factor is drawn on a log scale


def fmt_lpips(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary(result: RunResult, base: dict[str, Any] | None = None) -> dict[str, str]:
    """The run's scores for the console and the report's first table, in its modality's terms
    (:data:`fedleak.report.pages.PAGES`), with the no-leak baseline beside them (``base``: the
    modality's baselines, computed when not given)."""
    page = PAGES.get(result.modality)
    return page.summary(result, base if base is not None else baselines(result))


def image_summary(result: RunResult, base: dict[str, Any]) -> dict[str, str]:
    """An image run's scores, the no-leak baseline beside PSNR and SSIM and a verdict on it."""
    m = result.metrics()
    # A run scored here has its baselines (``None``, from a run stored without them, fails as before).
    guess = cast(dict[str, float], best_guess(base))
    return {
        "PSNR (dB)": f"{m['psnr']:.2f}",
        "no-leak PSNR": f"{guess['psnr']:.2f}",
        "SSIM": f"{m['ssim']:.3f}",
        "no-leak SSIM": f"{guess['ssim']:.3f}",
        "vs no-leak": (verdict(m, guess) or "above").replace(" the no-leak baseline", ""),
        **{f"LPIPS-{net}": fmt_lpips(v) for net, v in m["lpips"].items()},
        "label accuracy": f"{m['label_accuracy']:.2f}",
        "matching loss": f"{m['matching_loss']:.4g}",
        "iterations": str(m["iterations"]),
        "attack s": f"{m['attack_seconds']:.1f}",
        "seed": str(m["seed"]),
        **server_summary(result),
    }


def server_summary(result: RunResult) -> dict[str, str]:
    """Images recovered exactly (PSNR at the 100 dB cap) and, for a malicious server, its modification."""
    rec = recovery_summary([s.psnr for s in result.evaluation.images])
    server = result.payload.hyper.server
    return {"exact": f"{rec['exact_images']}/{rec['images']}",
            **({"server": server.partition(":")[0]} if server != "honest" else {})}


def image_rows(result: RunResult) -> list[list[str]]:
    classes = result.dataset.classes

    def name(label: int) -> str:
        return classes[label] if 0 <= label < len(classes) else "?"

    return [
        [str(s.position), str(s.dataset_index), name(s.label), name(s.recovered_label),
         f"{s.psnr:.2f}", f"{s.ssim:.3f}", *(fmt_lpips(v) for v in s.lpips.values())]
        for s in result.evaluation.images
    ]


def defense_rows(result: RunResult) -> list[list[str]]:
    """One row per defense stage: its name, settings and what it guarantees (DP-SGD's ε)."""
    rows = []
    for stage in parse_defense(result.payload.hyper.defense).stages:
        facts = result.privacy.get(stage.name, {})
        guarantee = (f"ε = {facts['epsilon']:.3g} at δ = {facts['delta']:g} (q = {facts['sample_rate']:g}, "
                     f"{facts['steps']} steps)") if facts else ""
        if facts.get("sampling"):  # which sampling the accountant assumed, and whether the client did that
            guarantee += f"; {facts['sampling']}"
        settings = ", ".join(f"{k}={v}" for k, v in stage.config.model_dump().items())
        rows.append([stage.name, settings, guarantee])
    return rows


def baselines(result: RunResult) -> dict[str, Any]:
    """The no-leak baselines of the run's client batch (its modality's; images:
    :mod:`fedleak.metrics.baselines`)."""
    return MODALITIES.get(result.modality).baselines(result.truth, result.dataset)


def baseline_rows(result: RunResult, base: dict[str, Any]) -> list[list[str]]:
    """This run's scores, then each baseline's: (what, PSNR, SSIM)."""
    rows = [["this reconstruction", f"{result.evaluation.psnr:.2f}", f"{result.evaluation.ssim:.3f}"],
            ["mean colour of each original", f"{base['mean_colour']['psnr']:.2f}", f"{base['mean_colour']['ssim']:.3f}"]]
    other = base["other_image"]
    if other is not None:
        rows.append([f"another image of the set (index {other['index']})", f"{other['psnr']:.2f}",
                     f"{other['ssim']:.3f}"])
    return rows


def display_size(image_shape: tuple[int, ...]) -> tuple[int, int]:
    """(width, height) in CSS pixels: the longer side scaled to :data:`DISPLAY_SIDE`."""
    h, w = image_shape[-2:]
    scale = DISPLAY_SIDE / max(h, w)
    return round(w * scale), round(h * scale)


def image_pairs(result: RunResult) -> list[dict[str, str]]:
    """Per original: it and its matched reconstruction as data URIs, and a caption."""
    classes = result.dataset.classes
    matched = result.reconstruction.images[result.evaluation.order]

    def name(label: int) -> str:
        return classes[label] if 0 <= label < len(classes) else "?"

    def uri(image) -> str:
        return data_uri(png_bytes(image_grid([image[None]], scale=1, pad=0)))

    pairs = []
    for s in result.evaluation.images:
        where = f"index {s.dataset_index}" if s.dataset_index is not None else f"#{s.position}"
        recovered = f", recovered {name(s.recovered_label)}" if s.recovered_label >= 0 else ""
        pairs.append({"original": uri(result.truth.images[s.position]), "reconstruction": uri(matched[s.position]),
                      "caption": f"{where} · {name(s.label)}{recovered} · PSNR {s.psnr:.1f} dB · SSIM {s.ssim:.2f}"})
    return pairs


def loss_curve(trace: list[dict[str, float]]):
    """The matching loss against iteration as a matplotlib figure (``None`` without a trace): the best
    trial and the mean over trials, or one line per restart where restarts ran one after another."""
    rows = [r for r in trace if "loss" in r and "iteration" in r]
    if len(rows) < 2:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, ax = pyplot().subplots(figsize=(5.5, 3.2))
    if any("restart" in r for r in rows):
        for restart in dict.fromkeys(r.get("restart", 0) for r in rows):
            sel = [r for r in rows if r.get("restart", 0) == restart]
            ax.plot([r["iteration"] - sel[0]["iteration"] for r in sel], [r["loss"] for r in sel],
                    label=f"restart {int(restart)}")
    else:
        ax.plot([r["iteration"] for r in rows], [r["loss"] for r in rows], label="best trial")
        if any("mean_loss" in r and r["mean_loss"] != r["loss"] for r in rows):
            ax.plot([r["iteration"] for r in rows], [r.get("mean_loss", math.nan) for r in rows],
                    label="mean over trials", alpha=0.6)
    losses = [r["loss"] for r in rows if math.isfinite(r["loss"])]
    if losses and min(losses) > 0 and max(losses) > LOG_SPAN * min(losses):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("matching loss")
    ax.set_title("Matching loss during the attack", fontsize=10)
    ax.grid(alpha=0.3)
    if len(ax.get_lines()) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def checkpoint_text(info: dict[str, Any]) -> str:
    """One sentence on the attacked weights: untrained (no checkpoint), or which file, trained on what."""
    if not info:
        return "Model: untrained (random initialisation; no checkpoint)."
    if "dataset" not in info:
        return f"Model weights: {info['path']} ({info['trained']})."
    acc = info.get("test_accuracy")
    accuracy = f", test accuracy {acc:.3f}" if isinstance(acc, (int, float)) else ""
    return (f"Model weights: {info['path']} — a trained {info['architecture']} (fedleak checkpoint, trained on "
            f"{info['dataset']} for {info['epochs']} epochs{accuracy}).")


def loss_curve_uri(trace: list[dict[str, float]]) -> str | None:
    fig = loss_curve(trace)
    if fig is None:
        return None
    png = figure_bytes(fig)
    pyplot().close(fig)
    return data_uri(png)


def write_run(folder: Path, result: RunResult) -> None:
    """Write every artifact of ``result`` into ``folder`` (which the caller makes atomic): config.yaml,
    metrics.json, trace.json, the modality's files (:data:`fedleak.report.pages.PAGES`) and report.html."""
    config = result.resolved_config()
    config_yaml = yaml.safe_dump(config, sort_keys=False)
    (folder / "config.yaml").write_text(config_yaml)
    base = baselines(result)
    page = PAGES.get(result.modality)
    view = page.parts(result, base)
    dump_json(folder / "metrics.json", {**result.metrics(), "server": result.payload.hyper.server, **view.metrics,
                                        "baselines": base})
    dump_json(folder / "trace.json", result.reconstruction.trace)
    for name, data in view.files.items():
        (folder / name).write_bytes(data)
    hyper = result.payload.hyper
    html = render(
        "run.html.j2",
        title=f"{config['attack']['name']} on {config['model']['name']} · {result.dataset.name}",
        subtitle=f"protocol {hyper.protocol}, batch {hyper.batch_size}"
        + (f" × {hyper.clients} aggregated clients" if hyper.clients > 1 else "")
        + f", model in {hyper.model_mode} mode, defense {hyper.defense or 'none'}"
        + (f"; MALICIOUS server: {hyper.server}" if hyper.server != "honest" else "; honest server"),
        defense_rows=defense_rows(result),
        summary=page.summary(result, base),
        loss_curve=loss_curve_uri(result.reconstruction.trace),
        hints=result.hints,
        checkpoint=checkpoint_text(result.checkpoint),
        config_yaml=config_yaml,
        version=__version__,
        **view.page,
    )
    (folder / "report.html").write_text(html)


def image_parts(result: RunResult, base: dict[str, Any]) -> Parts:
    """An image run's recovery counts, ``reconstruction.png`` and the page's grid, baselines and table."""
    matched = result.reconstruction.images[result.evaluation.order]
    png = png_bytes(image_grid([result.truth.images, matched]))
    width, height = display_size(tuple(result.truth.images.shape))
    return Parts(
        metrics={"recovery": recovery_summary([s.psnr for s in result.evaluation.images])},
        files={"reconstruction.png": png},
        page={"baselines": baseline_rows(result, base), "verdict": verdict(result.metrics(), best_guess(base)),
              "pairs": image_pairs(result), "display": {"width": width, "height": height},
              "image_columns": IMAGE_COLUMNS + [f"LPIPS-{net}" for net in result.evaluation.lpips],
              "image_rows": image_rows(result), "section": None})


PAGES.register("image")(Page(image_summary, image_parts))
