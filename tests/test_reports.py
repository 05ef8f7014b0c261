"""Reports people read: the run report (loss curve, no-leak baselines, captioned fixed-size images, a
hint without machine paths) and the study report (images × settings grid, self-contained, tables that
fit, figures with labelled axes and titles that name what they plot), checked by parsing the HTML."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from html.parser import HTMLParser

import pytest
import torch

from fedleak.data import ImageDataset
from fedleak.metrics.baselines import no_leak_baselines, other_index
from fedleak.report.plots import pyplot
from fedleak.report.run import loss_curve
from fedleak.report.study import MAX_COLUMNS, render_figure, table_view, write_report
from fedleak.store import RunRecord
from fedleak.studies import STUDIES, build_study
from tests.studying import run_study
from tests.test_cli import TINY, fedleak
from tests.test_studies import tiny


class Page(HTMLParser):
    """Every element as (tag, attributes, ids of the enclosing elements), and each table's rows of cells."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self.stack: list[tuple[str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a, [i for _, i in self.stack if i]))
        if tag == "img":
            return  # a void element
        if tag == "table":
            self.tables[a.get("id", f"table{len(self.tables)}")] = []
        if tag == "tr":
            self.tables[self.current_table()].append([])
        if tag in ("td", "th"):
            self.tables[self.current_table()][-1].append("")
        self.stack.append((tag, a.get("id", "")))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        self.text.append(data)
        if any(t in ("td", "th") for t, _ in self.stack):
            row = self.tables[self.current_table()][-1]
            row[-1] += data.strip()

    def current_table(self) -> str:
        return list(self.tables)[-1]

    def images(self) -> list[dict[str, str]]:
        return [a for tag, a, _ in self.elements if tag == "img"]


# --- the run report ----------------------------------------------------------------------------------

def test_run_report_shows_loss_curve_baselines_and_captioned_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("FEDLEAK_LPIPS", raising=False)
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--batch-size", "2", "--known-labels", "--threat", "C",
                           "--out", str(out))
    assert code == 0, err
    html = (out / "report.html").read_text()
    page = Page(html)
    images = page.images()
    assert images and all(i["src"].startswith("data:image/png;base64,") for i in images)
    assert [i.get("id") for i in images].count("loss-curve") == 1
    pairs = [i for i in images if i.get("class") in ("original", "reconstruction")]
    assert [i["class"] for i in pairs] == ["original", "reconstruction"] * 2
    assert all("width: 128px" in i["style"] and "height: 128px" in i["style"] for i in pairs)  # 8×8 shown at 128 px
    assert "image-rendering: pixelated" in html
    captions = [a for tag, a, _ in page.elements if tag == "figcaption"]
    assert len(captions) >= 2 and "PSNR" in "".join(page.text)

    metrics = json.loads((out / "metrics.json").read_text())
    base = metrics["baselines"]
    assert set(base["mean_colour"]) == {"psnr", "ssim"} and set(base["other_image"]) == {"psnr", "ssim", "index"}
    batch = [s["dataset_index"] for s in metrics["images"]]
    assert base["other_image"]["index"] not in batch and base["other_image"]["index"] == min(set(range(99)) - set(batch))
    rows = page.tables["baselines"]
    assert [r[0] for r in rows[1:]] == ["this reconstruction", "mean colour of each original",
                                        f"another image of the set (index {base['other_image']['index']})"]
    assert rows[1][1:] == [f"{metrics['psnr']:.2f}", f"{metrics['ssim']:.3f}"]
    assert rows[2][1:] == [f"{base['mean_colour']['psnr']:.2f}", f"{base['mean_colour']['ssim']:.3f}"]

    hints = [h for h in metrics["hints"] if "LPIPS" in h]
    assert hints and "fedleak weights fetch alex" in html
    cache = str(tmp_path / "torch-home")  # where this machine's torch cache is: no business of a report
    assert cache not in html and not any(cache in h or "/root" in h for h in metrics["hints"])


