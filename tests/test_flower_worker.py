"""The Flower audit off the round thread (item 4 of issue 23) and its frictions (item 5): audits run in
a spawned worker process while the federation goes on, the aggregated model is the wrapped strategy's,
the round returns before its audits finish, a worker's failure is recorded and the federation goes
on; the client selection is a stable seeded sample; labels are a histogram and image grids wrap;
the report and ``runs list`` speak of audited updates. The 2-client federations are Flower's
ClientApp, messages and records run in this process (``tests.test_flower``'s stand-in grid)."""

from __future__ import annotations

import io
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from PIL import Image

from fedleak.errors import ConfigError
from fedleak.images import upscale
from fedleak.integrations.flower import SharedBatches
from fedleak.integrations.flower.log import GRID_COLUMNS, wrapped_grid
from fedleak.integrations.flower.selection import Selection, priority
from fedleak.integrations.flower.worker import ProcessWorker
from fedleak.store import ResultsDB
from tests.test_flower import (
    SHAPE,
    TRAIN,
    LocalGrid,
    audit,
    client_app,
    federate,
    initial,
    records,
    same_arrays,
    task_identity,
    train_round,
)

assert task_identity  # the autouse fixture of test_flower: Messages are made in a ServerApp-like process
QUICK = {"name": "ig", "iterations": 5}


@pytest.fixture(scope="module")
def pool():
    """One spawned worker process for the tests of this module (each audit could start its own), at
    this process's priority (nothing here trains beside it)."""
    worker = ProcessWorker(1, nice=0)
    worker.start()
    assert worker.ready is not None and worker.ready.result(timeout=300) != os.getpid()  # spawned and ready
    worker._pool.submit(worker_pid).result(timeout=300)  # and it imported this module (the hooks' home)
    yield worker
    worker.close()


def worker_pid() -> int:
    return os.getpid()


# --- hooks the worker process imports from here (module level: they pickle by reference) ------------------------

class PidBatches(SharedBatches):
    """Shared batches, and the id of the process that asked for each (the audit's worker)."""

    def __call__(self, run_id, server_round, node_id):
        (self.folder / f"pid-{server_round}-{node_id}").write_text(str(os.getpid()))
        return super().__call__(run_id, server_round, node_id)


class WaitForFlag:
    """An evaluation hook that returns only once ``flag`` exists (at most ``limit_s``, so a broken test
    cannot hang): the audit it belongs to cannot finish before the test lets it."""

    def __init__(self, flag: Path, limit_s: float = 120.0) -> None:
        self.flag, self.limit_s = flag, limit_s

    def __call__(self, run_id, server_round, node_id):
        end = time.monotonic() + self.limit_s
        while not self.flag.exists() and time.monotonic() < end:
            time.sleep(0.05)
        return None


class Failing:
    """An evaluation hook that raises in the worker."""

    def __call__(self, run_id, server_round, node_id):
        raise RuntimeError("the hook broke")


# --- the worker ---------------------------------------------------------------------------------------------------

def test_audits_run_in_a_worker_process_and_the_model_is_the_wrapped_strategys(tmp_path, pool):
    plain = federate(FedAvg(fraction_evaluate=0.0), client_app(), rounds=1)
    shared = PidBatches(tmp_path / "shared")
    strategy = audit(FedAvg(fraction_evaluate=0.0), tmp_path / "audit", workers=pool, evaluation=shared, attack=QUICK)
    audited = federate(strategy, client_app([shared.mod()]), rounds=1)
    assert same_arrays(plain.arrays, audited.arrays) and not same_arrays(plain.arrays, initial())
    pids = {p.read_text() for p in (tmp_path / "shared").glob("pid-*")}
    assert len(list((tmp_path / "shared").glob("pid-*"))) == 2 and str(os.getpid()) not in pids  # not this process
    rows = records(tmp_path / "audit")
    assert [(r.metrics["round"], r.metrics["client"]) for r in rows] == [(1, "1000"), (1, "1001")]
    assert all("psnr" in r.metrics for r in rows)  # scored in the worker, against the shared batch
    assert (tmp_path / "audit" / "report.html").is_file()  # written when the federation ended


