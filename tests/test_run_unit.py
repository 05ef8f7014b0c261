"""The run unit: a picklable RunSpec executed into an Outcome, keys that name the data by identity,
failed runs recorded and retried, old databases adopted — on the local backend."""

from __future__ import annotations

import json
import pickle
import shutil
import sqlite3
import time

import pytest

from fedleak.config import build_config
from fedleak.errors import ConfigError, DataError, FedleakError
from fedleak.pipeline import run
from fedleak.run_unit import RUN_KINDS, RunSpec, attempt, execute
from fedleak.store import Claim, Failure, Owner, ResultsDB, RunRecord, run_key
from fedleak.studies import build_study
from tests.studying import run_study
from fedleak.studies.backends import LocalBackend, make_backend
from fedleak.studies.base import study_of
from fedleak.studies.planning import plan
from fedleak.studies.reading import load_study
from tests.test_cli import fedleak

TINY = ["image_size=8", "model=lenet", "width=1.0", "attack.iterations=2"]


def tv(root, alphas: str = "[0.0, 0.1]", images: str = "[0]", *more: str):
    return build_study("tv", "cpu", overrides=[f"root={root}", *TINY, f"alphas={alphas}", f"images={images}",
                                               "client_seed=7", *more])


def stamps(folder) -> dict[str, float]:
    with sqlite3.connect(folder / "results.sqlite") as conn:
        return dict(conn.execute("SELECT key, finished FROM runs").fetchall())


def test_a_spec_pickles_and_executes_to_what_the_pipeline_gives(cifar_root):
    spec = plan(tv(cifar_root))[0].spec
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and again.key == spec.key
    outcome = execute(again, study=study_of(again))
    direct = run(spec.run_config())
    assert outcome.ok and outcome.key == spec.key
    assert outcome.metrics["psnr"] == direct.metrics()["psnr"]  # execute wires nothing of its own
    assert sorted(outcome.artifacts) == ["original-0.png", "reconstruction-0.png"]
    assert all(data.startswith(b"\x89PNG") for data in outcome.artifacts.values())
    assert outcome.metrics["dataset"] == {"name": "cifar10", "split": "test", "image_size": 8, "channels": None,
                                          "options": {}, "content": outcome.metrics["dataset"]["content"]}


def test_keys_name_the_data_by_identity_not_by_where_it_lies(cifar_root, tmp_path):
    here = plan(tv(cifar_root))
    moved = plan(tv(tmp_path / "elsewhere"))
    assert [p.key for p in here] == [p.key for p in moved]
    assert [p.key for p in here] != [p.key for p in plan(tv(cifar_root, images="[1]"))]
    other_size = plan(build_study("tv", "cpu", overrides=[f"root={cifar_root}", *TINY, "alphas=[0.0, 0.1]",
                                                          "images=[0]", "client_seed=7", "image_size=16"]))
    assert [p.key for p in here] != [p.key for p in other_size]  # the identity does count
    assert "root" not in json.dumps(here[0].spec.dataset)


def test_moving_the_data_redoes_nothing(cifar_root, tmp_path):
    out = tmp_path / "st"
    run_study(tv(cifar_root), "cpu", out, progress=False)
    before = stamps(out)
    moved = tmp_path / "moved"
    shutil.copytree(cifar_root / "cifar-10-batches-py", moved / "cifar-10-batches-py")
    again = run_study(tv(moved), "cpu", out, progress=False)  # the same grid, its data somewhere else
    assert (again.ran, again.skipped) == (0, 2) and stamps(out) == before
    assert json.loads((out / "study.json").read_text())["settings"]["root"] == str(moved)


def test_databases_keyed_with_the_data_root_are_adopted(cifar_root, tmp_path):
    out = tmp_path / "st"
    study = tv(cifar_root)
    run_study(study, "cpu", out, progress=False)
    with ResultsDB(out / "results.sqlite") as db:  # rewrite it as fedleak wrote it before: root in the key
        old = {}
        for r in db.records():
            p = next(q for q in plan(study) if q.key == r.key)
            legacy = run_key("tv", {"kind": "attack", "config": p.spec.config, "extra": {}})
            (out / "runs" / r.key).rename(out / "runs" / legacy)
            db.conn.execute("UPDATE runs SET key = ?, artifacts = ? WHERE key = ?",
                            (legacy, json.dumps({k: v.replace(r.key, legacy) for k, v in r.artifacts.items()}), r.key))
            old[p.key] = r.finished
    assert len(load_study(out)[3]) == 2  # read as it is (fedleak report) …
    again = run_study(study, "cpu", out, progress=False)  # … and adopted when the study runs again
    assert (again.ran, again.skipped) == (0, 2)
    assert stamps(out) == old  # the same rows, under the keys they have now
    with ResultsDB(out / "results.sqlite") as db:
        for r in db.records():
            assert all((out / path).is_file() and r.key in path for path in r.artifacts.values())


