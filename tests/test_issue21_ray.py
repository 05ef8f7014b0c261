"""Issue 21, the Ray backend on a real cluster: data roots made absolute on the driver, a run whose
data is missing on its node retried on another (its failure naming the host), a capacity that follows
the cluster, `--address auto` without a cluster, no Ray for nothing to run, images out of range refused
before anything starts, the joined cluster named, and SIGTERM ending a study in one line.

Most of it runs against a fake Ray module (two fake nodes; the tasks execute here, through the real
task body :func:`fedleak.integrations.ray.run_task`), so no Ray starts; the SIGTERM test of a Ray
study is slow-marked."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedleak.errors import ConfigError, DataError, FedleakError
from fedleak.run_unit import Outcome
from fedleak.store import Failure, Owner, ResultsDB
from fedleak.studies import build_study
from tests.studying import run_study
from fedleak.studies.backends import LocalBackend
from fedleak.studies.runner import plan
from fedleak.studies.grid_sweep import build_sweep
from tests.test_cli import fedleak

ray = pytest.importorskip("ray")
import fedleak.integrations.ray as fray  # noqa: E402  (needs Ray)
from fedleak.integrations.ray import RayBackend, absolute_roots, run_task  # noqa: E402

TINY = ["image_size=8", "model=lenet", "width=1.0", "attack.iterations=2", "client_seed=3"]
NODE_A, NODE_B = "a" * 56, "b" * 56  # Ray node ids are 28 bytes in hex


class Ref:
    def __init__(self, value):
        self.value = value


class FakeRemote:
    def __init__(self, fake, fn, options):
        self.fake, self.fn, self.opts = fake, fn, options

    def options(self, **options):
        return FakeRemote(self.fake, self.fn, options)

    def remote(self, spec, *args):
        strategy = self.opts.get("scheduling_strategy")
        node = strategy.node_id if strategy else self.fake.node_list[0]["NodeID"]  # Ray's pick: node A
        self.fake.sent.append((node, spec))
        if node in self.fake.missing_on:  # this node has no folder where the run's data lies
            data = {**spec.config["data"], "root": str(self.fake.tmp / "not-on-this-node")}
            spec = dataclasses.replace(spec, config={**spec.config, "data": data})
        outcome, _, local = self.fn(spec, *args)
        outcome.host = f"host-{node[0]}"
        return Ref((outcome, node, local))


class FakeRay:
    """Just what the backend calls, over two nodes of 1 CPU each; tasks run here, at once."""

    exceptions = ray.exceptions

    def __init__(self, tmp, resources=None, missing_on=(), initialized=True, head=False, ready=True):
        self.tmp, self.missing_on, self.initialized, self.ready = tmp, set(missing_on), initialized, ready
        self.resources = {"CPU": 2.0} if resources is None else resources
        self.node_list = [{"NodeID": n, "Alive": True, "Resources": {"CPU": 1.0}} for n in (NODE_A, NODE_B)]
        self.sent, self.inits = [], []
        self._private = SimpleNamespace(worker=SimpleNamespace(_global_node=SimpleNamespace(head=head)))

    def is_initialized(self):
        return self.initialized

    def init(self, **kwargs):
        self.inits.append(kwargs)
        self.initialized = True
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))  # as ray.init does

    def shutdown(self):
        self.initialized = False

    def remote(self, fn):
        return FakeRemote(self, fn, {})

    def wait(self, refs, num_returns=1, timeout=None):
        return (list(refs[:num_returns]), list(refs[num_returns:])) if self.ready else ([], list(refs))

    def get(self, ref):
        return ref.value

    def cancel(self, ref, force=False):
        pass

    def cluster_resources(self):
        return dict(self.resources)

    def nodes(self):
        return self.node_list

    def get_runtime_context(self):
        return SimpleNamespace(gcs_address="10.1.2.3:6379")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    def make(**kwargs):
        f = FakeRay(tmp_path, **kwargs)
        monkeypatch.setattr(fray, "_ray", lambda: f)
        return f

    return make


def tv(root, images="[0]", alphas="[0.0]"):
    return build_study("tv", "cpu", overrides=[f"root={root}", *TINY, f"images={images}", f"alphas={alphas}"])


# 5 — data roots are absolute in what is shipped; keys and the folder stay the same


def test_a_relative_data_root_is_shipped_absolute_with_the_same_key(cifar_root, monkeypatch, fake):
    monkeypatch.chdir(cifar_root.parent)
    relative = cifar_root.name
    f = fake()
    backend = RayBackend()
    backend.start(loader=None)
    for study, where in ((tv(relative), ("root",)),
                         (build_sweep(["attack.tv=0.0"], "0", overrides=[f"data.root={relative}", "data.name=cifar10",
                                                                           "model.name=lenet", "data.image_size=8"]),
                          ("base", "data", "root"))):
        [p] = plan(study)
        assert p.spec.config["data"]["root"] == relative
        backend.submit(p.spec)
        shipped = f.sent[-1][1]
        assert shipped.config["data"]["root"] == str(cifar_root)  # where the driver found the data
        settings = shipped.settings
        for part in where:
            settings = settings[part]
        assert settings == str(cifar_root)
        assert shipped.key == p.key == absolute_roots(p.spec).key  # the same run, the same row
    assert tv(relative).settings.root == relative  # the study (its folder's study.json) keeps what was given


# 6 — a node without the data: the run goes to another node; the failure names the host


def test_run_task_tells_a_failure_of_its_nodes_data_from_the_runs_own(cifar_root, tmp_path, monkeypatch):
    [good] = plan(tv(cifar_root))
    [missing] = plan(tv(tmp_path / "nowhere"))
    [out_of_range] = plan(tv(cifar_root, images="[12]"))  # the test split holds 10 images
    outcome, _, local = run_task(missing.spec, False, 1, "s1")
    assert not outcome.ok and "does not exist" in outcome.error and local
    outcome, _, local = run_task(out_of_range.spec, False, 1, "s1")
    assert outcome.error == "index 12 is out of range for cifar10 (0 to 9)" and not local  # the run's own
    outcome, _, local = run_task(good.spec, False, 1, "s1")
    assert outcome.ok and not local
    monkeypatch.delenv("FEDLEAK_DATA", raising=False)  # set on the driver only
    [unset] = plan(build_study("tv", "cpu", overrides=[*TINY, "images=[0]", "alphas=[0.0]"]))
    outcome, _, local = run_task(unset.spec, False, 1, "s1", driver_data=str(cifar_root))
    assert local and outcome.error.startswith("dataset 'cifar10' needs a data root")
    assert f"has no $FEDLEAK_DATA; the driver's is {str(cifar_root)!r}" in outcome.error


def test_a_run_whose_data_is_missing_on_its_node_is_retried_on_another(cifar_root, fake):
    f = fake(missing_on={NODE_A})
    backend = RayBackend()
    notes = []
    backend.note = notes.append
    backend.start(loader=None)
    [p] = plan(tv(cifar_root))
    ticket = backend.submit(p.spec)
    [(back, outcome)] = backend.collect()
    assert back == ticket and outcome.ok and outcome.host == "host-b"
    assert [node for node, _ in f.sent] == [NODE_A, NODE_B]
    [note] = notes  # said once per node
    assert note.startswith("Ray node host-a (aaaaaaaa) cannot read a run's data (data root ") and "other nodes" in note
    f.node_list.insert(1, {"NodeID": "c" * 56, "Alive": True, "Resources": {"CPU": 1.0}})  # a third node joins
    f.sent.clear()
    [q] = plan(tv(cifar_root, alphas="[0.1]"))
    backend.submit(q.spec)
    backend.collect()
    assert [node for node, _ in f.sent] == [NODE_A, NODE_B]  # B held the data before: tried before C


def test_a_run_that_fails_on_every_node_is_recorded_with_its_host(cifar_root, tmp_path, fake):
    f = fake(missing_on={NODE_A, NODE_B})
    out = tmp_path / "st"
    out.mkdir()  # a folder that was there: kept with its failures
    outcome = run_study(tv(cifar_root), "cpu", out, progress=False, backend=RayBackend())
    [failed] = outcome.failed
    assert [node for node, _ in f.sent] == [NODE_A, NODE_B]
    assert failed.host == "host-b" and "(on each of the 2 nodes that fit the run: host-a, host-b)" in failed.error
    with ResultsDB(out / "results.sqlite") as db:
        assert [x.host for x in db.failures()] == ["host-b"]
    exported = json.loads(ResultsDB(out / "results.sqlite", create=False).to_json())
    assert exported["failed"][0]["host"] == "host-b"


def test_a_failure_records_the_host_and_old_databases_gain_the_column(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsDB(path) as db:
        pass
    with sqlite3.connect(path) as conn:  # a failures table as fedleak made it before hosts were recorded
        conn.execute("DROP TABLE failures")
        conn.execute("CREATE TABLE failures (key TEXT PRIMARY KEY, study TEXT NOT NULL, name TEXT NOT NULL, "
                     "params TEXT NOT NULL, config TEXT NOT NULL, error TEXT NOT NULL, attempts INTEGER NOT NULL, "
                     "failed REAL NOT NULL)")
        conn.execute("INSERT INTO failures VALUES ('k0', 'tv', 'old', '{}', '{}', 'boom', 1, 1.0)")
    with ResultsDB(path, create=False) as db:  # read as it is
        assert [(x.name, x.host) for x in db.failures()] == [("old", "")]
    with sqlite3.connect(path) as conn:
        assert "host" not in [r[1] for r in conn.execute("PRAGMA table_info(failures)")]
    with ResultsDB(path) as db:  # opened to write: migrated
        db.fail(Failure("k1", "tv", "new", {}, {}, "gone", host="node-7"), Owner.me())
        assert [(x.name, x.host) for x in db.failures()] == [("old", ""), ("new", "node-7")]


def test_the_runner_records_where_a_run_failed(cifar_root, tmp_path, monkeypatch, capsys):
    class Failing(LocalBackend):
        def collect(self, timeout=None):
            ticket, spec, _ = self._queue.popleft()
            return [(ticket, Outcome(spec.key, error="boom", host="far-away"))]

    out = tmp_path / "st"
    out.mkdir()
    outcome = run_study(tv(cifar_root), "cpu", out, progress=False, backend=Failing())
    assert [f.host for f in outcome.failed] == ["far-away"]
    from tests.test_cli import fedleak

    code, listed, _ = fedleak(monkeypatch, capsys, "runs", "list", str(out), "--failed")
    assert code == 0 and "on far-away" in listed


# 7 — the capacity follows the cluster; an empty cluster waits


def test_the_capacity_follows_the_clusters_resources(monkeypatch, fake):
    fake()
    resources = [{"CPU": 2.0}]
    monkeypatch.setattr(fray, "_cluster_resources", lambda: dict(resources[-1]))
    monkeypatch.setattr(fray, "REFRESH_SECONDS", 0.0)
    notes = []
    backend = RayBackend(workers=5)
    backend.note = notes.append
    backend.start(loader=None)
    assert backend.capacity == 2
    resources.append({"CPU": 6.0})  # a node joined
    assert backend.capacity == 5  # --workers still caps
    assert notes == ["the Ray cluster now has 6 CPUs and 0 GPUs: 5 runs at a time"]
    resources.append({"CPU": 3.0, "GPU": 1.0})
    assert backend.capacity == 3
    resources.append({})  # every node left: one run waits for the next
    assert backend.capacity == 1


def test_an_empty_cluster_waits_for_nodes_with_a_note(fake, monkeypatch):
    fake(resources={})
    notes = []
    backend = RayBackend(address="auto")
    backend.note, backend.quiet = notes.append, True  # said even with -q: the study would seem to hang
    backend.start(loader=None)  # an autoscaler's cluster: not refused
    assert backend.capacity == 1
    assert notes == ["the Ray cluster has 0 CPUs and 0 GPUs, not enough for one run (1 CPUs and 0 GPUs each): "
                     "one run waits for a node to join (an autoscaler adds nodes for waiting runs); Ctrl-C stops"]
    fake(resources={}, head=True)  # a Ray this process started: nothing will join it
    with pytest.raises(ConfigError, match="not enough for one run"):
        RayBackend().start(loader=None)


def test_collect_returns_when_the_cluster_grows(cifar_root, fake, monkeypatch):
    f = fake(ready=False)  # the run in flight does not finish
    resources = [{"CPU": 1.0}]
    monkeypatch.setattr(fray, "_cluster_resources", lambda: dict(resources[-1]))
    monkeypatch.setattr(fray, "REFRESH_SECONDS", 0.0)
    monkeypatch.setattr(fray, "POLL_SECONDS", 0.0)
    backend = RayBackend()
    backend.start(loader=None)
    [p] = plan(tv(cifar_root))
    backend.submit(p.spec)
    waits = []

    def wait(refs, num_returns=1, timeout=None):
        waits.append(timeout)
        if len(waits) == 3:
            resources.append({"CPU": 4.0})  # a node joins while the driver waits
        return [], list(refs)

    f.wait = wait
    assert backend.collect() == []  # room for more: the driver hands the new node runs
    assert len(waits) == 3 and backend.capacity == 4


def test_the_runner_hands_out_runs_as_the_capacity_grows(cifar_root, tmp_path):
    class Growing(LocalBackend):
        def __init__(self):
            super().__init__()
            self.most = 0

        @property
        def capacity(self):
            return 1 if not self.most else 3

        @capacity.setter
        def capacity(self, value):
            pass

        def collect(self, timeout=None):
            self.most = max(self.most, len(self._queue))
            ticket, spec, _ = self._queue.popleft()
            return [(ticket, Outcome(spec.key, error="no"))]

    backend = Growing()
    out = tmp_path / "st"
    out.mkdir()
    run_study(tv(cifar_root, alphas="[0.0, 0.1, 0.2, 0.3]"), "cpu", out, progress=False, backend=backend)
    assert backend.most == 3


# 8 — `--address auto` without a cluster, nothing to run, images out of range, Ray's own lines


def test_address_auto_without_a_cluster_is_one_line_at_once(cifar_root, tmp_path, monkeypatch, capsys):
    from ray._private import services

    def none_running(address, temp_dir=None):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address", none_running)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("Ray itself would wait 300 s"))
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "-q", "--backend", "ray", "--address", "auto",
                           "--out", str(tmp_path / "st"), *[a for o in [f"root={cifar_root}", *TINY, "images=[0]",
                                                                        "alphas=[0.0]"] for a in ("--set", o)])
    assert code == 2 and err.strip().splitlines() == [
        "fedleak: error: --address auto: no Ray cluster runs on this machine (start one with `ray start --head`, "
        "give its HOST:PORT, or leave --address out to start Ray here)"]
    assert not (tmp_path / "st").exists()
    monkeypatch.setattr(services, "canonicalize_bootstrap_address", lambda address, temp_dir=None: "127.0.0.1:1")
    with pytest.raises(FedleakError, match=r"--address auto: the Ray cluster found at 127.0.0.1:1 .* does not answer"):
        RayBackend(address="auto").start(loader=None)  # a stale address file of a cluster that is gone


def test_a_study_with_nothing_left_to_run_starts_no_ray(cifar_root, tmp_path, monkeypatch):
    study = tv(cifar_root)
    out = tmp_path / "st"
    assert run_study(study, "cpu", out, progress=False).ran == 1
    monkeypatch.setattr(RayBackend, "start", lambda self, loader: pytest.fail("started Ray for nothing"))
    again = run_study(study, "cpu", out, progress=False, backend=RayBackend(address="auto"))
    assert (again.ran, again.skipped, again.failed) == (0, 1, [])
    assert again.backend == "ray (not started: nothing to run)"


def test_images_out_of_range_are_refused_before_any_run_or_ray(cifar_root, tmp_path, monkeypatch):
    monkeypatch.setattr(RayBackend, "start", lambda self, loader: pytest.fail("started Ray"))
    with pytest.raises(DataError, match=r"index 12 is out of range for cifar10 \(0 to 9\)"):
        run_study(tv(cifar_root, images="[0, 12]"), "cpu", tmp_path / "st", progress=False, backend=RayBackend())
    assert not (tmp_path / "st").exists()


def test_joining_a_cluster_names_it_quietly_and_keeps_the_callers_sigterm_handler(fake, monkeypatch):
    f = fake(initialized=False, resources={"CPU": 4.0, "GPU": 1.0})
    monkeypatch.setattr(fray, "_check_reachable", lambda address: None)
    notes = []

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        backend = RayBackend(address="10.1.2.3:6379")
        backend.note = notes.append
        backend.start(loader=None)
        assert signal.getsignal(signal.SIGTERM) is mine  # not Ray's sys.exit: the CLI's stays in charge
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert notes == ["joined the Ray cluster at 10.1.2.3:6379: 2 nodes, 4 CPUs, 1 GPUs"]
    [kwargs] = f.inits
    assert kwargs["log_to_driver"] is False and kwargs["logging_level"] == logging.ERROR  # Ray's lines stay off


def test_the_study_command_prints_the_joined_cluster_unless_quiet(cifar_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fray, "_check_reachable", lambda address: None)
    args = ["study", "tv", "--backend", "ray", "--address", "10.1.2.3:6379",
            *[a for o in [f"root={cifar_root}", *TINY, "images=[0]", "alphas=[0.0]"] for a in ("--set", o)]]
    for quiet in (False, True):
        f = FakeRay(tmp_path, initialized=False)
        monkeypatch.setattr(fray, "_ray", lambda: f)
        code, stdout, err = fedleak(monkeypatch, capsys, *args, *(["-q"] if quiet else []),
                                    "--out", str(tmp_path / f"st-{quiet}"))
        assert code == 0 and "1 runs done" in stdout, err
        joined = "fedleak: note: joined the Ray cluster at 10.1.2.3:6379: 2 nodes, 2 CPUs, 0 GPUs"
        assert (joined in err.splitlines()) is not quiet


# 21 — SIGTERM ends a study in one line, exit 143


def start_study(out: Path, root: Path, backend: str, cwd: Path) -> subprocess.Popen:
    sets = [f"root={root}", "image_size=8", "model=lenet", "alphas=[0.0, 0.1]", "images=[0]",
            "attack.iterations=100000"]
    return subprocess.Popen([sys.executable, "-m", "fedleak.cli", "study", "tv", "-q", "--out", str(out),
                             "--backend", backend, *[a for o in sets for a in ("--set", o)]],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def terminate_when_running(proc: subprocess.Popen, out: Path, timeout: float = 240) -> tuple[int, str]:
    """SIGTERM once the study's folder exists (its runs are under way), then how it ended."""
    import time

    deadline = time.monotonic() + timeout
    while not (out / "study.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the study never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_sigterm_ends_a_local_study_in_one_line(cifar_root, tmp_path):
    out = tmp_path / "st"
    proc = start_study(out, cifar_root, "local", tmp_path)
    try:
        code, err = terminate_when_running(proc, out)
    finally:
        proc.kill()
    assert code == 143 and err.strip().splitlines() == ["fedleak: terminated"], err[-2000:]
    assert not out.exists()  # nothing finished: the folder it made is gone, as after Ctrl-C


@pytest.mark.slow  # ~20 s: a driver process starts its own Ray
def test_sigterm_ends_a_ray_study_in_one_line_and_stops_ray(cifar_root, tmp_path):
    out = tmp_path / "st"
    proc = start_study(out, cifar_root, "ray", tmp_path)
    try:
        code, err = terminate_when_running(proc, out)
    finally:
        proc.kill()
    assert code == 143 and err.strip().splitlines() == ["fedleak: terminated"], err[-3000:]  # no C++ stack dump
