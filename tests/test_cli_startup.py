"""`fedleak --help` imports no command module (issue 22): the listing comes from the table
``fedleak.cli.COMMANDS``, and each command is loaded from its module when it is asked for. The table
is checked against the commands themselves: every line against its command's docstring, every command
(its options, its own ``--help``) against the one the module's function or Typer app makes when it is
registered directly, as ``fedleak.cli`` registered them before."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import fedleak.cli
from fedleak.cli import COMMANDS, app, attack, load, models, runs, studies, train

HEAVY = ("torch", "scipy", "flwr", "ray")
COMMAND_MODULES = {f"fedleak.cli.{name}" for name in ("attack", "models", "runs", "studies", "train")}

# Runs the command line in a fresh interpreter, then names (on stderr's last line) the heavy packages
# and the command modules it has imported.
PROBE = f"""
import sys
from fedleak.cli import main
try:
    main(sys.argv[1:])
finally:  # main's exit status is the process's
    loaded = [m for m in sys.modules if m in {set(HEAVY)} or m in {COMMAND_MODULES}]
    print("loaded:", *sorted(loaded), file=sys.stderr)
"""


def probe(*argv: str, cwd) -> tuple[int, str, list[str], set[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    *err, last = done.stderr.splitlines()
    assert last.startswith("loaded:"), done.stderr[-2000:]
    return done.returncode, done.stdout, err, set(last.split()[1:])


@pytest.mark.parametrize("argv", [["--help"], [], ["runs", "--help"], ["runs"], ["weights", "--help"]])
def test_a_listing_imports_no_command_module_nor_torch_scipy_flwr_ray(argv, tmp_path):
    code, out, err, loaded = probe(*argv, cwd=tmp_path)
    assert loaded == set()
    assert code == (2 if argv in ([], ["runs"]) else 0) and err == []  # no arguments: the help, and exit 2
    listed = COMMANDS if argv[:1] != ["runs"] and argv[:1] != ["weights"] else COMMANDS[argv[0]].commands
    rows = [line.split()[1] for line in out.splitlines() if line.startswith("│ ") and line[2] != " "]  # not a wrap
    assert rows[-len(listed):] == list(listed)  # every command, in the table's order (after the options)


def test_an_unknown_command_is_one_line_and_exit_2_without_loading_any(tmp_path):
    code, out, err, loaded = probe("atack", cwd=tmp_path)
    assert (code, out, len(err), loaded) == (2, "", 1, set())
    assert err[0].startswith("fedleak: error: No such command 'atack'.") and "'attack'" in err[0]  # and the likely one


def test_the_command_modules_are_attributes_of_the_package_imported_on_first_access(tmp_path):
    """And the check above can fail: accessing a command module imports it, and torch with it."""
    script = ("import sys, fedleak.cli as cli\n"
              "assert 'fedleak.cli.runs' not in sys.modules and 'torch' not in sys.modules and 'runs' in dir(cli)\n"
              "assert cli.runs is sys.modules['fedleak.cli.runs'] and 'torch' in sys.modules\n"
              "try:\n    cli.nothing\nexcept AttributeError:\n    print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout == "ok\n", done.stderr[-2000:]


def first_paragraph(help_text: str | None) -> str:
    return " ".join(inspect.cleandoc(help_text or "").split("\n\n")[0].split())


def test_each_listed_line_is_the_first_paragraph_of_its_commands_help():
    for name, entry in COMMANDS.items():
        command = load(name, entry.target)
        assert first_paragraph(command.help) == entry.help, name
        # what the stand-in answers a listing (no panel: Typer's placeholder for none is false)
        assert not (command.hidden or command.deprecated or command.short_help or command.rich_help_panel), name
        subcommands = getattr(command, "commands", {})
        assert list(subcommands) == list(entry.commands), name
        for sub, line in entry.commands.items():
            assert first_paragraph(subcommands[sub].help) == line, f"{name} {sub}"
            assert not subcommands[sub].hidden and not subcommands[sub].deprecated


def registered_directly() -> typer.Typer:
    """The ``fedleak`` app as it was registered before the table: each command from its module."""
    eager = typer.Typer(help="Measure how much private data leaks from federated-learning updates.",
                        no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    eager.callback()(fedleak.cli._main)
    eager.command()(attack.attack)
    eager.command()(train.train)
    eager.command("train-prior")(train.train_prior)
    eager.command()(studies.study)
    eager.command()(studies.sweep)
    eager.command()(studies.report)
    eager.command("inspect-model")(models.inspect_model_cmd)
    eager.command("config")(attack.config_cmd)
    eager.add_typer(runs.runs_app, name="runs")
    eager.add_typer(models.weights_app, name="weights")
    return eager


def test_every_command_is_the_one_its_module_registers():
    """Same names in the same order, and for every command and subcommand the same options and the
    same ``--help`` page as the command registered directly; a group's own settings as its Typer app's."""
    lazy, eager = typer.main.get_command(app), typer.main.get_command(registered_directly())
    assert list(lazy.commands) == list(eager.commands) == list(COMMANDS)
    assert [p.opts for p in lazy.params] == [p.opts for p in eager.params]
    runner = CliRunner()
    paths = [[n] for n in COMMANDS] + [[n, s] for n, e in COMMANDS.items() for s in e.commands]
    for path in paths:
        mine, theirs = lazy, eager
        for part in path:
            mine, theirs = mine.commands[part], theirs.commands[part]
        assert [(p.name, p.opts, p.help) for p in mine.params] == [(p.name, p.opts, p.help) for p in theirs.params]
        if len(path) == 1 and COMMANDS[path[0]].commands:  # a group: listed from the table, run as its app's
            assert (mine.no_args_is_help, mine.callback, mine.invoke_without_command) \
                == (theirs.no_args_is_help, theirs.callback, theirs.invoke_without_command), path
            continue
        pages = [runner.invoke(cli, [*path, "--help"], prog_name="fedleak", env={"COLUMNS": "120"})
                 for cli in (app, registered_directly())]
        assert pages[0].exit_code == pages[1].exit_code == 0, path
        assert pages[0].output == pages[1].output and f"fedleak {' '.join(path)} [OPTIONS]" in pages[0].output
