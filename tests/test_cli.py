"""End to end through the command line, on 8×8 images and a few iterations."""

import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import yaml

from fedleak.cli import main
from fedleak.defenses import dp_epsilon

TINY = ["--set", "data.image_size=8", "--model", "lenet", "--iterations", "4", "-q"]


def fedleak(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fedleak", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_attack_writes_every_artifact(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, stdout, _ = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out), "--batch-size", "1")
    assert code == 0
    assert {p.name for p in out.iterdir()} == {
        "config.yaml", "metrics.json", "trace.json", "reconstruction.png", "report.html"
    }
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "ssim", "label_accuracy", "seconds", "iterations", "seed", "images"):
        assert key in metrics
    assert metrics["iterations"] == 4 and len(metrics["images"]) == 1
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["attack"]["tv"] == pytest.approx(1e-3) and config["attack"]["iterations"] == 4
    assert config["model"]["name"] == "lenet" and config["data"]["image_size"] == 8
    html = (out / "report.html").read_text()
    assert 'id="summary"' in html and "data:image/png;base64," in html
    from PIL import Image

    with Image.open(out / "reconstruction.png") as im:  # two rows of 32-px cells with 2-px padding
        assert im.size == (2 + 34, 2 + 2 * 34)
    assert "PSNR" in stdout


def test_config_file_and_batches(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data: {name: samples, image_size: 8, index: [1, 2, 3]}\n"
        "client: {batch_size: 3}\nknowledge: {labels: true}\nmodel: {name: lenet}\nthreat: C\n"
        "attack: {name: ig, iterations: 3, restarts: 2}\n"
    )
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "-c", str(cfg), "--out", str(out), "-q")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(i["dataset_index"] for i in metrics["images"]) == [1, 2, 3]
    assert metrics["label_accuracy"] == 1.0 and len(metrics["restart_losses"]) == 2


def test_same_seed_same_metrics(tmp_path, monkeypatch, capsys):
    seeds = ["--set", "client.seed=11"]  # the client's private seed; unset, each run draws a fresh one
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert fedleak(monkeypatch, capsys, "attack", *TINY, *seeds, "--seed", "7", "--out", str(out))[0] == 0
        m = json.loads((out / "metrics.json").read_text())
        results.append({k: m[k] for k in ("psnr", "ssim", "matching_loss", "images")})
    assert results[0] == results[1]
    other = tmp_path / "c"
    assert fedleak(monkeypatch, capsys, "attack", *TINY, *seeds, "--seed", "8", "--out", str(other))[0] == 0
    m = json.loads((other / "metrics.json").read_text())
    assert m["matching_loss"] != results[0]["matching_loss"]  # the seed matters: equal runs are not a constant


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--model", "vgg99"], "unknown model 'vgg99'"),
        (["--attack", "magic"], "unknown attack 'magic'"),
        (["--dataset", "mnist", "--root", "/nonexistent/data"], "does not exist"),
        (["--dataset", "mnist", "--root", "."], "MNIST file"),
        (["--index", "99"], "index 99 is out of range"),
        (["--set", "attack.iterations"], "malformed --set"),
        (["--set", "model.widht=2"], "unknown config key 'model.widht'"),
        (["--iterations", "0"], "attack.iterations"),
        (["--bogus-flag"], "No such option"),
        (["--config", "/nonexistent.yaml"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.delenv("FEDLEAK_DATA", raising=False)
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out), *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not any(tmp_path.iterdir())


def test_refuses_to_overwrite_a_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out))
    assert code == 2 and "not empty" in err and (out / "keep.txt").exists()
    assert fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out), "--force")[0] == 0
    assert not (out / "keep.txt").exists() and (out / "metrics.json").exists()


@pytest.mark.slow  # a fresh interpreter imports torch; test_console_script_entry_point is the quick check
def test_console_script_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedleak.cli", "attack", "--dataset", "nope", "--out", str(tmp_path / "r")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip().startswith("fedleak: error: unknown dataset")


