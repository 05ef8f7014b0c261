"""`fedleak sweep`: a grid over any config keys × images × seeds, as one study whose table is what the
same runs as separate `fedleak attack` calls give."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from fedleak.errors import ConfigError
from fedleak.store import ResultsDB, RunRecord
from fedleak.studies.aggregate import quality, summarize
from fedleak.studies.grid_sweep import build_sweep, parse_grid, parse_indices
from fedleak.studies.runner import plan
from tests.test_cli import fedleak

BASE = ["model.name=lenet", "data.image_size=8", "attack.iterations=3"]


def sets(root: Path) -> list[str]:
    return [a for o in [f"data.root={root}", "data.name=cifar10", *BASE] for a in ("--set", o)]


def test_grid_syntax():
    assert parse_grid(["attack.tv=1e-3,1e-2"]) == {"attack.tv": [1e-3, 1e-2]}
    assert parse_grid(["client.defense=none,topk:sparsity=0.9"]) == {"client.defense": ["none", "topk:sparsity=0.9"]}
    assert parse_grid(["client.defense=none;topk:sparsity=0.9,scope=global"]) == {
        "client.defense": ["none", "topk:sparsity=0.9,scope=global"]}
    assert parse_grid(['client.defense=[sign, "topk:sparsity=0.9,scope=global"]']) == {
        "client.defense": ["sign", "topk:sparsity=0.9,scope=global"]}
    assert parse_grid(["model.options=[{norm: none}, {norm: batch}]", "seedless=null,1"]) == {
        "model.options": [{"norm": "none"}, {"norm": "batch"}], "seedless": [None, 1]}
    assert parse_indices("0-3,7", "images") == [0, 1, 2, 3, 7] and parse_indices("5", "seeds") == [5]


@pytest.mark.parametrize("grid, images, message", [
    (["attack.tv"], None, "malformed --grid 'attack.tv'"),
    (["attack.tv=1", "attack.tv=2"], None, "--grid attack.tv is given twice"),
    (["attack.tv=1,1"], None, "repeats the value '1'"),
    (["seed=0,1"], None, "use --seeds"),
    (["data.index=0,1"], None, "use --images"),
    (["client.defense=[a"], None, "is not valid YAML"),
    (["attack.tv=0,1"], "3-1", "is not a range"),
    (["attack.tv=0,1"], "a", "expected integers and ranges"),
])
def test_bad_grids_are_one_clear_error(grid, images, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        build_sweep(grid, images)


def test_cells_images_and_batches(tmp_path):
    study = build_sweep(["client.batch_size=1,2", "attack.tv=0.0,0.1"], images="0,4", seeds="0,1",
                        overrides=BASE, client_seed=3)
    planned = plan(study)
    assert len(planned) == 2 * 2 * 2 * 2
    first = planned[0]
    assert first.run.name == "client.batch_size=1/attack.tv=0/image=0/seed=0"
    assert first.run.params == {"client.batch_size": 1, "attack.tv": 0.0, "image": 0, "seed": 0}
    pairs = {(p.config.client.batch_size, tuple(p.config.data.index)) for p in planned}
    assert pairs == {(1, (0,)), (1, (4,)), (2, (0, 1)), (2, (4, 5))}  # a block of B images from each index
    from fedleak.studies.secret import seed_runs

    assert {p.config.client.seed for p in planned} == {None}  # the plan holds no client seed: the folder's secret
    seed_runs(study, planned, b"\x07" * 32)  # gives them as the runs execute
    seeds = [p.spec.client_seed for p in planned]
    assert None not in seeds and len(set(seeds)) == len(seeds)  # each run its own private client seed
    again = plan(study)
    seed_runs(study, again, b"\x07" * 32)
    assert [p.spec.client_seed for p in again] == seeds  # reproducibly


def test_a_sweep_table_equals_the_same_attacks_run_one_by_one(tmp_path, cifar_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    monkeypatch.delenv("FEDLEAK_LPIPS", raising=False)
    grid = ["--grid", "attack.tv=0.0,0.1", "--grid", "client.defense=none;topk:sparsity=0.5,scope=global"]
    args = ["sweep", "-q", *grid, "--images", "0-1", "--client-seed", "5", *sets(cifar_root)]
    code, stdout, err = fedleak(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "8 runs done, 0 already there" in stdout
    [folder] = list((tmp_path / "studies").iterdir())
    assert folder.name.startswith("sweep-")
    table = json.loads((folder / "table.json").read_text())
    assert [(r["attack.tv"], r["client.defense"], r["runs"]) for r in table] == [
        (0.0, "none", 2), (0.0, "topk:sparsity=0.5,scope=global", 2),
        (0.1, "none", 2), (0.1, "topk:sparsity=0.5,scope=global", 2)]

    with ResultsDB(folder / "results.sqlite") as db:
        records = db.records()
    alone = []
    for i, r in enumerate(records):  # the same runs as separate `fedleak attack` calls
        run_dir = tmp_path / "attacks" / str(i)
        code, _, err = fedleak(monkeypatch, capsys, "attack", "-q", "--out", str(run_dir), *sets(cifar_root),
                               "--set", f"attack.tv={r.params['attack.tv']}",
                               "--set", f"client.defense={r.params['client.defense']}",
                               "--index", str(r.params["image"]), "--seed", str(r.params["seed"]),
                               "--set", f"client.seed={r.metrics['client_seed']}")
        assert code == 0, err
        metrics = json.loads((run_dir / "metrics.json").read_text())
        alone.append(RunRecord(str(i), "attack", "", dict(r.params), {}, 0, metrics))
    expected = summarize(alone, ["attack.tv", "client.defense"], quality(alone))
    timing = ("attack_seconds",)
    for got, want in zip(table, expected, strict=True):
        for key, value in want.items():
            if not key.startswith(timing):
                assert got[key] == pytest.approx(value, nan_ok=True), key

    again = fedleak(monkeypatch, capsys, *args)  # the same command resumes the same folder
    assert again[0] == 0 and "0 runs done, 8 already there" in again[1]
    code, stdout, _ = fedleak(monkeypatch, capsys, "runs", "export", str(folder), "--csv")
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert code == 0 and len(rows) == 8 and {r["attack.tv"] for r in rows} == {"0.0", "0.1"}
    (folder / "report.html").unlink()
    code, _, err = fedleak(monkeypatch, capsys, "report", str(folder))
    assert code == 0, err
    html = (folder / "report.html").read_text()
    assert "psnr-by-cell.png" in html and "8 of 8 runs" in html and "95 % confidence interval" in html


@pytest.mark.parametrize("args, message", [
    (["--grid", "attack.tv=1,2", "--set", "model.name=nonet"], "unknown model 'nonet'"),
    (["--grid", "client.defense=bogus"], "unknown defense"),
    (["--grid", "attack.tvv=1"], "tvv"),
    (["--grid", "seed=1"], "use --seeds"),
])
def test_sweep_bad_input_leaves_no_folder(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = fedleak(monkeypatch, capsys, "sweep", "-q", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_a_sweep_over_the_study_setting_kinds_records_its_grid(tmp_path, cifar_root):
    from tests.studying import run_study

    study = build_sweep(["model.options=[{norm: none}, {norm: group}]"], images="0",
                        overrides=[f"data.root={cifar_root}", "data.name=cifar10", "model.name=convnet",
                                   "model.width=0.25", "data.image_size=16", "attack.iterations=1"])
    out = tmp_path / "sw"
    assert run_study(study, "custom", out, progress=False).failed == []
    with sqlite3.connect(out / "results.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    table = json.loads((out / "table.json").read_text())
    assert [r["model.options"] for r in table] == ['{"norm": "none"}', '{"norm": "group"}']


def test_the_same_sweep_on_moved_data_resumes_its_folder(tmp_path, cifar_root, monkeypatch, capsys):
    import shutil

    monkeypatch.chdir(tmp_path)
    args = ["sweep", "-q", "--grid", "attack.tv=0.0,0.1", "--images", "0", "--set", "data.name=cifar10", *[
        a for o in BASE for a in ("--set", o)]]
    code, stdout, err = fedleak(monkeypatch, capsys, *args, "--root", str(cifar_root))
    assert code == 0 and "2 runs done" in stdout, err
    moved = tmp_path / "moved"
    shutil.copytree(cifar_root / "cifar-10-batches-py", moved / "cifar-10-batches-py")
    code, stdout, err = fedleak(monkeypatch, capsys, *args, "--root", str(moved))
    assert code == 0 and "0 runs done, 2 already there" in stdout, err
    [folder] = list((tmp_path / "studies").iterdir())
    assert json.loads((folder / "study.json").read_text())["settings"]["base"]["data"]["root"] == str(moved)
