"""Issue 21, reports: a tampered study folder is one line naming the run and the field (items 9);
scores beside their no-leak baseline, flagged where they do no better (18); intervals only from
n = 3, and notes that say what the table shows (19); grid values that validate to the same setting
are refused (11)."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from fedleak.metrics.baselines import best_guess, verdict
from fedleak.report.study import BELOW, stat_cell, table_notes, table_view
from fedleak.store import RunRecord
from fedleak.studies.aggregate import MIN_INTERVAL_N, stats, summarize
from tests.test_cli import TINY, fedleak


def write_cifar(root: Path) -> Path:
    """A tiny CIFAR-10 on disk (as tests/conftest.py's ``cifar_root``)."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in (("data_batch_1", 20), ("test_batch", 10)):
        batch = {b"batch_label": name.encode(), b"labels": [i % 10 for i in range(n)],
                 b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A finished two-run TV study (8×8 LeNet, two iterations), made once for the module."""
    from fedleak.studies import build_study
    from tests.studying import run_study

    base = tmp_path_factory.mktemp("issue21")
    root = write_cifar(base / "data")
    study = build_study("tv", "cpu", overrides=[f"root={root}", "image_size=8", "model=lenet", "width=1.0",
                                                "images=[0]", "alphas=[0.0, 0.1]", "attack.iterations=2"])
    run_study(study, "cpu", base / "st", progress=False)
    return base / "st"


def copy_of(template: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "st"
    shutil.copytree(template, folder)
    return folder


# ----------------------------------------------------------------------------- 9: tampered folders

def _rows(folder: Path) -> list[tuple[str, dict]]:
    conn = sqlite3.connect(folder / "results.sqlite")
    try:
        names = [d[1] for d in conn.execute("PRAGMA table_info(runs)")]
        return [(r[0], dict(zip(names, r))) for r in conn.execute("SELECT * FROM runs ORDER BY key")]
    finally:
        conn.close()


def set_column(column: str, value):
    """Every run's ``column`` set to ``value`` as SQLite stores it (a TEXT column keeps the text)."""
    def edit(folder: Path) -> None:
        conn = sqlite3.connect(folder / "results.sqlite")
        with conn:
            conn.execute(f"UPDATE runs SET {column} = ?", (value,))
        conn.close()
    return edit


def edit_json(column: str, change):
    """Every run's JSON ``column`` decoded, changed by ``change(data)`` (in place or returned), stored."""
    def edit(folder: Path) -> None:
        conn = sqlite3.connect(folder / "results.sqlite")
        with conn:
            for key, row in _rows(folder):
                data = json.loads(row[column])
                out = change(data)
                conn.execute(f"UPDATE runs SET {column} = ? WHERE key = ?",
                             (json.dumps(data if out is None else out), key))
        conn.close()
    return edit


def edit_meta(change):
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "study.json").read_text())
        change(meta)
        (folder / "study.json").write_text(json.dumps(meta))
    return edit


def classified(matched: int):
    """A run classified by the target (as the stacking study stores it), its image matched to ``matched``."""
    def change(m: dict) -> None:
        m["classification"] = {"original_correct": True, "original_confidence": 0.5, "recon_correct": [True],
                               "recon_predicted": [0], "recon_predicted_name": ["c0"], "recon_confidence": [0.5],
                               "recon_true_confidence": [0.5]}
        m["images"][0]["matched"] = matched
    return change


