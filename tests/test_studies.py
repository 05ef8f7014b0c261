"""Studies: grids, the results database, resume after a crash, rates, reports and the runs commands."""

import csv
import io
import json
import math
import sqlite3

import pytest

from fedleak.attacks.base import build_attack
from fedleak.config import build_config
from fedleak.errors import ConfigError, DataError, FedleakError
from fedleak.metrics.classify import recognition_rates
from fedleak.store import ResultsDB, RunRecord, run_key
from fedleak.studies import STUDIES, build_study, runner
from tests.studying import run_study
from tests.test_cli import fedleak

TINY = ["--set", "image_size=8", "--set", "model=lenet", "--set", "width=1.0"]


def tiny(name, cifar_root, **settings):
    overrides = [f"root={cifar_root}", "image_size=8", "model=lenet", "width=1.0", "images=[0, 1]",
                 "attack.iterations=3", *[f"{k}={v}" for k, v in settings.items()]]
    return build_study(name, "cpu", overrides=overrides)


def test_recognition_rates():
    groups = [([True, False], True), ([False, False], True), ([True, True], False)]
    r = recognition_rates(groups)
    assert r["rate_a"] == pytest.approx(3 / 6) and r["rate_b"] == pytest.approx(2 / 3)
    assert r["rate_a_orig_correct"] == pytest.approx(1 / 4) and r["rate_b_orig_correct"] == pytest.approx(1 / 2)
    assert r["rate_a_orig_wrong"] == 1.0 and r["rate_b_orig_wrong"] == 1.0
    assert r["originals"] == 3 and r["originals_correct"] == 2
    assert math.isnan(recognition_rates([([True], True)])["rate_a_orig_wrong"])


def test_results_database_round_trip(tmp_path):
    key = run_key("tv", {"config": {"a": 1}})
    assert key == run_key("tv", {"config": {"a": 1}}) and key != run_key("tv", {"config": {"a": 2}})
    with ResultsDB(tmp_path / "r.sqlite") as db:
        db.add(RunRecord(key, "tv", "alpha=0", {"alpha": 0.0}, {"seed": 0}, 0, {"psnr": 12.5, "images": []}))
        assert db.has(key) and not db.has("0" * 16)
        assert db.get(key[:6]).metrics["psnr"] == 12.5
        rows = list(csv.DictReader(io.StringIO(db.to_csv())))
    assert rows[0]["alpha"] == "0.0" and rows[0]["psnr"] == "12.5" and "images" not in rows[0]
    (tmp_path / "bad.sqlite").write_text("not a database at all" * 100)
    with pytest.raises(FedleakError, match="cannot be opened"):
        ResultsDB(tmp_path / "bad.sqlite")


def test_every_study_plans_both_presets():
    for name in STUDIES.names():
        for preset in ("cpu", "full"):
            study = build_study(name, preset)
            planned = runner.plan(study)
            live = getattr(type(study), "live", False)  # a live federation's audit: its grid grows as it runs
            assert (planned or live) and len({p.key for p in planned}) == len(planned), (name, preset)


def test_obfuscation_runs_dp_sgd_without_batch_norm_beside_a_baseline():
    planned = runner.plan(build_study("obfuscation", "full"))  # ResNet-18 has batch norm
    dp = [p for p in planned if p.run.params["defense"].startswith("dpsgd")]
    assert dp and all(p.config.model.options["norm"] == "none" for p in dp)
    assert {p.run.params["model"] for p in dp} == {"resnet18+nonorm"}
    baseline = [p for p in planned if p.run.params["model"] == "resnet18+nonorm" and p.run.params["defense"] == "none"]
    assert len(baseline) == len(dp)
    rest = [p for p in planned if p.run.params["model"] == "resnet18"]
    assert all(p.config.model.options.get("norm", "batch") == "batch" for p in rest)
    lenet = runner.plan(build_study("obfuscation", "cpu", overrides=["model=lenet", "defenses=[dpsgd]"]))
    assert {p.run.params["model"] for p in lenet} == {"lenet"}  # no norm option: unchanged


