"""Issue 21 (outside audit): no file names code to import; study client seeds come from a folder's
secret; inputs that would hang or exhaust memory are refused with one line."""

from __future__ import annotations

import json
import os
import pickle
import stat

import pytest
import yaml

from fedleak.config import build_config, load_yaml
from fedleak.errors import ConfigError
from fedleak.store import ResultsDB, RunRecord
from fedleak.studies import STUDIES, build_study
from tests.studying import run_study
from fedleak.studies.checks import check_factories
from fedleak.studies.planning import plan
from fedleak.studies.reading import load_study
from fedleak.studies.secret import SECRET_FILE, client_seed, folder_secret, read_secret, seed_runs
from fedleak.studies.grid_sweep import build_sweep
from tests.test_cli import fedleak

TINY_FACTORY = "tests.byo_models:tiny"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedleak: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- 1. a file names no code

def hostile(tmp_path, name="run.yaml"):
    """A config that would run ``touch MARKER`` if fedleak imported the factory it names."""
    marker = tmp_path / "MARKER"
    path = tmp_path / name
    path.write_text(json.dumps({"model": {"name": "os:system", "options": {"command": f"touch {marker}"}},
                                "data": {"image_size": 8}, "attack": {"iterations": 1}}))
    return path, marker


@pytest.mark.parametrize("command", [
    ["attack", "-q"],
    ["attack", "--print-config"],
    ["inspect-model", "--from-payload"],
    ["sweep", "-q", "--grid", "attack.tv=0.0,0.1"],
])
def test_a_config_file_that_names_a_factory_runs_no_code(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    config, marker = hostile(tmp_path)
    code, _, err = fedleak(monkeypatch, capsys, *command, "--config", str(config), "--out", str(tmp_path / "out")) \
        if command[0] != "inspect-model" else fedleak(monkeypatch, capsys, *command, "--config", str(config))
    assert code == 2
    line = one_error_line(err)
    assert "'os:system'" in line and "--trust-config" in line
    assert ("--model" in line) if command[0] != "sweep" else ("--set model.name=" in line)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings", [
    {"model": "os:system", "model_options": {"command": "touch MARKER"}},
])
def test_a_study_settings_file_that_names_a_factory_runs_no_code(tmp_path, monkeypatch, capsys, settings):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(json.dumps(settings))
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "-q", "--config", "study.yaml", "--out", "st")
    assert code == 2
    line = one_error_line(err)
    assert "'os:system'" in line and "--trust-config" in line and "--set model=" in line
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "st").exists()


def test_a_sweep_settings_file_that_names_a_factory_in_its_grid_runs_no_code(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text(json.dumps({
        "grid": {"model.name": ["os:system"]}, "images": [0],
        "base": {"model": {"options": {"command": "touch MARKER"}}}}))
    code, _, err = fedleak(monkeypatch, capsys, "study", "sweep", "-q", "--config", "sweep.yaml", "--out", "st")
    assert code == 2 and "--trust-config" in one_error_line(err)
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "st").exists()


def test_trust_config_or_the_command_line_lets_a_factory_through(tmp_path, monkeypatch, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name: '{TINY_FACTORY}'}}\ndata: {{image_size: 8}}\nattack: {{iterations: 1}}\n")
    code, _, err = fedleak(monkeypatch, capsys, "attack", "-q", "--config", str(config), "--out", str(tmp_path / "a"))
    assert code == 2 and "--trust-config" in one_error_line(err)
    for extra in (["--trust-config"], ["--model", TINY_FACTORY], ["--set", f"model.name={TINY_FACTORY}"]):
        code, out, err = fedleak(monkeypatch, capsys, "attack", "--print-config", "--config", str(config), *extra)
        assert code == 0, err
        assert yaml.safe_load(out)["model"]["name"] == TINY_FACTORY
    # trusted, the factory is imported and built (here: the model the run's server sends)
    import fedleak.models.external as external

    imported = []
    resolve = external.resolve_factory
    monkeypatch.setattr(external, "resolve_factory", lambda spec: imported.append(spec) or resolve(spec))
    code, out, err = fedleak(monkeypatch, capsys, "inspect-model", "--from-payload", "--config", str(config),
                             "--trust-config", "--dataset", "samples")
    assert code == 0 and imported == [TINY_FACTORY], err
    # the command line alone, as before
    assert build_config(flags={"model.name": TINY_FACTORY}).model.name == TINY_FACTORY
    with pytest.raises(ConfigError, match="--trust-config"):
        build_config(config)
    assert build_config(config, trust_config=True).model.name == TINY_FACTORY


