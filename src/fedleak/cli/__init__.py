"""The ``fedleak`` command line (Typer). Bad input ends with one line on stderr and exit code 2.

The commands live by topic, each registered here in the order ``fedleak --help`` lists them:
:mod:`~fedleak.cli.attack` (attack, config), :mod:`~fedleak.cli.train` (train, train-prior),
:mod:`~fedleak.cli.studies` (study, sweep, report), :mod:`~fedleak.cli.models` (inspect-model,
weights fetch) and :mod:`~fedleak.cli.runs` (runs list/show/export); what they share is in
:mod:`~fedleak.cli.common`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from fedleak.cli import attack, models, runs, studies, train
from fedleak.cli.common import _state, console
from fedleak.exits import INTERRUPTED, USER_ERROR, one_line, report

try:  # Typer ≥ 0.22 vendors its own copy of Click
    from typer._click import exceptions as _cli_errors  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - older Typer on top of Click
    from click import exceptions as _cli_errors

__all__ = ["app", "console", "main"]

app = typer.Typer(
    help="Measure how much private data leaks from federated-learning updates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="print the traceback of an error as well")] = False,
) -> None:
    """fedleak: simulate FL clients, attack what the server sees, score and report."""
    _state["debug"] = debug


app.command()(attack.attack)
app.command()(train.train)
app.command("train-prior")(train.train_prior)
app.command()(studies.study)
app.command()(studies.sweep)
app.command()(studies.report)
app.command("inspect-model")(models.inspect_model_cmd)
app.command("config")(attack.config_cmd)
app.add_typer(runs.runs_app, name="runs")
app.add_typer(models.weights_app, name="weights")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app; how it ends is decided in :mod:`fedleak.exits` (user
    errors one line and exit 2, Ctrl-C exit 130, bugs one line and exit 1)."""
    _state["debug"] = False
    try:
        # Not standalone: Typer would print its own errors, and it turns Ctrl-C into a *returned*
        # exit code 130 (``Exit(130)``), which we must pass on rather than drop.
        code = typer.main.get_command(app).main(args=argv, prog_name="fedleak", standalone_mode=False)
    except _cli_errors.ClickException as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has already printed the help
            print(f"fedleak: error: {one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(USER_ERROR)
    except typer.Abort:  # end of input at a prompt
        code = INTERRUPTED
    except typer.Exit as exc:
        code = exc.exit_code
    except BrokenPipeError:  # output piped into a closed reader, e.g. `| head`
        sys.exit(1)
    except Exception as exc:
        sys.exit(report(exc, _state["debug"]))
    except KeyboardInterrupt as exc:  # outside Typer's own handling (e.g. while it starts)
        sys.exit(report(exc))
    if code == INTERRUPTED:
        print("fedleak: interrupted", file=sys.stderr)
    if code:
        sys.exit(code)