def test_console_script_entry_point(tmp_path, monkeypatch, capsys):
    """The installed `fedleak` script calls fedleak.cli:main, and the process exit status is main's."""
    (script,) = entry_points(group="console_scripts", name="fedleak")
    assert script.load() is main
    monkeypatch.setattr(sys, "argv", ["fedleak", "attack", "--dataset", "nope", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exited:
        sys.exit(script.load()())  # what the generated script does
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().startswith("fedleak: error: unknown dataset")


@pytest.mark.parametrize(
    "args",
    [
        ["--attack", "dlg", "--iterations", "2", "--set", "attack.inner_steps=2"],
        ["--attack", "idlg", "--iterations", "2", "--set", "attack.inner_steps=2"],
        ["--attack", "ig-limchan", "--iterations", "3"],
        ["--protocol", "fedavg", "--local-steps", "2", "--set", "client.lr=0.1"],
        ["--batch-size", "2", "--set", "attack.labels=wainakh", "--set", "attack.restarts=2"],
    ],
)
def test_attacks_and_protocols_from_the_command_line(tmp_path, monkeypatch, capsys, args):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out), *args)
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    trace = json.loads((out / "trace.json").read_text())
    assert trace and "loss" in trace[0] and "seconds" in trace[0]
    assert trace[-1]["loss"] < trace[0]["loss"]  # the attack optimised its matching loss
    if "--protocol" in args:
        assert config["client"]["protocol"] == "fedavg" and config["client"]["local_steps"] == 2


def test_analytic_from_the_command_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--attack", "analytic", "--model", "mlp",
                           "--out", str(out), "-q")
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["psnr"] > 60
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--attack", "analytic", "--model", "lenet",
                           "--out", str(tmp_path / "r2"), "-q")
    assert code == 2 and "fully connected first layer" in err


def test_train_then_attack_the_checkpoint(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "lenet5.safetensors"
    code, stdout, err = fedleak(monkeypatch, capsys, "train", "--model", "lenet5", "--dataset", "samples",
                                "--epochs", "1", "--batch-size", "4", "--out", str(ckpt), "-q")
    assert code == 0, err
    assert ckpt.exists() and "test accuracy" in stdout
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--checkpoint", str(ckpt), "--iterations", "2",
                           "--out", str(out), "-q")
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["name"] == "lenet5" and config["model"]["checkpoint"] == str(ckpt)
    # the samples faces have 2 classes, the checkpoint 10
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--checkpoint", str(ckpt), "--set",
                           "data.options={subset: faces}", "--out", str(tmp_path / "r2"), "-q")
    assert code == 2 and "10 classes" in err and len(err.strip().splitlines()) == 1
    code, _, err = fedleak(monkeypatch, capsys, "train", "--model", "lenet5", "--dataset", "samples",
                           "--out", str(ckpt), "-q")
    assert code == 2 and "exists" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "resnet18", "--dataset", "nope"], "unknown dataset"),
        (["train", "--model", "nope", "--dataset", "samples"], "unknown model"),
        (["train", "--model", "lenet5", "--dataset", "samples", "--epochs", "0"], "epochs"),
        (["train", "--model", "lenet5", "--dataset", "samples", "--out", "x.pt"], "must end in .safetensors"),
        (["attack", "--checkpoint", "CORRUPT"], "corrupt"),
        (["attack", "--checkpoint", "MISSING"], "not found"),
    ],
)
def test_train_and_checkpoint_bad_input(tmp_path, monkeypatch, capsys, args, message):
    corrupt = tmp_path / "c.safetensors"
    corrupt.write_bytes(b"not a checkpoint at all")
    args = [str(corrupt) if a == "CORRUPT" else str(tmp_path / "m.safetensors") if a == "MISSING" else a
            for a in args]
    monkeypatch.chdir(tmp_path)
    code, _, err = fedleak(monkeypatch, capsys, *args, "-q")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_defense_and_rog_end_to_end(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out), "--attack", "rog",
                           "--defense", "clip:c=1+topk:sparsity=0.9", "--set", "attack.matching=auto")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["defense"] == "clip:c=1.0,scope=global+topk:sparsity=0.9,scope=tensor"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["client"]["defense"] == "clip:c=1+topk:sparsity=0.9" and config["attack"]["scale"] == 2
    html = (out / "report.html").read_text()
    assert 'id="defense"' in html and "topk" in html and "sparsity=0.9" in html