TAMPERINGS = {  # id → (edit, the field the one-line error must name)
    "psnr-a-string": (edit_json("metrics", lambda m: m.update(psnr="12.5")), "metrics.psnr"),
    "ssim-a-mapping": (edit_json("metrics", lambda m: m.update(ssim={})), "metrics.ssim"),
    "images-a-mapping": (edit_json("metrics", lambda m: m.update(images={})), "metrics.images"),
    "image-psnr-a-string": (edit_json("metrics", lambda m: m["images"][0].update(psnr="x")), "metrics.images[0].psnr"),
    "image-a-list": (edit_json("metrics", lambda m: m["images"].__setitem__(0, [1])), "metrics.images[0]"),
    "hints-a-number": (edit_json("metrics", lambda m: m.update(hints=5)), "metrics.hints"),
    "hints-a-string": (edit_json("metrics", lambda m: m.update(hints="abc")), "metrics.hints"),
    "lpips-a-string": (edit_json("metrics", lambda m: m.update(lpips_alex="x")), "metrics.lpips_alex"),
    "baselines-a-list": (edit_json("metrics", lambda m: m.update(baselines=[])), "metrics.baselines"),
    "baseline-psnr-a-string": (edit_json("metrics", lambda m: m["baselines"]["mean_colour"].update(psnr="9")),
                               "metrics.baselines.mean_colour.psnr"),
    "classification-a-string": (edit_json("metrics", lambda m: m.update(classification="yes")),
                                "metrics.classification"),
    "matched-out-of-range": (edit_json("metrics", classified(7)), "metrics.images[0].matched"),
    "metrics-a-list": (set_column("metrics", "[1, 2]"), "metrics"),
    "params-value-a-string": (edit_json("params", lambda p: p.update(alpha="0.1")), "params.alpha"),
    "params-value-a-mapping": (edit_json("params", lambda p: p.update(alpha={"x": 1})), "params.alpha"),
    "params-value-a-list": (edit_json("params", lambda p: p.update(image=[0])), "params.image"),
    "params-a-list": (set_column("params", "[]"), "params"),
    "config-a-list": (set_column("config", "[]"), "config"),
    "artifacts-a-list": (set_column("artifacts", "[]"), "artifacts"),
    "artifact-a-mapping": (edit_json("artifacts", lambda a: a.update({"original-0": {"x": 1}})),
                           "artifacts.original-0"),
    "seconds-a-string": (set_column("seconds", "slow"), "seconds"),
    "seed-a-fraction": (set_column("seed", 1.5), "seed"),
    "finished-a-string": (set_column("finished", "today"), "finished"),
    "meta-images-strings": (edit_meta(lambda m: m["settings"].update(images=["0"])), "settings.images"),
    "meta-alphas-a-string": (edit_meta(lambda m: m["settings"].update(alphas="0.1")), "settings.alphas"),
    "meta-width-a-string": (edit_meta(lambda m: m["settings"].update(width="1.0")), "settings.width"),
    "meta-seeds-fractions": (edit_meta(lambda m: m["settings"].update(seeds=[0.0])), "settings.seeds"),
    "meta-preset-a-number": (edit_meta(lambda m: m.update(preset=5)), "preset"),
}


@pytest.mark.parametrize("name", TAMPERINGS)
def test_a_tampered_study_folder_is_one_line_naming_the_field(name, template, tmp_path, monkeypatch, capsys):
    folder = copy_of(template, tmp_path)
    before = {f: (folder / f).read_bytes() for f in ("report.html", "table.json", "table.csv")}
    keys = [k for k, _ in _rows(folder)]
    edit, field = TAMPERINGS[name]
    edit(folder)
    code, _, err = fedleak(monkeypatch, capsys, "report", str(folder))
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("fedleak: error: "), err
    assert "Traceback" not in err and "internal error" not in err
    assert field in err, err
    if not name.startswith("meta-"):  # a run's row: the message names the run
        assert any(k in err for k in keys), err
    assert {f: (folder / f).read_bytes() for f in before} == before  # nothing (half-)rewritten
    assert not any(p.name.endswith(".tmp") for p in folder.rglob("*"))


def test_a_tampered_row_is_named_by_runs_list_too(template, tmp_path, monkeypatch, capsys):
    folder = copy_of(template, tmp_path)
    edit_json("metrics", lambda m: m.update(psnr="12.5"))(folder)
    code, _, err = fedleak(monkeypatch, capsys, "runs", "list", str(folder))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "metrics.psnr must be a number" in err


