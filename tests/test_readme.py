"""Every command in the README runs as written (issue 21, item 17).

The README's shell blocks are read as a user would copy them: continuation lines joined, comments
dropped, ``pip install`` left to CI (which runs exactly those lines) and ``ray start`` to the Ray tests.
The files the README shows (a YAML block whose first line is ``# NAME.yaml``) are written first, and
``../shared/data`` is the shared data beside the checkout, so the test skips where that folder is
absent. To fit the default suite, every attack is capped at 3 iterations and studies and sweeps stop
after their plan and pre-run check (settings, data, images, models: what failed as written before);
everything else runs to the end. The ``slow`` test runs the studies that need no cluster to the end."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SHARED = README.parent.parent / "shared" / "data"
CAP = 3  # attack iterations in this test


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def readme_commands() -> list[str]:
    """Each ``fedleak …`` command of the README's bash blocks, as one line."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in (p.strip() for p in line.split("&&")):
                if part.startswith("fedleak "):
                    commands.append(part)
                else:  # what else a README block may hold, and who checks it
                    assert part == "" or part.startswith(("pip install", "python -m pytest", "ray start", "cd examples/", "FLWR_",
                                                          "--federation-config", "--run-config")), part
    return commands


def readme_files() -> dict[str, str]:
    files = {}
    for block in blocks("yaml"):
        first, _, body = block.partition("\n")
        if re.fullmatch(r"# [\w.-]+\.yaml", first.strip()):
            files[first.strip()[2:]] = body
    return files


def test_the_readme_shows_every_file_its_commands_name():
    files = readme_files()
    for command in readme_commands():
        for name in re.findall(r"--config (\S+)", command):
            assert name in files, f"{command!r} names {name}, which the README never shows"


def _cap_attacks(monkeypatch):
    """Every attack built anywhere runs at most CAP iterations."""
    import fedleak.attacks.base as base
    import fedleak.cli.attack  # noqa: F401  (the lazy CLI imports its commands when run: patch them all now)
    import fedleak.cli.studies  # noqa: F401

    real = base.build_attack

    def capped(name, settings=None):
        attack = real(name, settings)
        if getattr(attack.config, "iterations", 0) > CAP:
            attack.config = attack.config.model_copy(update={"iterations": CAP})
        return attack

    for module in [m for n, m in sys.modules.items() if n.startswith("fedleak") and m is not None]:
        if getattr(module, "build_attack", None) is real:
            monkeypatch.setattr(module, "build_attack", capped)


def _plan_only(monkeypatch, planned: list[int]):
    """Studies that need a cluster or a full preset: plan, and check before any run (the study's own
    pre-run check), then stop."""
    import fedleak.cli.studies as cli  # where `study` and `sweep` look _run_study up
    from fedleak.data import load_dataset
    from fedleak.studies.runner import plan, preflight

    def dry(s, *args, **kwargs):
        runs = plan(s)
        preflight(runs, load_dataset)
        planned.append(len(runs))

    monkeypatch.setattr(cli, "_run_study", dry)


def _needs_a_cluster(argv: list[str]) -> bool:
    return "--address" in argv or ("--backend" in argv and argv[argv.index("--backend") + 1] == "ray")


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data beside the checkout")
def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys):
    _run_readme(tmp_path, monkeypatch, capsys, plan_only=lambda argv: argv[0] in ("study", "sweep"))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data beside the checkout")
def test_every_readme_study_without_a_cluster_runs_to_the_end(tmp_path, monkeypatch, capsys):
    _run_readme(tmp_path, monkeypatch, capsys, plan_only=_needs_a_cluster)


def _run_readme(tmp_path, monkeypatch, capsys, plan_only):
    from tests.test_cli import fedleak

    project = tmp_path / "checkout"
    project.mkdir()
    (tmp_path / "shared").symlink_to(SHARED.parent)
    for name, text in readme_files().items():
        (project / name).write_text(text)
    monkeypatch.chdir(project)
    monkeypatch.delenv("FEDLEAK_DATA", raising=False)
    _cap_attacks(monkeypatch)
    commands = readme_commands()
    assert len(commands) >= 15
    ran = []
    for command in commands:
        argv = shlex.split(command.replace("HEAD", "127.0.0.1"))[1:]
        planned: list[int] = []
        if plan_only(argv):
            _plan_only(monkeypatch, planned)
        else:
            monkeypatch.undo()  # the plan-only patch of an earlier command
            monkeypatch.chdir(project)
            monkeypatch.delenv("FEDLEAK_DATA", raising=False)
            _cap_attacks(monkeypatch)
        code, out, err = fedleak(monkeypatch, capsys, *argv)
        assert code in (0, 3) if argv[0] == "inspect-model" else code == 0, f"{command}\n{err}"
        assert "error" not in err, f"{command}\n{err}"
        ran.append((command, planned))
    assert any(p for _, p in ran)  # the cluster commands planned their runs
