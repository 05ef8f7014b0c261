"""How the command line ends: Ctrl-C, user errors, bugs (--debug), and the config printers."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from fedleak.attacks.base import ATTACKS
from fedleak.exits import user_message
from tests.test_cli import fedleak as run_cli

def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """``fedleak ARGS`` in a child process that takes Ctrl-C as a terminal would (SIGINT is not
    ignored, even where the test runner's own shell ignores it)."""
    return subprocess.Popen([sys.executable, "-m", "fedleak.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    """Poll ``condition`` until it holds; the child must still be running then."""
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"fedleak exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]!r}")
        time.sleep(0.02)


def interrupt(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err.decode()


def test_ctrl_c_mid_attack_exits_130_and_leaves_no_folder(tmp_path):
    proc = cli("attack", "--image-size", "8", "--model", "lenet", "--iterations", "1000000", "--out", "run",
               cwd=tmp_path)
    seen = bytearray()

    def read() -> None:  # the progress bar on stderr shows the attack is iterating
        while chunk := proc.stderr.read1(4096):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: b"it/s" in seen, proc, "the attack started")
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    err = seen.decode(errors="replace")
    assert code == 130
    assert err.replace("\r", "\n").strip().splitlines()[-1] == "fedleak: interrupted"
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]  # no temporary sibling either


def test_ctrl_c_mid_study_keeps_committed_runs(tmp_path, cifar_root):
    out = tmp_path / "st"
    proc = cli("study", "tv", "-q", "--out", str(out), "--set", f"root={cifar_root}", "--set", "image_size=8",
               "--set", "model=lenet", "--set", "width=1.0", "--set", "images=[0]",
               "--set", "alphas=[0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]", "--set", "attack.iterations=100",
               cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "no-weights")})

    def committed() -> int:
        if not (out / "results.sqlite").exists():
            return 0
        try:
            with sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True) as conn:
                return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0

    wait_for(lambda: committed() >= 1, proc, "a run was committed")
    code, err = interrupt(proc)
    assert code == 130 and err.strip().splitlines()[-1] == "fedleak: interrupted" and "Traceback" not in err
    kept = committed()
    assert 1 <= kept < 10 and (out / "study.json").is_file()
    with sqlite3.connect(out / "results.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # the interrupted run's claim is gone


def test_typer_exit_code_130_is_not_dropped(monkeypatch, capsys):
    # Typer (standalone_mode=False) turns KeyboardInterrupt into a *returned* 130; main() used to drop it.
    import fedleak.cli.attack

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedleak.cli.attack, "build_attack", interrupted)  # what `config` calls
    code, out, err = run_cli(monkeypatch, capsys, "config", "ig")
    assert code == 130 and err == "fedleak: interrupted\n" and out == ""


def test_a_bug_is_one_line_exit_1_with_the_traceback_only_under_debug(monkeypatch, capsys):
    import fedleak.cli.attack

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(fedleak.cli.attack, "build_attack", broken)
    code, _, err = run_cli(monkeypatch, capsys, "config", "ig")
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("fedleak: internal error: RuntimeError: boom second line — please report it")
    assert "--debug" in err
    code, _, err = run_cli(monkeypatch, capsys, "--debug", "config", "ig")
    assert code == 1 and "Traceback (most recent call last)" in err and "fedleak: internal error:" in err


@pytest.mark.parametrize("exc, message", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/mnt/out/run"), "No space left on device: '/mnt/out/run'"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/x.csv"), "read-only file system: '/ro/x.csv'"),
    (FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "a", None, "b"), "No such file or directory: 'a' → 'b'"),
    (sqlite3.DatabaseError("file is not a database"), "database error: file is not a database"),
    (yaml.YAMLError("bad\n  indentation"), "invalid YAML: bad indentation"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not UTF-8"),
])
def test_library_and_os_errors_are_user_errors(exc, message):
    assert message in user_message(exc)


def test_bugs_are_not_user_errors_and_long_messages_are_cut():
    from fedleak.errors import FedleakError

    assert user_message(RuntimeError("x")) is None and user_message(KeyError("k")) is None
    line = user_message(FedleakError("x" * 100000))
    assert len(line) <= 400 and line.endswith("…")


def test_pillow_and_safetensors_errors_are_user_errors():
    from PIL import Image
    from safetensors import SafetensorError

    assert "image refused" in user_message(Image.DecompressionBombError("Image size (1 pixels) exceeds limit"))
    assert "safetensors" in user_message(SafetensorError("header too large"))


def test_print_config_shows_every_setting_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "attack", "--print-config", "--attack", "ig-limchan",
                             "--set", "attack.tv=0.5", "--seed", "3")
    assert code == 0 and err == ""
    tree = yaml.safe_load(out)
    assert set(tree) >= {"seed", "data", "model", "client", "knowledge", "attack", "metrics"} and tree["seed"] == 3
    cls = ATTACKS.get("ig")
    assert set(tree["attack"]) == {"name", *cls.Config.model_fields}  # the attack's every setting, defaults in
    assert tree["attack"]["tv"] == 0.5 and tree["attack"]["name"] == "ig-limchan"
    assert tree["client"]["batch_size"] == 1 and "lr" in tree["client"]
    assert list(tmp_path.iterdir()) == []  # no run folder
    (tmp_path / "printed.yaml").write_text(out)  # what it prints is a config that resolves to itself
    code, again, _ = run_cli(monkeypatch, capsys, "attack", "-c", "printed.yaml", "--print-config")
    assert code == 0 and yaml.safe_load(again) == tree


@pytest.mark.parametrize("name", ATTACKS.names())
def test_config_command_lists_each_setting_with_default_and_description(name, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "config", name)
    assert code == 0
    attack = yaml.safe_load(out)["attack"]
    fields = ATTACKS.get(name).Config.model_fields
    assert attack.pop("name") == name
    assert set(attack) == set(fields)
    for key, info in fields.items():
        default = info.get_default(call_default_factory=True)
        assert attack[key] == (list(default) if isinstance(default, tuple) else default)
        line = next(line for line in out.splitlines() if line.startswith(f"  {key}:"))
        assert "#" in line and (info.description or "") in line


def test_config_command_shows_a_presets_values(monkeypatch, capsys):
    from fedleak.presets import load_preset

    preset = load_preset("ig-limchan")
    code, out, _ = run_cli(monkeypatch, capsys, "config", "ig-limchan")
    assert code == 0 and "a preset of ig" in out
    attack = yaml.safe_load(out)["attack"]
    assert all(attack[k] == v for k, v in preset.items() if k != "name")