def test_a_tampered_failure_row_names_its_field(template, tmp_path, monkeypatch, capsys):
    folder = copy_of(template, tmp_path)
    conn = sqlite3.connect(folder / "results.sqlite")
    with conn:
        conn.execute("INSERT INTO failures (key, study, name, params, config, error, attempts, failed) "
                     "VALUES ('deadbeef', 'tv', 'alpha=1', '{}', '{}', 'boom', 'twice', 1.0)")
    conn.close()
    code, _, err = fedleak(monkeypatch, capsys, "runs", "list", str(folder), "--failed")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "'deadbeef'" in err and "attempts must be an integer" in err


def test_an_untampered_folder_still_reports(template, tmp_path, monkeypatch, capsys):
    folder = copy_of(template, tmp_path)
    edit_json("metrics", lambda m: m.update(my_note="kept", lpips_vgg=None))(folder)  # unknown keys pass
    code, _, err = fedleak(monkeypatch, capsys, "report", str(folder))
    assert code == 0, err


# ---------------------------------------------------------------------- 18: the no-leak baseline

def test_the_attack_summary_shows_the_no_leak_baseline_and_flags_a_worse_result(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, stdout, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out), "--batch-size", "1")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    guess = best_guess(metrics["baselines"])
    guesses = metrics["baselines"]["mean_colour"], metrics["baselines"]["other_image"]
    assert guess["psnr"] == max(g["psnr"] for g in guesses)
    assert "no-leak PSNR" in stdout and "no-leak SSIM" in stdout and f"{guess['psnr']:.2f}" in stdout
    # four iterations on random weights: no better than a flat image of the original's mean colour
    assert metrics["psnr"] <= guess["psnr"]
    assert "at or below the no-leak baseline" in stdout
    html = (out / "report.html").read_text()
    assert 'id="verdict"' in html and "no-leak PSNR" in html


def test_a_result_above_its_baseline_is_not_flagged():
    base = {"mean_colour": {"psnr": 14.0, "ssim": 0.2}, "other_image": {"psnr": 11.0, "ssim": 0.3, "index": 4}}
    guess = best_guess(base)
    assert guess == {"psnr": 14.0, "ssim": 0.3}  # per metric the better guess
    assert verdict({"psnr": 20.0, "ssim": 0.5}, guess) is None
    assert verdict({"psnr": 14.0, "ssim": 0.5}, guess) == "PSNR at or below the no-leak baseline"
    assert verdict({"psnr": 9.0, "ssim": 0.1}, guess) == "PSNR, SSIM at or below the no-leak baseline"
    assert verdict({"psnr": 9.0}, None) is None and best_guess(None) is None
    assert best_guess({"mean_colour": {"psnr": 14.0, "ssim": 0.2}, "other_image": None}) == {"psnr": 14.0, "ssim": 0.2}


def test_a_study_stores_baselines_and_shows_each_cells_mean_baseline(template, monkeypatch, capsys):
    rows = _rows(template)
    baselines = [json.loads(r["metrics"])["baselines"] for _, r in rows]
    assert all(b["mean_colour"]["psnr"] > 0 for b in baselines)  # every study run stores them
    table = json.loads((template / "table.json").read_text())
    for row in table:
        assert row["psnr_no_leak"] == pytest.approx(best_guess(baselines[0])["psnr"])  # one image: its baseline
        assert "ssim_no_leak" in row
    html = (template / "report.html").read_text()
    assert html.count("(no-leak ") >= 2 * len(table) and "no-leak baseline" in html  # PSNR and SSIM, each row
    assert BELOW in html  # two iterations do no better than the baseline
    code, stdout, _ = fedleak(monkeypatch, capsys, "runs", "list", str(template))
    assert code == 0 and "no-leak PSNR" in stdout and "at or below" in stdout