def test_a_run_that_raises_is_recorded_and_the_next_invocation_retries_it(cifar_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "st"
    study = tv(cifar_root, "[0.0, 0.1, 0.2]")
    real = RUN_KINDS.get("attack")
    broken = {"alpha=0.1/image=0/seed=0"}

    def flaky(study, spec, *args):
        if spec.name in broken:
            raise DataError(f"image 0 of {spec.name} is unreadable")
        return real(study, spec, *args)

    monkeypatch.setitem(RUN_KINDS._entries, "attack", flaky)
    first = run_study(study, "cpu", out, progress=False)
    assert (first.ran, len(first.failed)) == (2, 1)
    assert first.failed[0].error == "image 0 of alpha=0.1/image=0/seed=0 is unreadable"
    finished = stamps(out)
    with ResultsDB(out / "results.sqlite") as db:
        [failure] = db.failures()
    assert (failure.name, failure.attempts) == ("alpha=0.1/image=0/seed=0", 1)
    assert "1 of 3 runs" not in (out / "report.html").read_text() and "2 of 3 runs" in (out / "report.html").read_text()
    code, stdout, _ = fedleak(monkeypatch, capsys, "runs", "list", str(out), "--failed")
    assert code == 0 and "alpha=0.1/image=0/seed=0" in stdout and "unreadable" in stdout
    code, stdout, _ = fedleak(monkeypatch, capsys, "runs", "export", str(out), "--json")
    exported = json.loads(stdout)
    assert code == 0 and len(exported["runs"]) == 2 and exported["failed"][0]["attempts"] == 1

    second = run_study(study, "cpu", out, progress=False)  # still broken: tried again, counted
    assert (second.ran, len(second.failed), second.failed[0].attempts) == (0, 1, 2)
    broken.clear()
    third = run_study(study, "cpu", out, progress=False)  # fixed: the retry finishes it, nothing else redone
    assert (third.ran, third.skipped, third.failed) == (1, 2, [])
    now = stamps(out)
    assert len(now) == 3 and all(now[k] == t for k, t in finished.items())
    with ResultsDB(out / "results.sqlite") as db:
        assert db.failures() == []


def test_the_study_command_reports_failed_runs_in_one_line(cifar_root, tmp_path, monkeypatch, capsys):
    real = RUN_KINDS.get("attack")

    def broken(study, spec, *args):
        if "alpha=0.1" in spec.name:
            raise RuntimeError("boom")
        return real(study, spec, *args)

    monkeypatch.setitem(RUN_KINDS._entries, "attack", broken)
    out = tmp_path / "st"
    code, stdout, err = fedleak(monkeypatch, capsys, "study", "tv", "-q", "--out", str(out),
                                *[a for o in [f"root={cifar_root}", *TINY, "alphas=[0.0, 0.1]", "images=[0]"]
                                  for a in ("--set", o)])
    assert code == 2 and "1 runs done, 0 already there, 1 failed" in stdout
    assert err.strip().splitlines()[-1] == (
        f"fedleak: error: 1 run failed (first: alpha=0.1/image=0/seed=0: RuntimeError: boom); "
        f"`fedleak runs list {out} --failed` lists them, running the study again retries them")


def test_an_error_is_one_line_in_the_outcome(cifar_root):
    spec = plan(tv(cifar_root, images="[12]"))[0].spec  # the test split holds 10 images
    outcome = attempt(spec, study=study_of(spec))
    assert not outcome.ok and outcome.error == "index 12 is out of range for cifar10 (0 to 9)"
    with pytest.raises(DataError):
        execute(spec, study=study_of(spec))


def test_failures_are_not_retried_by_the_invocation_that_saw_them(tmp_path):
    with ResultsDB(tmp_path / "r.sqlite") as db:
        me = Owner.me()
        assert db.claim("k", me) is Claim.MINE
        db.fail(Failure("k", "tv", "k", {}, {}, "boom"), me)
        assert db.claim("k", me) is Claim.FAILED  # not again in this invocation …
        time.sleep(0.01)
        later = Owner.me()
        assert db.claim("k", later) is Claim.MINE  # … the next one retries it
        db.finish(RunRecord("k", "tv", "k", {}, {}, 0, {}), later)
        assert db.failures() == [] and db.claim("k", later) is Claim.DONE


def test_old_databases_without_failures_are_read(tmp_path):
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as conn:  # a database as fedleak made it before failures existed
        conn.executescript("""CREATE TABLE runs (key TEXT PRIMARY KEY, study TEXT NOT NULL, name TEXT NOT NULL,
            params TEXT NOT NULL, config TEXT NOT NULL, seed INTEGER NOT NULL, metrics TEXT NOT NULL,
            artifacts TEXT NOT NULL, seconds REAL NOT NULL, finished REAL NOT NULL);
            CREATE TABLE claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL,
            pid INTEGER NOT NULL, since REAL NOT NULL);""")
        conn.execute("INSERT INTO runs VALUES ('a', 'tv', 'n', '{}', '{}', 0, '{}', '{}', 1.0, 2.0)")
    with ResultsDB(path, create=False) as db:
        assert db.failures() == [] and len(db.records()) == 1
    with ResultsDB(path) as db:  # opened for writing, it gains the table
        assert db.failures() == [] and db.claim("b", Owner.me()) is Claim.MINE


def test_fl_training_goes_through_the_run_unit(cifar_root):
    study = build_study("dp-tradeoff", "cpu", overrides=[f"root={cifar_root}", *TINY, "images=[0]", "snrs=[0]",
                                                         "train_images=10", "test_images=5", "fl_clients=2",
                                                         "rounds=1", "fl_batch_size=5", "model_options={}"])
    [train] = [p.spec for p in plan(study) if p.spec.kind == "fl-train"]
    shipped = pickle.loads(pickle.dumps(train))
    outcome = execute(shipped, study=study_of(shipped))
    assert outcome.ok and 0 <= outcome.metrics["test_accuracy"] <= 1 and outcome.artifacts == {}
    assert outcome.metrics["defense"] == "noise:snr_db=0"


def test_backend_options_are_checked():
    assert isinstance(make_backend("local"), LocalBackend)
    with pytest.raises(ConfigError, match="--address apply only to --backend ray"):
        make_backend("local", address="auto")
    with pytest.raises(ConfigError, match="unknown backend 'dask'"):
        make_backend("dask")
    with pytest.raises(ConfigError, match="backend.gpus_per_run"):
        make_backend("ray", gpus_per_run=-1)


def test_a_bare_spec_runs_without_a_study():
    config = build_config(overrides=["model.name=lenet", "data.image_size=8", "attack.iterations=1"])
    outcome = execute(RunSpec(config=config.model_dump(mode="json")))
    assert outcome.ok and "psnr" in outcome.metrics


class OutOfOrder(LocalBackend):
    """Holds up to ``capacity`` runs and finishes the latest first, recording how many were in flight."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.most = capacity, 0

    def submit(self, spec, detail=False):
        ticket = super().submit(spec, detail)
        self.most = max(self.most, len(self._queue))
        return ticket

    def collect(self, timeout=None):
        if not self._queue:
            return []
        self._queue.rotate(1)  # the newest first
        return super().collect(timeout)


def test_outcomes_are_committed_as_they_arrive_and_in_flight_work_is_bounded(cifar_root, tmp_path):
    study = tv(cifar_root, "[0.0, 0.1, 0.2]", "[0, 1]")
    backend = OutOfOrder(capacity=2)
    outcome = run_study(study, "cpu", tmp_path / "st", progress=False, backend=backend)
    assert (outcome.ran, backend.most) == (6, 2)
    table = json.loads((tmp_path / "st" / "table.json").read_text())
    assert [r["alpha"] for r in table] == [0.0, 0.1, 0.2]
    local = run_study(study, "cpu", tmp_path / "local", progress=False)
    in_order = json.loads((tmp_path / "local" / "table.json").read_text())

    def what(rows):
        return [{k: v for k, v in r.items() if not k.startswith("attack_seconds")} for r in rows]

    assert local.ran == 6 and what(table) == what(in_order)  # rows in plan order, whatever the arrival order


def test_a_new_study_whose_every_run_fails_leaves_no_folder(cifar_root, tmp_path, monkeypatch):
    study = tv(cifar_root, "[0.0, 0.1]", images="[12]")  # the test split holds 10 images
    monkeypatch.setattr("fedleak.studies.runner.preflight", lambda *args: None)  # which it would refuse first
    with pytest.raises(FedleakError, match=r"every run failed, so .* was not kept \(first: alpha=0/image=12"):
        run_study(study, "cpu", tmp_path / "st", progress=False)
    assert not (tmp_path / "st").exists()
    (tmp_path / "given").mkdir()  # a folder that was there before keeps its record of the failures
    kept = run_study(study, "cpu", tmp_path / "given", progress=False)
    assert len(kept.failed) == 2
    with ResultsDB(tmp_path / "given" / "results.sqlite") as db:
        assert len(db.failures()) == 2
