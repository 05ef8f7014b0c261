"""Study folders: one grid per folder (--force), claims shared by several processes, and kill/resume."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedleak.store import Claim, Owner, ResultsDB, RunRecord
from fedleak.studies import build_study
from tests.studying import run_study
from fedleak.studies import runner
from fedleak.studies.runner import plan
from tests.test_cli import fedleak

SMALL = ["image_size=8", "model=lenet", "width=1.0", "images=[0]"]
RUNS = 10  # grid size of the multi-process tests: enough that a process is killed (or joined) mid-grid
ALPHAS = "[" + ", ".join(f"{a / 10}" for a in range(RUNS)) + "]"


def settings(root: Path, alphas: str, iterations: int = 2) -> list[str]:
    return [f"root={root}", *SMALL, f"alphas={alphas}", f"attack.iterations={iterations}"]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def rows(folder: Path) -> dict[str, float]:
    """key → finished timestamp of every committed run (read-only, as another process would)."""
    path = folder / "results.sqlite"
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return dict(conn.execute("SELECT key, finished FROM runs").fetchall())
    except sqlite3.OperationalError:  # the first process has not made its tables yet
        return {}


def planned_keys(overrides: list[str]) -> set[str]:
    return {p.key for p in plan(build_study("tv", "cpu", overrides=overrides))}


# ------------------------------------------------------------------ one grid per folder (12.14)

def test_rerun_with_other_settings_is_refused_naming_the_setting(tmp_path, cifar_root, monkeypatch, capsys):
    out = tmp_path / "st"
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "-q", "--out", str(out),
                           *sets(settings(cifar_root, "[0.0, 0.1]")))
    assert code == 0, err
    meta, before = (out / "study.json").read_text(), rows(out)
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "-q", "--out", str(out),
                           *sets(settings(cifar_root, "[0.0, 0.2]")))
    assert code == 2 and len(err.splitlines()) == 1
    assert "settings.alphas is [0.0, 0.1] there, [0.0, 0.2] now" in err and "--force" in err
    assert (out / "study.json").read_text() == meta and rows(out) == before
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "-q", "--preset", "full", "--out", str(out),
                           *sets(settings(cifar_root, "[0.0, 0.1]")))
    assert code == 2 and "preset is 'cpu' there, 'full' now" in err


def test_force_takes_the_new_settings_and_keeps_only_their_runs(tmp_path, cifar_root, monkeypatch, capsys):
    out = tmp_path / "st"
    old = settings(cifar_root, "[0.0, 0.1]")
    assert fedleak(monkeypatch, capsys, "study", "tv", "-q", "--out", str(out), *sets(old))[0] == 0
    before = rows(out)
    new = settings(cifar_root, "[0.1, 0.2]")
    code, stdout, err = fedleak(monkeypatch, capsys, "study", "tv", "-q", "--force", "--out", str(out), *sets(new))
    assert code == 0, err
    assert "1 runs done, 1 already there" in stdout
    after = rows(out)
    assert set(after) == planned_keys(new)  # the dropped grid's run is gone from the database …
    shared = planned_keys(old) & planned_keys(new)
    assert len(shared) == 1 and all(after[k] == before[k] for k in shared)  # … the shared one kept, not redone
    gone = planned_keys(old) - planned_keys(new)
    assert not any((out / "runs" / k).exists() for k in gone)  # … with its images
    assert json.loads((out / "study.json").read_text())["settings"]["alphas"] == [0.1, 0.2]
    assert "2 of 2 runs" in (out / "report.html").read_text()


def test_a_folder_that_is_no_study_is_refused(tmp_path, cifar_root, monkeypatch, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("do not touch")
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "-q", "--out", str(tmp_path / "mine"),
                           *sets(settings(cifar_root, "[0.0]")))
    assert code == 2 and "holds no study.json" in err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]


# ------------------------------------------------------ a failed first attempt leaves no folder

def test_a_study_that_fails_removes_the_folder_it_made_but_keeps_committed_runs(tmp_path, cifar_root, monkeypatch):
    study = build_study("tv", "cpu", overrides=settings(cifar_root, "[0.0, 0.1]"))
    real = runner.RUN_KINDS.get("attack")
    calls = []

    def fails_at(n):
        def run(*args):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt  # a run that raises is a failed run now; an interrupt still ends the study
            return real(*args)
        return run

    monkeypatch.setitem(runner.RUN_KINDS._entries, "attack", fails_at(1))
    with pytest.raises(KeyboardInterrupt):
        run_study(study, "cpu", tmp_path / "first", progress=False)
    assert not (tmp_path / "first").exists()
    (tmp_path / "given").mkdir()  # a folder the user made stays, empty or not
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run_study(study, "cpu", tmp_path / "given", progress=False)
    assert (tmp_path / "given").is_dir()
    calls.clear()
    monkeypatch.setitem(runner.RUN_KINDS._entries, "attack", fails_at(2))
    with pytest.raises(KeyboardInterrupt):
        run_study(study, "cpu", tmp_path / "second", progress=False)
    assert len(rows(tmp_path / "second")) == 1  # the committed run is kept


def test_reporting_a_hostile_study_folder_runs_no_code(tmp_path, cifar_root, monkeypatch, capsys):
    out = tmp_path / "st"
    run_study(build_study("tv", "cpu", overrides=settings(cifar_root, "[0.0]")), "cpu", out, progress=False)
    meta = json.loads((out / "study.json").read_text())
    marker = tmp_path / "PWNED"
    meta["settings"] |= {"model": "os:system", "model_options": {"command": f"touch {marker}"}}
    (out / "study.json").write_text(json.dumps(meta))
    code, _, err = fedleak(monkeypatch, capsys, "report", str(out))
    assert not marker.exists() and "Traceback" not in err and code in (0, 2)


# ----------------------------------------------------------------------- claims (13.3)

@pytest.fixture
def db(tmp_path):
    with ResultsDB(tmp_path / "results.sqlite") as db:
        yield db


def record(key: str) -> RunRecord:
    return RunRecord(key, "tv", key, {}, {}, 0, {})


def test_a_live_owners_claim_is_respected_a_dead_ones_taken_over(db):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = Owner(socket.gethostname(), sleeper.pid, "other")
        me = Owner.me()
        assert db.claim("k", other) is Claim.MINE
        assert db.claim("k", me) is Claim.BUSY and db.busy_elsewhere(me) == 1
        assert db.claim("k", me, stale_after=0) is Claim.MINE  # too old: taken over
        assert db.claim("k", other) is Claim.BUSY
        assert db.claim("k2", other) is Claim.MINE
    finally:
        sleeper.kill()
        sleeper.wait()
    assert db.claim("k", other) is Claim.BUSY  # mine, and I am alive
    assert db.claim("k2", me) is Claim.MINE  # the other owner is dead now: its claim goes
    db.finish(record("k2"), me)
    assert db.claim("k2", other) is Claim.DONE and db.busy_elsewhere(other) == 1  # only "k", mine, is left


def test_another_hosts_claim_waits_for_its_age(db):
    remote, me = Owner("elsewhere.example", 1, "remote"), Owner.me()
    assert db.claim("k", remote) is Claim.MINE
    assert db.claim("k", me) is Claim.BUSY  # its pid cannot be checked from here
    assert db.claim("k", me, stale_after=0) is Claim.MINE
    db.release(me)
    assert db.claim("k", remote) is Claim.MINE


# ------------------------------------------------------- processes: sharing, killing, resuming

def start_study(out: Path, overrides: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedleak.cli", "study", "tv", "-q", "--out", str(out),
                             *sets(overrides)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "TORCH_HOME": str(cwd / "no-weights")})


def wait_until(condition, procs: list[subprocess.Popen], what: str) -> None:
    while not condition():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"study exited ({p.returncode}) before {what}: {p.stderr.read()[-2000:]!r}")
        time.sleep(0.02)


def test_two_processes_share_one_study_without_redoing_a_run(tmp_path, cifar_root):
    out = tmp_path / "st"
    overrides = settings(cifar_root, ALPHAS, iterations=40)
    first, second = (start_study(out, overrides, tmp_path) for _ in range(2))  # both race for the grid
    results = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [r[1][-2000:] for r in results]
    counts = [re.search(rb"(\d+) runs done, (\d+) already there(?:, (\d+) by another process)?", r[0]).groups()
              for r in results]
    ran = [int(c[0]) for c in counts]
    assert sum(ran) == RUNS  # every run computed once, by one of them
    assert all(int(c[0]) + int(c[1]) + int(c[2] or 0) == RUNS for c in counts)
    assert set(rows(out)) == planned_keys(overrides)
    assert f"{RUNS} of {RUNS} runs" in (out / "report.html").read_text()  # both waited for the whole grid


def test_two_kills_lose_no_run_and_resuming_redoes_none(tmp_path, cifar_root):
    out = tmp_path / "st"
    overrides = settings(cifar_root, ALPHAS, iterations=40)
    committed: dict[str, float] = {}
    for _ in range(2):
        proc = start_study(out, overrides, tmp_path)
        wait_until(lambda: len(rows(out)) > len(committed), [proc], "a new run was committed")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = rows(out)
        assert all(now[k] == t for k, t in committed.items())  # nothing committed before was lost or redone
        committed = now
    assert 2 <= len(committed) < RUNS
    outcome = run_study(build_study("tv", "cpu", overrides=overrides), "cpu", out, progress=False)
    final = rows(out)
    assert set(final) == planned_keys(overrides)  # every planned run, once (keys are unique)
    assert all(final[k] == t for k, t in committed.items())  # none recomputed
    assert (outcome.ran, outcome.skipped) == (RUNS - len(committed), len(committed))  # a dead owner's claim is no block


def test_atomically_written_files_get_the_usual_permissions(tmp_path, cifar_root):
    out = tmp_path / "st"
    run_study(build_study("tv", "cpu", overrides=settings(cifar_root, "[0.0]")), "cpu", out, progress=False)
    mask = os.umask(0)
    os.umask(mask)
    for path in (out / "study.json", out / "report.html", out / "figures", *(out / "runs").iterdir()):
        expected = (0o777 if path.is_dir() else 0o666) & ~mask  # not mkstemp's private 0600 / 0700
        assert path.stat().st_mode & 0o777 == expected, path


def test_a_new_study_folder_appears_with_its_settings_in_one_step(tmp_path):
    from fedleak.studies.folder import create, read_meta, study_meta

    meta = study_meta("tv", "cpu", {"alphas": [0.0]})
    assert create(tmp_path / "st", meta) and read_meta(tmp_path / "st") == meta
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "results.sqlite").write_text("another process was quicker")
    assert not create(tmp_path / "taken", meta)  # left as the other process made it
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["results.sqlite"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st", "taken"]  # no temporary sibling left