def dataset(images: torch.Tensor) -> ImageDataset:
    return ImageDataset(name="toy", labels=torch.zeros(len(images), dtype=torch.long), classes=["a"],
                        mean=(0.5,) * images.shape[1], std=(0.5,) * images.shape[1],
                        read=lambda i: images[i], image_shape=tuple(images.shape[1:]))


def test_no_leak_baselines():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 12, 12, generator=g)
    images[1] = torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1)  # a flat image is its own mean colour
    base = no_leak_baselines(images[[1]], dataset(images), [1])
    assert base["mean_colour"]["psnr"] == pytest.approx(100.0) and base["mean_colour"]["ssim"] == pytest.approx(1.0)
    assert base["other_image"]["index"] == 0  # the first index not in the batch
    mse = (images[0] - images[1]).pow(2).mean()
    assert base["other_image"]["psnr"] == pytest.approx(float(10 * torch.log10(1 / mse)), rel=1e-5)

    batch = [0, 2]
    base = no_leak_baselines(images[batch], dataset(images), batch)
    assert base["other_image"]["index"] == 1
    means = images[batch].mean((2, 3), keepdim=True)
    per_image = [10 * math.log10(1 / float((images[i] - means[k]).pow(2).mean())) for k, i in enumerate(batch)]
    assert base["mean_colour"]["psnr"] == pytest.approx(sum(per_image) / 2, rel=1e-5)
    assert other_index(dataset(images), [0, 1, 2, 3, -1]) is None  # −1 is image 4: every image is in the batch
    assert no_leak_baselines(images, dataset(images), range(5))["other_image"] is None


def test_loss_curve_has_labelled_axes_and_one_line_per_restart():
    fig = loss_curve([{"iteration": i, "loss": 1 / (i + 1), "mean_loss": 2 / (i + 1)} for i in range(50)])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "iteration" and ax.get_ylabel() == "matching loss" and ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == ["best trial", "mean over trials"]
    pyplot().close(fig)
    dlg = [{"iteration": r * 10 + i, "restart": r, "loss": 5.0 - i / 10} for r in range(2) for i in range(10)]
    fig = loss_curve(dlg)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["restart 0", "restart 1"]
    assert list(lines[1].get_xdata()) == list(range(10))  # each restart from its own first iteration
    assert fig.axes[0].get_yscale() == "linear"  # a loss that falls by less than a decade stays linear
    pyplot().close(fig)
    assert loss_curve([]) is None  # the analytic attack does not iterate


# --- the study report --------------------------------------------------------------------------------

def test_study_report_is_a_self_contained_grid_of_images_by_settings(tmp_path, cifar_root):
    out = tmp_path / "tv"
    run_study(tiny("tv", cifar_root, alphas="[0.0, 0.01]"), "cpu", out, progress=False)
    page = Page((out / "report.html").read_text())
    grid = page.tables["grid"]
    assert grid[0] == ["image", "original", "alpha=0", "alpha=0.01"]
    assert [r[0] for r in grid[1:]] == ["image 0", "image 1"]  # rows = attacked images, one seed
    in_grid = [(a["class"], a["src"]) for tag, a, ids in page.elements if tag == "img" and "grid" in ids]
    assert [c for c, _ in in_grid] == ["original", "reconstruction", "reconstruction"] * 2
    images = page.images()
    assert len(images) == len(in_grid) + 2 and all(i["src"].startswith("data:image/png;base64,") for i in images)
    assert all("width: " in i["style"] for i in images if i["class"] != "figure")
    header = page.tables["results"][0]
    assert header[:3] == ["alpha", "runs", "psnr"] and "psnr_std" not in header  # mean [95 % CI] in one cell
    # two runs a cell: no interval (from n = 3), the no-leak baseline beside the mean
    assert re.fullmatch(r"\S+ \[n/a\] \(no-leak \S+\)( ▼ at or below no-leak)?", page.tables["results"][1][2])
    assert "psnr_ci_low" not in header and "psnr_no_leak" not in header