def test_the_rog_paper_preset_batches_sixteen_people_under_both_protocols():
    planned = runner.plan(build_study("obfuscation", "rog-paper", overrides=["root=/nowhere/orl_faces"]))
    first = planned[0].config
    # one image of each of 16 people (ORL keeps 10 per person, in order), 128 px, LeNet at full width
    assert first.data.index == list(range(0, 160, 10)) and first.client.batch_size == 16
    assert first.data.image_size == 128 and first.model.name == "lenet-rog" and first.model.width == 1.0
    protocols = {p.run.params["protocol"]: p.config.client for p in planned}
    assert protocols["fedsgd"].protocol == "fedsgd"
    fedavg = protocols["fedavg"]
    assert (fedavg.protocol, fedavg.local_steps, fedavg.lr) == ("fedavg", 5, 0.003)
    assert {p.config.client.defense for p in planned} >= {"qsgd:levels=16,scale=max", "sign", None}
    assert {p.config.attack.scale for p in planned} == {4}
    assert all(p.run.name.startswith(("fedsgd/", "fedavg/")) for p in planned)
    # the CPU preset (FedSGD alone) keeps its run names and one image per update
    cpu = runner.plan(build_study("obfuscation", "cpu"))
    assert all("protocol" not in p.run.params and len(p.config.data.index) == 1 for p in cpu)
    assert cpu[0].run.name == "none/ig/image=0/seed=0"


def test_a_cell_naming_its_own_attack_does_not_inherit_the_default_attacks_budget():
    # regression: the study-wide default attack (ig, 300 iterations) leaked its iterations into every
    # cell that named another attack, so ROG ran 300 steps instead of its paper's (and its own default) 100
    def budgets(planned):
        return {(p.config.attack.name, build_attack(p.config.attack.name, p.config.attack.settings()).config.iterations)
                for p in planned}

    assert budgets(runner.plan(build_study("obfuscation", "cpu"))) == {("ig", 200), ("rog", 100)}
    # a study that runs the one default attack still gets it whole
    assert budgets(runner.plan(build_study("tv", "cpu"))) == {("ig", 300)}


@pytest.mark.parametrize("images", [pytest.param([0, 1], marks=pytest.mark.slow, id="two-images"),
                                    pytest.param([0], id="one-image")])