def test_a_study_runs_a_factory_its_command_line_names_or_a_trusted_file(tmp_path):
    settings = tmp_path / "study.yaml"
    settings.write_text(f"model: '{TINY_FACTORY}'\nimages: [0]\nalphas: [0.0]\n")
    refused = build_study("tv", "cpu", settings)
    with pytest.raises(ConfigError, match="--set model='tests.byo_models:tiny'.*--trust-config"):
        check_factories(refused, plan(refused))
    for study in (build_study("tv", "cpu", settings, trust_config=True),
                  build_study("tv", "cpu", settings, overrides=[f"model={TINY_FACTORY}"]),
                  build_study("tv", "cpu", overrides=[f"model={TINY_FACTORY}", "images=[0]", "alphas=[0.0]"])):
        check_factories(study, plan(study))
    base = tmp_path / "base.yaml"
    base.write_text(f"model: {{name: '{TINY_FACTORY}'}}\n")
    with pytest.raises(ConfigError, match="--trust-config"):
        sweep = build_sweep(["attack.tv=0.0"], images="0", config=base)
        check_factories(sweep, plan(sweep))
    for sweep in (build_sweep(["attack.tv=0.0"], images="0", config=base, trust_config=True),
                  build_sweep([f"model.name={TINY_FACTORY}"], images="0"),
                  build_sweep(["attack.tv=0.0"], images="0", overrides=[f"model.name={TINY_FACTORY}"])):
        check_factories(sweep, plan(sweep))