def test_dp_run_reports_epsilon(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out),
                           "--defense", "dpsgd:clip=1,noise_multiplier=1.1")
    assert code == 0, err
    privacy = json.loads((out / "metrics.json").read_text())["privacy"]["dpsgd"]
    assert 0 < privacy["epsilon"] < 100 and privacy["delta"] == 1e-5
    # One FedSGD step on the whole batch: the accountant's ε for q = 1, one step, σ = 1.1.
    assert (privacy["sample_rate"], privacy["steps"]) == (1.0, 1)
    assert privacy["epsilon"] == pytest.approx(dp_epsilon(1.1, 1.0, 1, 1e-5))
    html = (out / "report.html").read_text()
    assert "ε = " in html and privacy["sampling"] in html  # the report says what the ε assumes


@pytest.mark.parametrize(
    "spec, message",
    [
        ("quantize:bits=0", "defense 'quantize': bits"),
        ("topk:sparsity=1", "defense 'topk': sparsity"),
        ("topk:keep=3", "has no setting 'keep'"),
        ("zip:level=9", "unknown defense 'zip'"),
    ],
)
def test_impossible_defense_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, spec, message):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out), "--defense", spec)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_train_prior_then_attack_with_it(tmp_path, monkeypatch, capsys, cifar_root):
    prior = tmp_path / "prior.safetensors"
    code, stdout, err = fedleak(monkeypatch, capsys, "train-prior", "--dataset", "cifar10", "--root",
                                str(cifar_root), "--image-size", "8", "--epochs", "2", "--width", "4",
                                "--depth", "3", "--batch-size", "8", "--out", str(prior), "-q")
    assert code == 0, err
    assert prior.is_file() and "prior PSNR" in stdout
    code, _, err = fedleak(monkeypatch, capsys, "train-prior", "--dataset", "cifar10", "--root",
                           str(cifar_root), "--out", str(prior), "-q")
    assert code == 2 and "exists" in err
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out), "--attack", "rog",
                           "--prior", str(prior), "--threat", "E")
    assert code == 0, err
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(tmp_path / "r2"), "--attack",
                           "rog", "--prior", str(tmp_path / "missing.safetensors"), "--threat", "E")
    assert code == 2 and "not found" in err and not (tmp_path / "r2").exists()


def test_attack_options_that_set_one_config_key_come_from_one_table():
    """`fedleak attack`'s one-to-one options: each in FLAGS, its parameter the one config_flags reads,
    its help the config field's description (unless HELP words it for the command line)."""
    import typer

    from fedleak.cli import app
    from fedleak.cli.attack import FLAGS, HELP, PARAMETERS, field_help

    params = {p.opts[0]: p for p in typer.main.get_command(app).commands["attack"].params if p.opts}
    assert set(FLAGS) <= set(params)
    for flag, key in FLAGS.items():
        assert params[flag].name == PARAMETERS.get(flag, flag[2:].replace("-", "_"))
        assert params[flag].help == (HELP[flag] if flag in HELP else field_help(key)) and params[flag].help
    assert len(FLAGS) - len(HELP) >= 19  # the rest: the config model's descriptions
    assert field_help("client.batch_size") == "images in the client batch"
    assert field_help("attack.iterations") == "optimisation steps"  # the default attack's (ig), not DLG's L-BFGS


def test_python_dash_m_fedleak_runs_the_command_line():
    # the device machine installs with --target and has no console script: `python -m fedleak` is its entry
    done = subprocess.run([sys.executable, "-m", "fedleak", "study", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "Usage: fedleak study" in done.stdout