def test_the_table_flags_a_cell_whose_mean_is_at_or_below_its_baseline():
    def record(alpha, psnr, base):
        return RunRecord("k", "tv", "r", {"alpha": alpha}, {}, 0,
                         {"psnr": psnr, "baselines": {"mean_colour": {"psnr": base, "ssim": 0.1}, "other_image": None}})

    rows = summarize([record(0.0, 20.0, 14.0), record(0.0, 22.0, 16.0), record(1.0, 10.0, 14.0)], ["alpha"], ["psnr"])
    assert [r["psnr_no_leak"] for r in rows] == [15.0, 14.0]
    view = table_view(rows, identity={"alpha"})
    assert view["columns"] == ["alpha", "runs", "psnr"]  # the baseline in the mean's cell
    assert view["rows"][0][2] == "21 [n/a] (no-leak 15)"
    assert view["rows"][1][2] == f"10 [n/a] (no-leak 14) {BELOW}"
    assert "psnr_no_leak" not in summarize([RunRecord("k", "tv", "r", {"alpha": 0}, {}, 0, {"psnr": 1.0})],
                                           ["alpha"], ["psnr"])[0]  # runs made before baselines were stored


# -------------------------------------------------------------- 19: intervals from n = 3, honest notes

def test_an_interval_is_given_from_three_runs():
    assert MIN_INTERVAL_N == 3
    two = stats("psnr", [10.0, 24.8])
    assert two["psnr_n"] == 2 and two["psnr"] == pytest.approx(17.4) and two["psnr_std"] > 0
    assert math.isnan(two["psnr_ci_low"]) and math.isnan(two["psnr_ci_high"])
    three = [12.5, 13.1, 11.9]
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(three), scale=scipy_stats.sem(three))
    got = stats("psnr", three)
    assert (got["psnr_ci_low"], got["psnr_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert stat_cell({"runs": 2, **two}, "psnr") == "17.4 [n/a]"


def test_the_notes_say_what_the_cells_show():
    rows = summarize([RunRecord("k", "tv", "r", {"alpha": 0.0}, {}, 0, {"psnr": v}) for v in (1.0, 2.0)],
                     ["alpha"], ["psnr"])
    notes = " ".join(table_notes(rows))
    assert "95 % confidence interval" in notes and "from n = 3" in notes and "standard deviation" not in notes
    spread = " ".join(table_notes([{"x": 0.5, "x_std": 0.1}]))
    assert "standard deviation" in spread and "confidence interval" not in spread


def test_the_study_report_says_what_its_table_shows(template):
    html = (template / "report.html").read_text()
    assert "Mean ± standard deviation" not in html  # the table shows intervals, not spreads
    assert "95 % confidence interval" in html and "from n = 3" in html


# ------------------------------------------------------------------- 11: duplicate grid values

@pytest.mark.parametrize("grid, shown", [
    ("attack.tv=1,1.0", "1 and 1.0"),
    ("attack.tv='1e-3',0.001", "'1e-3' and 0.001"),
    ("attack.tv=0.5,0.1,'5e-1'", "0.5 and '5e-1'"),
])
def test_grid_values_that_validate_to_the_same_setting_are_refused(grid, shown, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--set", "model.name=lenet", "--set", "data.image_size=8", "--set", "attack.iterations=2"]
    code, _, err = fedleak(monkeypatch, capsys, "sweep", "-q", "--grid", grid, "--images", "0", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--grid attack.tv: the values {shown} are the same setting" in err
    assert not any(tmp_path.iterdir())  # refused before any folder


def test_distinct_grid_values_pass():
    from fedleak.studies.grid_sweep import parse_grid

    base = {"model": {"name": "lenet"}}
    assert parse_grid(["attack.tv=1e-4,1e-3", "client.defense=none;topk:sparsity=0.5"], base) == {
        "attack.tv": [1e-4, 1e-3], "client.defense": ["none", "topk:sparsity=0.5"]}
    assert parse_grid(["attack.tv=1,1.0"]) == {"attack.tv": [1, 1.0]}  # no base: the syntax alone