def test_study_grid_marks_settings_not_yet_run(tmp_path, cifar_root):
    out = tmp_path / "tv"
    run_study(tiny("tv", cifar_root, alphas="[0.0, 0.01]"), "cpu", out, progress=False)
    with sqlite3.connect(out / "results.sqlite") as conn:  # as if the study was stopped before its last run
        conn.execute("DELETE FROM runs WHERE name = 'alpha=0.01/image=1/seed=0'")
    page = Page(write_report(out).read_text())
    grid = page.tables["grid"]
    assert grid[1][0] == "image 0" and grid[1][2].startswith("PSNR") and grid[1][3].startswith("PSNR")
    assert grid[2][0] == "image 1" and grid[2][2].startswith("PSNR") and grid[2][3] == "not run"


def wide_rows(n_rows: int) -> list[dict]:
    return [{"alpha": float(a), "runs": 2, **{f"m{k}": 0.5 + k for k in range(MAX_COLUMNS + 2)},
             "m0_std": 0.1} for a in range(n_rows)]


def test_wide_tables_are_transposed_to_fit_and_narrow_ones_are_not():
    view = table_view(wide_rows(2), identity={"alpha"})
    assert view["pivoted"] and view["columns"] == ["", "alpha=0", "alpha=1"]
    assert [r[0] for r in view["rows"]] == ["runs", *[f"m{k}" for k in range(MAX_COLUMNS + 2)]]
    assert view["rows"][1][1:] == ["0.5 ± 0.1", "0.5 ± 0.1"]
    many = table_view(wide_rows(MAX_COLUMNS + 5), identity={"alpha"})  # transposing would not narrow it
    assert not many["pivoted"] and many["columns"][:3] == ["alpha", "runs", "m0"]
    narrow = table_view([{"alpha": 0.0, "psnr": 12.0, "psnr_std": math.nan}], identity={"alpha"})
    assert narrow == {"pivoted": False, "columns": ["alpha", "psnr"], "rows": [["0", "12"]]}


def fake_metrics(run, i: int) -> dict:
    """Every metric some study's table reads, varying a little from run to run."""
    b = run.params.get("batch_size", 1)
    verdict = {"original_correct": i % 2 == 0, "original_confidence": 0.9, "recon_correct": [i % 3 > 0] * b,
               "recon_predicted": [0] * b, "recon_predicted_name": ["c0"] * b, "recon_confidence": [0.7] * b,
               "recon_true_confidence": [0.6] * b}
    return {"psnr": 10.0 + i % 7, "ssim": 0.1 + (i % 5) / 10, "lpips_alex": 0.5, "label_accuracy": 1.0,
            "attack_seconds": 1.0 + i, "classification": verdict, "test_accuracy": 0.4 + (i % 4) / 10,
            "accuracy_per_round": [0.3, 0.4, 0.5], "images": []}


TITLE_WORDS = ("psnr", "ssim", "lpips", "accuracy", "rate")


@pytest.mark.parametrize("name", STUDIES.names())
def test_every_study_figure_has_labelled_axes_and_a_title_naming_what_it_plots(name):
    study = build_study(name, "cpu")
    records = [RunRecord(str(i), name, run.name, run.params, {}, 0, fake_metrics(run, i))
               for i, run in enumerate(study.plan())]
    rows = study.table(records)
    assert study.figures(), name
    for spec in study.figures():
        fig = render_figure(spec, rows)
        axes = fig.axes
        assert all(ax.get_ylabel() for ax in axes), (name, spec.name)
        assert any(ax.get_xlabel() for ax in axes), (name, spec.name)
        plotted = " ".join([ax.get_ylabel() for ax in axes] + [t.get_text() for ax in axes
                                                               for t in (ax.get_legend().get_texts() if ax.get_legend() else [])]).lower()
        title = spec.title.lower()
        for word in TITLE_WORDS:  # what the title names is on an axis or in the legend, and the other way round
            assert (word in title) == (word in plotted), (name, spec.name, word, spec.title, plotted)
        pyplot().close(fig)
