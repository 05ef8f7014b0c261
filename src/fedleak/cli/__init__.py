"""The ``fedleak`` command line (Typer). Bad input ends with one line on stderr and exit code 2.

The commands live by topic: :mod:`~fedleak.cli.attack` (attack, config), :mod:`~fedleak.cli.train`
(train, train-prior), :mod:`~fedleak.cli.studies` (study, sweep, report), :mod:`~fedleak.cli.models`
(inspect-model, weights fetch) and :mod:`~fedleak.cli.runs` (runs list/show/export); what they share
is in :mod:`~fedleak.cli.common`. Those modules import torch and most of fedleak, so this package
imports none of them up front: :data:`COMMANDS` names each command as ``"module:attribute"`` with the
line ``fedleak --help`` lists for it, in the order it lists them. A listing (``fedleak --help``,
``fedleak runs --help``) is read from the table; a command's module is imported when anything else
is asked of the command: running it, its options, its own ``--help``. The command modules are also
attributes of this package (``fedleak.cli.attack``), imported on first access."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from typer.core import TyperGroup

from fedleak.cli.common import _state, console
from fedleak.exits import INTERRUPTED, USER_ERROR, one_line, report

if TYPE_CHECKING:
    from click import Command

try:  # Typer ≥ 0.22 vendors its own copy of Click
    from typer._click import exceptions as _cli_errors  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - older Typer on top of Click
    from click import exceptions as _cli_errors

__all__ = ["COMMANDS", "app", "console", "main"]


@dataclass(frozen=True)
class Entry:
    """A command of :data:`COMMANDS`: where it is, and what a listing shows for it."""

    target: str  # "module:attribute": a command function, or the Typer app of a group's subcommands
    help: str  # the first paragraph of the command's help, on one line: its line in a listing
    commands: Mapping[str, str] = field(default_factory=dict)  # a group's subcommands: name → line, listed in order


COMMANDS: dict[str, Entry] = {
    "attack": Entry("fedleak.cli.attack:attack",
                    "Attack one client update and write config, metrics, images and an HTML report."),
    "train": Entry("fedleak.cli.train:train",
                   "Train a target model and save it as a checkpoint for `fedleak attack --checkpoint`."),
    "train-prior": Entry("fedleak.cli.train:train_prior",
                         "Train one of ROG's learned priors on public images, for `attack --prior`: the restoration "
                         "network, or (--kind semantic) the class-conditional generator of its semantic-level variant."),
    "study": Entry("fedleak.cli.studies:study",
                   "Run a named study (a grid of runs), resuming what its folder holds, then write its report."),
    "sweep": Entry("fedleak.cli.studies:sweep",
                   "Run `fedleak attack` over a grid of any config settings × images × seeds, as one study: one "
                   "results database (resumed when run again), a report with one table row per grid cell (n, mean "
                   "and 95 % CI of PSNR, SSIM, LPIPS), `fedleak runs export`."),
    "report": Entry("fedleak.cli.studies:report",
                    "Rebuild a study's report (table, figures, grid, HTML) from its results database."),
    "inspect-model": Entry("fedleak.cli.models:inspect_model_cmd",
                           "Check a model for imprint-like or fishing-like structure before training on it: exit 0 "
                           "when nothing is found, 3 when a layer looks built to leak, 2 when there is nothing to "
                           "check (no weight matrix: tensors are inspected by shape, whatever their names)."),
    "config": Entry("fedleak.cli.attack:config_cmd",
                    "Print an attack's settings as YAML: each with its default (a preset's values where it sets "
                    "them), type and description. Set them with --set attack.KEY=VALUE or a config file's attack "
                    "section. For a model: its config section, options and card (input size, normalisation); "
                    "`models` lists every card."),
    "runs": Entry("fedleak.cli.runs:runs_app", "Inspect a study's results database.", {
        "list": "One line per finished run: key, name, PSNR and SSIM beside their no-leak baselines (flagged where "
                "the run does no better), seconds; for a Flower audit, one per audited update: round, client, risk, "
                "verdict, update fit, images, the class counts recovered (class: count), the share an imprint server "
                "would recover exactly, PSNR where scored (with --failed: "
                "each failed run's error and attempts; the next `fedleak study`/`sweep` into the folder retries them).",
        "show": "Everything stored about one run, as JSON.",
        "export": "Export every run's parameters and metrics.",
    }),
    "weights": Entry("fedleak.cli.models:weights_app", "Weight files for metrics, downloaded only when you ask.", {
        "fetch": "Download LPIPS's backbone (torchvision) and linear layers (LPIPS v0.1), SHA-256 checked.",
    }),
}
"""``fedleak``'s commands in the order ``fedleak --help`` lists them (tests/test_cli_startup.py checks
each line against the command's docstring, and each command against its module)."""

_MODULES = sorted({entry.target.partition(":")[0].rpartition(".")[2] for entry in COMMANDS.values()})


def load(name: str, target: str) -> Command:
    """The command ``target`` (``"module:attribute"``) names, built as ``app.command(name)`` or
    ``app.add_typer(…, name=name)`` builds it: the one place a command's module is imported."""
    module, _, attribute = target.partition(":")
    found = getattr(importlib.import_module(module), attribute, None)
    if found is None:
        raise LookupError(f"fedleak.cli.COMMANDS names {target}, which does not exist")
    holder = typer.Typer()
    if isinstance(found, typer.Typer):
        holder.add_typer(found, name=name)
    else:
        holder.command(name)(found)
    return typer.main.get_group(holder).commands[name]


class _Lazy:
    """A command of :data:`COMMANDS` before it is needed. A listing reads its name, its line and
    whether it is hidden or deprecated (neither) without importing anything; any other attribute —
    its options, ``make_context`` to run it or show its own help — is the loaded command's."""

    hidden = False
    deprecated = False
    short_help = None
    rich_help_panel = None

    def __init__(self, name: str, help: str, target: str, group: str | None = None) -> None:
        self.name, self.help = name, help
        self._target, self._group = target, group
        self._command: Command | None = None

    def __getattr__(self, attribute: str) -> Any:  # only for what the stand-in does not hold itself
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        if self._command is None:
            self._command = (load(self.name, self._target) if self._group is None
                             else cast(TyperGroup, load(self._group, self._target)).commands[self.name])
        return getattr(self._command, attribute)


def _listed(name: str, entry: Entry) -> Command:
    """``name``'s place in its group: a stand-in for a command; for a group of subcommands a group
    listed from the table too (``fedleak runs --help``), with a stand-in for each subcommand."""
    if not entry.commands:
        return cast("Command", _Lazy(name, entry.help, entry.target))
    commands = {sub: cast("Command", _Lazy(sub, line, entry.target, group=name)) for sub, line in entry.commands.items()}
    return TyperGroup(name=name, help=entry.help, no_args_is_help=True, commands=commands)


class _Fedleak(TyperGroup):
    """The ``fedleak`` group: Typer's, holding the commands of :data:`COMMANDS`."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands.update({name: _listed(name, entry) for name, entry in COMMANDS.items()})


app = typer.Typer(
    cls=_Fedleak,
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


def __getattr__(name: str) -> Any:
    """The command modules (``fedleak.cli.attack`` …), imported on first access."""
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})


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