def test_tv_study_runs_resumes_and_reports(tmp_path, cifar_root, images):
    study = tiny("tv", cifar_root, alphas="[0.0, 0.01]", images=str(images))
    out = tmp_path / "tv"
    n = 2 * len(images)
    first = run_study(study, "cpu", out, progress=False)
    assert (first.total, first.ran, first.skipped) == (n, n, 0)
    again = run_study(study, "cpu", out, progress=False)
    assert (again.ran, again.skipped) == (0, n)
    table = json.loads((out / "table.json").read_text())
    assert [r["alpha"] for r in table] == [0.0, 0.01] and all(r["runs"] == len(images) for r in table)
    for name in ("report.html", "table.csv", "figures/quality-vs-alpha.png", "figures/quality-vs-alpha.svg"):
        assert (out / name).is_file()
    html = (out / "report.html").read_text()
    assert 'id="results"' in html and 'class="reconstruction"' in html and f"{n} of {n} runs" in html
    with sqlite3.connect(out / "results.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == n


def test_a_crash_loses_no_finished_run(tmp_path, cifar_root, monkeypatch):
    study = tiny("tv", cifar_root, alphas="[0.0, 0.01]")
    out = tmp_path / "tv"
    real = runner.RUN_KINDS.get("attack")
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setitem(runner.RUN_KINDS._entries, "attack", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, "cpu", out, progress=False)
    with ResultsDB(out / "results.sqlite") as db:
        assert len(db.records()) == 2
    monkeypatch.setitem(runner.RUN_KINDS._entries, "attack", real)
    resumed = run_study(study, "cpu", out, progress=False)
    assert (resumed.ran, resumed.skipped) == (2, 2)


def test_stacking_reports_rates_per_batch_size(tmp_path, cifar_root):
    study = tiny("stacking", cifar_root, batch_sizes="[1, 2]")
    out = tmp_path / "stack"
    run_study(study, "cpu", out, progress=False)
    table = json.loads((out / "table.json").read_text())
    assert [r["batch_size"] for r in table] == [1, 2]
    for row in table:
        assert 0 <= row["rate_a"] <= 1 and 0 <= row["rate_b"] <= 1 and row["originals"] == 2
        assert row["rate_b"] >= row["rate_a"]  # (b) counts an original once any copy is correct
    html = (out / "report.html").read_text()
    assert ("✓" in html or "✗" in html) and "rates-vs-batch.png" in html


def test_stacking_selects_the_originals_the_target_misclassifies_and_reports_each_group(tmp_path, cifar_root):
    """Lim & Chan's protocol: the first per_group originals of the split that the target gets wrong
    (and, as their own rows, right), in index order, checked against the target's own verdicts."""
    from fedleak.metrics.classify import classify
    from fedleak.modalities import build_target
    from fedleak.pipeline import load_data, resolve_checkpoint
    from fedleak.studies.recognition import select_originals

    study = tiny("stacking", cifar_root, batch_sizes="[1]", originals="both", per_group=1)
    chosen = select_originals(study.settings)
    config, info = resolve_checkpoint(build_config(None, study.settings.flags(**{"data.index": [0]}), []))
    dataset = load_data(config)
    target = build_target(config, dataset, info)
    verdict = classify(target.model, dataset.images(range(len(dataset))), dataset.labels.long(), target.mean,
                       target.std)
    right = [i for i, (p, y) in enumerate(zip(verdict.predicted, dataset.labels.tolist())) if p == y]
    wrong = [i for i in range(len(dataset)) if i not in right]
    assert chosen == {"misclassified": wrong[:1], "correct": right[:1]}
    out = tmp_path / "paper"
    run_study(study, "cpu", out, progress=False)
    table = json.loads((out / "table.json").read_text())
    assert [(r["original"], r["batch_size"]) for r in table] == [("correct", 1), ("misclassified", 1)]
    by = {r["original"]: r for r in table}
    assert by["misclassified"]["originals_correct"] == 0 and by["correct"]["originals_correct"] == 1
    with pytest.raises(ConfigError, match="lower per_group"):
        select_originals(tiny("stacking", cifar_root, originals="misclassified", per_group=10**6).settings)


def test_transfer_classifies_with_other_checkpoints(tmp_path, cifar_root, monkeypatch, capsys):
    ckpt = tmp_path / "other.safetensors"
    code, _, err = fedleak(monkeypatch, capsys, "train", "--model", "mlp", "--dataset", "cifar10", "--root",
                           str(cifar_root), "--image-size", "8", "--epochs", "1", "--out", str(ckpt), "-q")
    assert code == 0, err
    study = tiny("transfer", cifar_root, batch_sizes="[1]", transfer=f"[{ckpt}]")
    out = tmp_path / "transfer"
    run_study(study, "cpu", out, progress=False)
    table = json.loads((out / "table.json").read_text())
    assert {r["classifier"] for r in table} == {"target", "other.safetensors"}
    with ResultsDB(out / "results.sqlite") as db:
        records = db.records()
    assert len(records) == 2
    for record in records:  # the checkpoint gave its own verdict, not a copy of the target's
        target, other = record.metrics["classification"], record.metrics[f"transfer:{ckpt}"]
        assert other["original_confidence"] != target["original_confidence"]


@pytest.mark.parametrize("regenerate", [pytest.param(True, marks=pytest.mark.slow, id="and-report"),
                                        pytest.param(False, id="runs-only")])
def test_study_and_runs_commands(tmp_path, cifar_root, monkeypatch, capsys, regenerate):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    monkeypatch.delenv("FEDLEAK_LPIPS", raising=False)
    out = tmp_path / "tv"
    code, stdout, err = fedleak(monkeypatch, capsys, "study", "tv", "--out", str(out), "-q",
                                "--set", f"root={cifar_root}", *TINY, "--set", "images=[0]",
                                "--set", "alphas=[0.0]", "--set", "attack.iterations=2")
    assert code == 0, err
    assert err.count("fedleak: note: LPIPS-alex is n/a") == 1  # once per study, not once per run
    assert "lpips_alex" in (out / "table.csv").read_text() and "n/a" in (out / "report.html").read_text()
    code, stdout, _ = fedleak(monkeypatch, capsys, "runs", "list", str(out))
    assert code == 0 and "alpha=0/image=0/seed=0" in stdout
    with ResultsDB(out / "results.sqlite") as db:
        key = db.records()[0].key
    code, stdout, _ = fedleak(monkeypatch, capsys, "runs", "show", str(out), key[:5])
    assert code == 0 and json.loads(stdout)["params"]["alpha"] == 0.0
    code, stdout, _ = fedleak(monkeypatch, capsys, "runs", "export", str(out), "--csv")
    assert code == 0 and list(csv.DictReader(io.StringIO(stdout)))[0]["key"] == key
    if regenerate:  # the report command redraws every figure: the slow part
        (out / "report.html").unlink()
        code, _, _ = fedleak(monkeypatch, capsys, "report", str(out))
        assert code == 0 and (out / "report.html").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["study", "nope"], "unknown study 'nope'"),
        (["study", "tv", "--preset", "huge"], "has no preset 'huge'"),
        (["study", "tv", "--set", "alphaz=1"], "unknown config key 'study.alphaz'"),
        (["study", "tv", "--set", "model=nonet", "--set", "dataset=samples"], "unknown model"),
        (["study", "tv", "--set", "dataset=mnist", "--set", "root=/nonexistent"], "does not exist"),
        (["runs", "list", "/nonexistent"], "holds no results database"),
        (["report", "/nonexistent"], "is not a study folder"),
    ],
)
def test_study_bad_input(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDLEAK_DATA", raising=False)
    code, _, err = fedleak(monkeypatch, capsys, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # no half-made study folder


@pytest.mark.parametrize("snrs", [pytest.param([None, 0, -10], marks=pytest.mark.slow, id="three-snrs"),
                                  pytest.param([None, -10], id="two-snrs")])
def test_dp_tradeoff_trains_and_attacks_per_snr(tmp_path, cifar_root, snrs):
    grid = "[" + ", ".join("null" if s is None else str(s) for s in snrs) + "]"
    study = tiny("dp-tradeoff", cifar_root, images="[0]", snrs=grid, train_images=20, test_images=10,
                 fl_clients=2, rounds=2, fl_batch_size=5, model_options="{}")
    n = len(snrs)
    kinds = [p.kind for p in study.plan()]
    assert kinds.count("fl-train") == n and kinds.count("attack") == n
    outcome = run_study(study, "cpu", tmp_path / "dpt", progress=False)
    assert outcome.ran == 2 * n
    rows = json.loads((tmp_path / "dpt" / "table.json").read_text())
    assert [r["snr_db"] for r in rows] == ["inf" if s is None else float(s) for s in snrs]
    for r in rows:
        assert 0 <= r["test_accuracy"] <= 1 and r["runs"] == 1 and math.isfinite(r["psnr"])
        assert 0 <= r["accuracy_last3"] <= 1
    with ResultsDB(tmp_path / "dpt" / "results.sqlite") as db:
        train = [r for r in db.records("dp-tradeoff") if r.params["part"] == "utility"]
    assert len(train) == n and all(len(r.metrics["accuracy_per_round"]) == 2 for r in train)
    assert {r.metrics["defense"] for r in train} == {None if s is None else f"noise:snr_db={s}" for s in snrs}
    for row in rows:  # two rounds: the last-three mean is the mean over both
        run = next(r for r in train if r.params["snr_db"] == row["snr_db"])
        assert row["accuracy_last3"] == pytest.approx(sum(run.metrics["accuracy_per_round"]) / 2)
    html = (tmp_path / "dpt" / "report.html").read_text()
    assert "psnr-and-accuracy.png" in html and "test_accuracy" in html
    assert (tmp_path / "dpt" / "figures" / "lpips-and-accuracy.svg").is_file()


def test_dp_tradeoff_checks_the_training_split_first(tmp_path, cifar_root):
    (cifar_root / "cifar-10-batches-py" / "data_batch_1").unlink()
    study = tiny("dp-tradeoff", cifar_root, images="[0]", snrs="[0]")
    with pytest.raises(DataError, match="data_batch"):
        run_study(study, "cpu", tmp_path / "dpt", progress=False)
    assert not (tmp_path / "dpt").exists()


def test_dp_tradeoff_trains_batch_norm_models(tmp_path, cifar_root):
    # FedAvg now aggregates batch-norm running statistics (they used to stay at init and were refused)
    study = tiny("dp-tradeoff", cifar_root, model="convnet", image_size=16, model_options="{norm: batch}", images="[0]", snrs="[0]",
                 train_images=20, test_images=10, fl_clients=2, rounds=1)
    run_study(study, "cpu", tmp_path / "dpt", progress=False)
    with ResultsDB(tmp_path / "dpt" / "results.sqlite") as db:
        train = [r for r in db.records("dp-tradeoff") if r.params["part"] == "utility"]
    assert len(train) == 1 and len(train[0].metrics["accuracy_per_round"]) == 1
