"""The ray backend on a local Ray with 2 CPUs (one session for the module): the same metrics as the
local backend, failed runs recorded and retried, a SIGKILLed driver losing and redoing nothing, and
`fedleak study` / `fedleak sweep` with --backend ray."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fedleak.errors import ConfigError
from fedleak.studies import build_study
from tests.studying import run_study
from fedleak.studies.backends import LocalBackend, make_backend
from fedleak.studies.runner import plan
from fedleak.studies.secret import read_secret
from tests.test_cli import fedleak

ray = pytest.importorskip("ray")
from fedleak.integrations.ray import RayBackend  # noqa: E402  (needs Ray)

TINY = ["image_size=8", "model=lenet", "width=1.0"]
VOLATILE = ("seconds", "attack_seconds", "fl_seconds", "ran_on", "peak_memory")  # where, how long, how much memory: not what


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray (2 CPUs) for the module; its workers see no LPIPS weights, like the tests here."""
    no_weights = tmp_path_factory.mktemp("no-weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TORCH_HOME": str(no_weights)}})
    yield {"address": ray.get_runtime_context().gcs_address, "torch_home": no_weights}
    ray.shutdown()


@pytest.fixture
def same_env(cluster, monkeypatch):
    """The local side as the workers see it: one torch thread, the same (empty) weights folder."""
    monkeypatch.setenv("TORCH_HOME", str(cluster["torch_home"]))
    monkeypatch.delenv("FEDLEAK_LPIPS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tv(root: Path, alphas: str, images: str = "[0, 1]", iterations: int = 3):
    return build_study("tv", "cpu", overrides=[f"root={root}", *TINY, f"alphas={alphas}", f"images={images}",
                                               f"attack.iterations={iterations}", "client_seed=11"])


def records(folder: Path) -> dict[str, dict]:
    with sqlite3.connect(folder / "results.sqlite") as conn:
        rows = conn.execute("SELECT key, metrics, finished FROM runs").fetchall()
    return {k: {"metrics": json.loads(m), "finished": f} for k, m, f in rows}


def what(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in VOLATILE}


def test_ray_gives_the_same_metrics_as_local(cluster, same_env, tmp_path, cifar_root):
    study = tv(cifar_root, "[0.0, 0.1]")
    local = run_study(study, "cpu", tmp_path / "local", progress=False, backend=LocalBackend())
    remote = run_study(study, "cpu", tmp_path / "ray", progress=False, backend=RayBackend(),
                       client_secret=read_secret(tmp_path / "local"))  # the same client seeds
    assert (local.ran, remote.ran, remote.failed) == (4, 4, [])
    assert remote.backend.startswith("ray") and "2 runs at a time" in remote.backend
    here, there = records(tmp_path / "local"), records(tmp_path / "ray")
    assert set(here) == set(there)
    for key in here:
        assert what(there[key]["metrics"]) == what(here[key]["metrics"]), key
    assert {r["metrics"]["ran_on"]["pid"] for r in there.values()} != {os.getpid()}  # in Ray's workers
    tables = [json.loads((tmp_path / f / "table.json").read_text()) for f in ("local", "ray")]
    assert [{k: v for k, v in r.items() if not k.startswith("attack_seconds")} for r in tables[1]] == \
        [{k: v for k, v in r.items() if not k.startswith("attack_seconds")} for r in tables[0]]
    for name in ("original-0", "reconstruction-0"):  # the driver wrote the workers' images
        key = next(iter(there))
        with sqlite3.connect(tmp_path / "ray" / "results.sqlite") as conn:
            artifacts = json.loads(conn.execute("SELECT artifacts FROM runs WHERE key = ?", (key,)).fetchone()[0])
        assert (tmp_path / "ray" / artifacts[name]).read_bytes().startswith(b"\x89PNG")


def test_a_run_that_raises_on_a_worker_is_recorded_and_retried(cluster, tmp_path, cifar_root, monkeypatch):
    study = tv(cifar_root, "[0.0]", images="[0, 1, 12]")  # the test split holds 10 images: 12 fails
    out = tmp_path / "st"
    with monkeypatch.context() as m:  # the pre-run check would refuse image 12: let the worker find out
        m.setattr("fedleak.studies.runner.preflight", lambda *args: None)
        first = run_study(study, "cpu", out, progress=False, backend=RayBackend())
    assert first.ran == 2 and [f.name for f in first.failed] == ["alpha=0/image=12/seed=0"]
    assert first.failed[0].error == "index 12 is out of range for cifar10 (0 to 9)"
    done = {k: r["finished"] for k, r in records(out).items()}
    batch = cifar_root / "cifar-10-batches-py" / "test_batch"  # the data grows: the retry can succeed
    data = pickle.loads(batch.read_bytes())
    data[b"data"] = np.concatenate([data[b"data"]] * 2)
    data[b"labels"] = data[b"labels"] * 2
    data[b"filenames"] = data[b"filenames"] * 2
    batch.write_bytes(pickle.dumps(data, protocol=2))
    second = run_study(study, "cpu", out, progress=False, backend=RayBackend())
    assert (second.ran, second.skipped, second.failed) == (1, 2, [])
    now = records(out)
    assert len(now) == 3 and all(now[k]["finished"] == t for k, t in done.items())


def test_not_enough_resources_is_one_clear_error(cluster):
    with pytest.raises(ConfigError, match="has 2 CPUs and 0 GPUs, not enough for one run"):
        RayBackend(gpus_per_run=1).start(loader=None)
    backend = make_backend("ray", workers=1)
    backend.start(loader=None)
    assert backend.capacity == 1
    backend.close()
    assert ray.is_initialized()  # a session this process started itself is left running


def driver(out: Path, overrides: list[str], address: str, cwd: Path) -> subprocess.Popen:
    sets = [a for o in overrides for a in ("--set", o)]
    return subprocess.Popen([sys.executable, "-m", "fedleak.cli", "study", "tv", "-q", "--out", str(out),
                             "--backend", "ray", "--address", address, *sets], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow  # ~16 s: a second driver process and its Ray workers start
def test_a_sigkilled_driver_loses_nothing_and_a_rerun_redoes_nothing(cluster, tmp_path, cifar_root):
    alphas = "[" + ", ".join(f"{a / 10}" for a in range(6)) + "]"
    overrides = [f"root={cifar_root}", *TINY, f"alphas={alphas}", "images=[0]", "attack.iterations=150",
                 "client_seed=1"]
    out = tmp_path / "st"
    proc = driver(out, overrides, cluster["address"], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / "results.sqlite").exists() or not records_safely(out):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no run was committed in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    committed = {k: r["finished"] for k, r in records(out).items()}
    study = build_study("tv", "cpu", overrides=overrides)
    assert 1 <= len(committed) < 6
    outcome = run_study(study, "cpu", out, progress=False, backend=RayBackend())
    final = records(out)
    assert set(final) == {p.key for p in plan(study)}  # every planned run, once
    assert all(final[k]["finished"] == t for k, t in committed.items())  # none recomputed
    assert (outcome.ran, outcome.skipped) == (6 - len(committed), len(committed))


def records_safely(out: Path) -> dict:
    try:
        return records(out)
    except sqlite3.OperationalError:  # the driver has not made its tables yet
        return {}


def test_study_and_sweep_commands_run_on_ray(cluster, same_env, tmp_path, cifar_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = fedleak(monkeypatch, capsys, "study", "stacking", "-q", "--backend", "ray",
                                "--out", str(tmp_path / "stack"),
                                *[a for o in [f"root={cifar_root}", *TINY, "images=[0]", "batch_sizes=[1, 2]",
                                              "attack.iterations=2"] for a in ("--set", o)])
    assert code == 0, err
    assert "2 runs done" in stdout and "on ray" in stdout
    assert [r["batch_size"] for r in json.loads((tmp_path / "stack" / "table.json").read_text())] == [1, 2]
    code, stdout, err = fedleak(monkeypatch, capsys, "sweep", "-q", "--backend", "ray", "--out", str(tmp_path / "sw"),
                                "--grid", "attack.tv=0.0,0.1", "--images", "0-1", "--set", f"data.root={cifar_root}",
                                "--set", "data.name=cifar10", "--set", "model.name=lenet",
                                "--set", "data.image_size=8", "--set", "attack.iterations=2")
    assert code == 0, err
    assert "4 runs done" in stdout
    assert [r["runs"] for r in json.loads((tmp_path / "sw" / "table.json").read_text())] == [2, 2]
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "--backend", "local", "--gpus-per-run", "1")
    assert code == 2 and "--gpus-per-run apply only to --backend ray" in err


def test_an_unreachable_cluster_is_one_clear_error_at_once():
    from fedleak.errors import FedleakError
    from fedleak.integrations.ray import _check_reachable

    with pytest.raises(FedleakError, match="cannot reach the Ray cluster at '127.0.0.1:1'"):
        _check_reachable("127.0.0.1:1")  # checked before Ray, which would retry for minutes
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        _check_reachable("ray://host:port")
    _check_reachable("auto")  # Ray's own to resolve