def test_the_round_returns_before_a_slow_audit_finishes(tmp_path, pool):
    flag = tmp_path / "go"
    out = tmp_path / "audit"
    strategy = audit(FedAvg(fraction_evaluate=0.0), out, workers=pool, evaluation=WaitForFlag(flag), attack=QUICK)
    grid = LocalGrid(client_app())
    config = ConfigRecord(dict(TRAIN) | {"server-round": 1})
    replies = list(grid.send_and_receive(strategy.configure_train(1, initial(), config, grid)))
    arrays, _ = strategy.aggregate_train(1, replies)  # returns while both audits wait for the flag
    assert strategy.records == [] and not records(out)  # nothing came back: the audits cannot have finished
    assert len(json.loads((out / "study.json").read_text())["settings"]["cells"]) == 2  # but both started
    reference, _ = FedAvg(fraction_evaluate=0.0).aggregate_train(1, replies)
    assert same_arrays(arrays, reference)
    flag.touch()
    strategy.finish()
    assert sorted(r.client for r in strategy.records) == ["1000", "1001"] and len(records(out)) == 2
    assert "2 of 2 audited updates finished" in (out / "report.html").read_text()


def test_an_audit_failing_in_the_worker_is_recorded_and_the_federation_goes_on(tmp_path, capsys, pool):
    from fedleak.cli import main

    out = tmp_path / "audit"
    strategy = audit(FedAvg(fraction_evaluate=0.0), out, workers=pool, evaluation=Failing(), strict=False, attack=QUICK,
                     rounds=[1])
    result = federate(strategy, client_app())
    assert same_arrays(result.arrays, federate(FedAvg(fraction_evaluate=0.0), client_app()).arrays)
    assert strategy.records == []
    with ResultsDB(out / "results.sqlite", create=False) as db:
        failures = db.failures()
    assert sorted(f.params["client"] for f in failures) == ["1000", "1001"]
    assert all("the hook broke" in f.error for f in failures)
    main(["runs", "list", str(out), "--failed"])
    text = capsys.readouterr().out
    assert "2 failed runs" in text and "retries" not in text  # an audit is not re-run by a study
    assert "0 of 2 audited updates finished, 2 failed" in (out / "report.html").read_text()


def test_what_cannot_reach_a_worker_is_refused_when_the_strategy_is_built(tmp_path):
    with pytest.raises(ConfigError, match="evaluation= must pickle.*workers=0"):
        audit(FedAvg(), tmp_path / "a", workers=1, evaluation=lambda run, rnd, node: None)
    audit(FedAvg(), tmp_path / "b", workers=0, evaluation=lambda run, rnd, node: None)  # in this process: fine
    for bad in (-1, "threads", 1.5):
        with pytest.raises(ConfigError, match="workers="):
            audit(FedAvg(), tmp_path / "c", workers=bad)


