"""Study folders written by an earlier fedleak resume without redoing a run (issue 22: run keys, study
folders, sweep folder names and derived client seeds must not change when the code is refactored).

``tests/data/legacy_study/`` holds four folders written by the code of commit f0e37d1 (before the
run unit left :mod:`fedleak.pipeline`): a ``fedleak sweep`` and the ``tv``, ``dp-tradeoff`` (with
its ``fl-train`` runs) and ``secure-aggregation`` (``attack-sample`` runs with a seed scope and a
``client_seed`` setting) studies, each of two tiny runs on the ``samples`` photographs, made with
``--root`` pointing at a folder that no longer exists and ``--device cpu``. Only ``study.json``,
``results.sqlite`` (compacted to 512-byte pages) and ``client-secret`` are kept: no images, no report.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from fedleak.store import ResultsDB
from tests.test_cli import fedleak

LEGACY = Path(__file__).parent / "data" / "legacy_study"
NAMED = ["tv", "dp-tradeoff", "secure-aggregation"]
SWEEP = ["--grid", "attack.tv=0.001,0.01", "--images", "0", "--set", "data.name=samples", "--set",
         "data.image_size=8", "--set", "model.name=lenet", "--set", "attack.iterations=2"]
SWEEP_FOLDER = "sweep-7d5be430"  # the default folder the code of f0e37d1 names this sweep


def copied(name: str, to: Path) -> Path:
    folder = to / name
    shutil.copytree(LEGACY / name, folder)
    os.chmod(folder / "client-secret", 0o600)
    return folder


def stored_keys(folder: Path) -> list[str]:
    with ResultsDB(folder / "results.sqlite", create=False) as db:
        return sorted(r.key for r in db.records())


@pytest.mark.parametrize("name", NAMED)
def test_a_named_study_resumes_without_redoing_a_run(name, tmp_path, monkeypatch, capsys):
    folder = copied(name, tmp_path)
    meta = json.loads((folder / "study.json").read_text())
    settings = {k: v for k, v in meta["settings"].items() if k not in ("root", "device")}
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump(settings))
    (tmp_path / "data").mkdir()  # the data lies elsewhere now, and the device is left to choose
    keys = stored_keys(folder)
    code, out, err = fedleak(monkeypatch, capsys, "study", name, "--preset", meta["preset"], "--config",
                             str(tmp_path / "settings.yaml"), "--root", str(tmp_path / "data"), "--out", str(folder),
                             "-q")
    assert code == 0, err
    assert f"{name}: 0 runs done, {len(keys)} already there" in out
    assert stored_keys(folder) == keys
    code, out, err = fedleak(monkeypatch, capsys, "report", str(folder))
    assert code == 0, err
    assert (folder / "report.html").is_file() and f"{len(keys)} of {len(keys)} runs finished" in (
        folder / "report.html").read_text()


def test_a_sweep_finds_its_folder_and_resumes_without_redoing_a_run(tmp_path, monkeypatch, capsys):
    folder = copied("sweep", tmp_path / "studies")
    folder = folder.rename(folder.parent / SWEEP_FOLDER)  # where `fedleak sweep` without --out looks
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    code, out, err = fedleak(monkeypatch, capsys, "sweep", *SWEEP, "--root", str(tmp_path / "data"), "-q")
    assert code == 0, err
    assert "sweep: 0 runs done, 2 already there" in out and SWEEP_FOLDER in out
    code, _, err = fedleak(monkeypatch, capsys, "report", str(folder))
    assert code == 0, err
    assert (folder / "table.csv").read_text().count("\n") == 3  # the header and one row per grid cell


@pytest.mark.parametrize("name", [*NAMED, "sweep"])
def test_the_derived_client_seeds_are_the_recorded_ones(name, tmp_path):
    from fedleak.studies.reading import load_study
    from fedleak.studies.secret import read_secret, seed_runs

    folder = copied(name, tmp_path)
    study, _, planned, records = load_study(folder)
    assert len(records) == len(planned) >= 2
    seed_runs(study, planned, read_secret(folder))
    recorded = {r.key: r.config["client"]["seed"] for r in records}
    assert {p.key: p.spec.client_seed for p in planned} == recorded