def test_a_study_folder_that_names_a_factory_is_read_but_never_runs_it(tmp_path, monkeypatch, capsys, cifar_root):
    """A folder someone else made (or an earlier run whose command line named a factory): its
    study.json names the factory. Reporting imports nothing; resuming runs what the command line
    names, so the factory must be named again (otherwise it is another grid)."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "st"
    folder.mkdir()
    study = build_study("tv", "cpu", overrides=["model='os:system'", "model_options={command: 'touch MARKER'}",
                                                "images=[0]", "alphas=[0.0]"])
    (folder / "study.json").write_text(json.dumps({"study": "tv", "preset": "cpu",
                                                   "settings": study.settings.model_dump(mode="json")}))
    with ResultsDB(folder / "results.sqlite"):
        pass
    fedleak(monkeypatch, capsys, "report", str(folder))  # whatever it makes of an empty study, it imports nothing
    assert not (tmp_path / "MARKER").exists()
    loaded, *_ = load_study(folder)
    with pytest.raises(ConfigError, match="--trust-config"):
        run_study(loaded, "cpu", folder, progress=False)
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "-q", "--out", str(folder), "--set", "images=[0]",
                           "--set", "alphas=[0.0]", "--root", str(cifar_root))
    assert code == 2 and "holds another grid" in one_error_line(err)
    assert not (tmp_path / "MARKER").exists()


# ------------------------------------------------------------------ 3. client seeds from the folder's secret

def planned_study(name):
    return build_study(name, "cpu", overrides=["images=[0]"] if name != "sweep" else None)


STUDY_NAMES = [n for n in STUDIES.names() if not getattr(STUDIES.get(n), "live", False)]


@pytest.mark.parametrize("name", STUDY_NAMES)
def test_no_study_plans_a_client_seed_anyone_could_compute(name):
    study = planned_study(name)
    planned = plan(study)
    assert planned
    keys = [p.key for p in planned]
    for p in planned:  # nothing public — the flags, the config, the key's input — holds a client seed
        assert "client.seed" not in p.run.flags and p.config.client.seed is None and p.spec.client_seed is None
    seeds = {}
    for folder in ("a", "b", "a"):
        secret = bytes([ord(folder)]) * 32
        seed_runs(study, planned, secret)
        assert [p.key for p in planned] == keys  # the seed is no part of the run's key
        seeds.setdefault(folder, [p.spec.client_seed for p in planned])
        assert [p.spec.client_seed for p in planned] == seeds[folder]  # the same folder: the same seeds
    assert all(a != b for a, b in zip(seeds["a"], seeds["b"]))  # another folder, the same settings: others
    for p in planned:  # the run executes and records the seed it was given
        again = pickle.loads(pickle.dumps(p.spec))
        assert again.run_config().client.seed == p.spec.client_seed == again.seeded_config()["client"]["seed"]
        assert p.spec.config["client"]["seed"] is None


def test_every_server_and_defense_of_a_secure_aggregation_cell_attacks_the_same_batches():
    study = planned_study("secure-aggregation")
    planned = plan(study)
    seed_runs(study, planned, b"\x01" * 32)
    by_cell = {}
    for p in planned:
        cell = (p.run.params["batch"], p.run.params["clients"], p.run.params["seed"])
        by_cell.setdefault(cell, set()).add(p.spec.client_seed)
    assert all(len(s) == 1 for s in by_cell.values()) and len(by_cell) > 1
    assert len({next(iter(s)) for s in by_cell.values()}) == len(by_cell)


def test_a_users_own_client_seed_is_mixed_in_and_an_explicit_one_is_kept():
    secret = b"\x02" * 32
    study = build_study("tv", "cpu", overrides=["images=[0]", "alphas=[0.0]"])
    planned = plan(study)
    seed_runs(study, planned, secret)
    other = build_study("tv", "cpu", overrides=["images=[0]", "alphas=[0.0]", "client_seed=5"])
    mixed = plan(other)
    seed_runs(other, mixed, secret)
    assert [p.key for p in mixed] == [p.key for p in planned]
    assert mixed[0].spec.client_seed != planned[0].spec.client_seed
    assert mixed[0].spec.client_seed == client_seed(secret, 5, {"key": mixed[0].key})
    fixed = build_study("tv", "cpu", overrides=["images=[0]", "alphas=[0.0]", "client={seed: 9}"])
    explicit = plan(fixed)
    seed_runs(fixed, explicit, secret)
    assert explicit[0].spec.client_seed is None and explicit[0].spec.run_config().client.seed == 9


def test_a_folder_keeps_one_private_secret_and_resuming_keeps_the_seeds(tmp_path, cifar_root, monkeypatch):
    import fedleak.report.study

    monkeypatch.setattr(fedleak.report.study, "write_report", lambda folder: folder)  # the seeds, not the report
    study = build_study("tv", "cpu", overrides=[f"root={cifar_root}", "image_size=8", "model=lenet", "width=1.0",
                                                "attack.iterations=2", "images=[0]", "alphas=[0.0]",
                                                "client_seed=3"])
    out = tmp_path / "st"
    first = run_study(study, "cpu", out, progress=False)
    assert first.ran == 1
    path = out / SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    secret = read_secret(out)
    assert secret.hex() not in (out / "study.json").read_text()
    with ResultsDB(out / "results.sqlite") as db:
        [record] = db.records()
    expected = client_seed(secret, 3, {"key": record.key})
    assert record.metrics["client_seed"] == expected and record.config["client"]["seed"] == expected
    again = run_study(study, "cpu", out, progress=False)  # resumed: the same secret, nothing redone
    assert (again.ran, again.skipped) == (0, 1) and read_secret(out) == secret
    path.unlink()  # a folder written before folders had secrets: one is drawn, its finished runs stay
    older = run_study(study, "cpu", out, progress=False)
    assert (older.ran, older.skipped) == (0, 1) and read_secret(out) not in (None, secret)
    path.write_text("not hex\n")
    with pytest.raises(Exception, match="damaged"):
        run_study(study, "cpu", out, progress=False)


def test_racing_processes_agree_on_one_secret(tmp_path):
    first = folder_secret(tmp_path)
    assert folder_secret(tmp_path) == first
    assert folder_secret(tmp_path, first) == first
    with pytest.raises(Exception, match="another client secret"):
        folder_secret(tmp_path, b"\x03" * 32)
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # no temporary file left


# ---------------------------------------------------------------------------------------- 10. size bounds

def test_a_huge_config_file_is_refused_before_it_is_parsed(tmp_path, monkeypatch, capsys):
    big = tmp_path / "big.yaml"
    with big.open("w") as f:
        for i in range(100_000):
            f.write(f"key_{i:07d}_padding: {i}\n")  # > 1 MiB of keys
    assert big.stat().st_size > 1 << 20
    for command in (["attack", "--print-config"], ["study", "tv", "-q"],
                    ["sweep", "-q", "--grid", "attack.tv=0.1"]):
        code, _, err = fedleak(monkeypatch, capsys, *command, "--config", str(big), "--out", str(tmp_path / "o"))
        assert code == 2 and "larger than 1 MiB" in one_error_line(err)


def test_yaml_values_are_counted_while_the_document_is_read(monkeypatch):
    import fedleak.config_yaml as config

    monkeypatch.setattr(config, "MAX_YAML_NODES", 1000)

    def never(*args, **kwargs):
        raise AssertionError("the whole document was composed first")

    monkeypatch.setattr(config, "_expanded_size", never)
    with pytest.raises(ConfigError, match="more than 1,000 values"):
        load_yaml("".join(f"k{i}: {i}\n" for i in range(2000)))


def test_a_grid_of_a_billion_cells_is_refused_from_its_lengths(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    grid = [a for k in range(9) for a in ("--grid", f"attack.k{k}=" + ",".join(str(v) for v in range(10)))]
    code, _, err = fedleak(monkeypatch, capsys, "sweep", "-q", *grid)
    assert code == 2 and "1,000,000,000 runs" in one_error_line(err)


@pytest.mark.parametrize("option", ["--images", "--seeds"])
def test_an_enormous_index_range_is_refused_before_it_is_written_out(tmp_path, monkeypatch, capsys, option):
    monkeypatch.chdir(tmp_path)
    code, _, err = fedleak(monkeypatch, capsys, "sweep", "-q", "--grid", "attack.tv=0.1", option, "0-999999999999")
    assert code == 2 and "more than 100,000 values" in one_error_line(err)


def test_a_very_deep_key_is_refused_naming_the_limit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    deep = ".".join(["a"] * 10_000)
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--print-config", "--set", f"{deep}=1")
    assert code == 2 and "at most 16" in one_error_line(err)
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "-q", "--set", f"{deep}=1")
    assert code == 2 and "at most 16" in one_error_line(err)
    code, _, err = fedleak(monkeypatch, capsys, "sweep", "-q", "--grid", f"{deep}=1,2")
    assert code == 2 and "at most 16" in one_error_line(err)
    assert len(one_error_line(err)) < 400