@pytest.mark.slow
def test_audits_run_as_ray_tasks(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        shared = PidBatches(tmp_path / "shared")
        strategy = audit(FedAvg(fraction_evaluate=0.0), tmp_path / "audit", workers="ray", evaluation=shared,
                         attack=QUICK, rounds=[1])
        audited = federate(strategy, client_app([shared.mod()]), rounds=1)
    finally:
        ray.shutdown()
    assert same_arrays(audited.arrays, federate(FedAvg(fraction_evaluate=0.0), client_app(), rounds=1).arrays)
    assert len(records(tmp_path / "audit")) == 2
    assert str(os.getpid()) not in {p.read_text() for p in (tmp_path / "shared").glob("pid-*")}


# --- a stable, recorded selection ----------------------------------------------------------------------------------

def reporting_partition(message: Message, context: Context) -> Message:
    """The test app's training, its reply also reporting the node's partition id."""
    reply = train_round(message, context)
    reply.content["metrics"]["partition-id"] = int(context.node_config["partition-id"])
    return reply


class ShuffledGrid(LocalGrid):
    """Three nodes whose ids (as Flower draws them anew each run) map to partitions in another order."""

    def __init__(self, app: ClientApp, first: int) -> None:
        super().__init__(app, 3)
        self.contexts = {first + k: Context(run_id=7, node_id=first + k, node_config={"partition-id": 2 - k},
                                            state=RecordDict(), run_config={}) for k in range(3)}


def test_clients_n_is_a_seeded_sample_of_partitions_the_same_whatever_the_node_ids(tmp_path):
    app = ClientApp()
    app.train()(reporting_partition)
    chosen = []
    for run, first in enumerate((1000, 5000)):
        out = tmp_path / f"run{run}"
        strategy = audit(FedAvg(fraction_evaluate=0.0), out, clients=1, seed=3, attack={"name": "ig", "iterations": 1})
        strategy.start(grid=ShuffledGrid(app, first), initial_arrays=initial(), num_rounds=1,
                       train_config=ConfigRecord(dict(TRAIN)))
        chosen.append(json.loads((out / "study.json").read_text())["settings"]["selection"]["chosen"]["1"])
    assert [c[0]["partition"] for c in chosen] == [min(range(3), key=lambda p: priority(3, "partition-id", p))] * 2
    assert chosen[0][0]["node"] != chosen[1][0]["node"]  # other node ids, the same partition


def test_a_sample_is_uniform_over_seeds():
    counts: Counter = Counter()
    for seed in range(600):
        counts[min(range(3), key=lambda p: priority(seed, "partition-id", p))] += 1
    assert all(150 < n < 250 for n in counts.values()) and len(counts) == 3  # each of 3 about 200 times
    assert Selection.of([0, 2]).clients == frozenset({0, 2})


# --- labels as a histogram, grids that wrap, texts for audits ----------------------------------------------------

def test_a_grid_of_many_images_wraps_and_says_how_many_it_shows():
    images = torch.rand(20, *SHAPE)
    png = Image.open(io.BytesIO(wrapped_grid(images, 800)))
    cell = SHAPE[1] * upscale(*SHAPE[1:])  # pixels per image side, as image_grid draws them
    assert png.width == 2 + GRID_COLUMNS * (cell + 2)  # 8 to a row
    assert png.height == 14 + 2 + 2 * (cell + 2)  # 16 images: two rows, under the caption strip
    few = Image.open(io.BytesIO(wrapped_grid(images[:3], 3)))
    assert few.height == 2 + cell + 2 and few.width == 2 + 3 * (cell + 2)  # all shown: no caption


def test_records_hold_a_label_histogram_and_the_texts_speak_of_audits(tmp_path, capsys, monkeypatch):
    from fedleak.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    out = tmp_path / "audit"
    strategy = audit(FedAvg(fraction_evaluate=0.0), out, rounds=[1], attack={"name": "ig", "iterations": 2})
    federate(strategy, client_app(), rounds=1)
    for record, row in zip(sorted(strategy.records, key=lambda r: r.client), records(out)):
        truth = Counter(int(v) for v in record.reconstruction.labels.tolist())
        assert row.metrics["label_histogram"] == {str(k): truth[k] for k in sorted(truth)}
        assert row.metrics["images_shown"] == 2
    main(["runs", "list", str(out)])
    listing = capsys.readouterr().out
    assert "2 audited updates" in listing and "verdict" in listing and "class counts (class: count)" in listing
    assert "nan" not in listing and "no-leak" not in listing
    page = (out / "report.html").read_text()
    assert "2 of 2 audited updates finished" in page and "preset" not in page.split("<h2>")[0]
    assert "No run of this study stores images" not in page and "mean, std, n" not in page
    assert "class counts (class: count)" in page and "Where the audit read the client" in page


def test_fedleak_report_rebuilds_an_audit_folder_and_its_reruns(tmp_path, capsys):
    from fedleak.cli import main

    out = tmp_path / "audit"
    for _ in range(2):
        federate(audit(FedAvg(fraction_evaluate=0.0), out, rounds=[1], attack={"name": "ig", "iterations": 1}),
                 client_app(), rounds=1)
    for page in (out / "report.html", out / "audit-2" / "report.html"):
        page.unlink()
    main(["report", str(out)])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("report →")]
    assert len(lines) == 2 and (out / "report.html").is_file() and (out / "audit-2" / "report.html").is_file()

