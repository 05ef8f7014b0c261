"""The artifacts of one attack run: config.yaml, metrics.json, trace.json, reconstruction.png,
report.html."""

from __future__ import annotations

from pathlib import Path

import yaml

from fedleak import __version__
from fedleak.defenses import parse_defense
from fedleak.pipeline import RunResult
from fedleak.report.grid import image_grid, png_bytes
from fedleak.report.html import data_uri, render
from fedleak.store import dump_json

IMAGE_COLUMNS = ["#", "dataset index", "class", "recovered label", "PSNR (dB)", "SSIM"]


def fmt_lpips(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary(result: RunResult) -> dict[str, str]:
    m = result.metrics()
    return {
        "PSNR (dB)": f"{m['psnr']:.2f}",
        "SSIM": f"{m['ssim']:.3f}",
        **{f"LPIPS-{net}": fmt_lpips(v) for net, v in m["lpips"].items()},
        "label accuracy": f"{m['label_accuracy']:.2f}",
        "matching loss": f"{m['matching_loss']:.4g}",
        "iterations": str(m["iterations"]),
        "attack s": f"{m['attack_seconds']:.1f}",
        "seed": str(m["seed"]),
    }


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
        settings = ", ".join(f"{k}={v}" for k, v in stage.config.model_dump().items())
        rows.append([stage.name, settings, guarantee])
    return rows


def write_run(folder: Path, result: RunResult) -> None:
    """Write every artifact of ``result`` into ``folder`` (which the caller makes atomic)."""
    config = result.resolved_config()
    config_yaml = yaml.safe_dump(config, sort_keys=False)
    (folder / "config.yaml").write_text(config_yaml)
    dump_json(folder / "metrics.json", result.metrics())
    dump_json(folder / "trace.json", result.reconstruction.trace)
    matched = result.reconstruction.images[result.evaluation.order]
    png = png_bytes(image_grid([result.truth.images, matched]))
    (folder / "reconstruction.png").write_bytes(png)
    hyper = result.payload.hyper
    html = render(
        "run.html.j2",
        title=f"{config['attack']['name']} on {config['model']['name']} · {result.dataset.name}",
        subtitle=f"protocol {hyper.protocol}, batch {hyper.batch_size}"
        + (f" × {hyper.clients} aggregated clients" if hyper.clients > 1 else "")
        + f", model in {hyper.model_mode} mode, defense {hyper.defense or 'none'}",
        defense_rows=defense_rows(result),
        summary=summary(result),
        grid=data_uri(png),
        image_columns=IMAGE_COLUMNS + [f"LPIPS-{net}" for net in result.evaluation.lpips],
        hints=result.hints,
        image_rows=image_rows(result),
        config_yaml=config_yaml,
        version=__version__,
    )
    (folder / "report.html").write_text(html)
