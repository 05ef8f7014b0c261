"""``fedleak study``, ``fedleak sweep`` (both run through :func:`_run_study`) and ``fedleak report``."""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import signal
import sys
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from fedleak.cli.common import MAX_SEED, TrustOption, _finite, console
from fedleak.errors import ConfigError, FedleakError
from fedleak.report.study import write_report
from fedleak.store import locked
from fedleak.studies import STUDIES, build_study, run_study
from fedleak.studies.backends import make_backend
from fedleak.studies.flower_audit import audit_folders
from fedleak.studies.grid_sweep import build_sweep
from fedleak.studies.runner import failures_summary

BackendOption = Annotated[str, typer.Option(help="where runs execute: local (this process) or ray (a Ray cluster)")]
AddressOption = Annotated[str | None, typer.Option(
    help="Ray cluster to join: auto, HOST:6379 (on a cluster node) or ray://HOST:10001 (default: start Ray here)")]
CpusOption = Annotated[int | None, typer.Option(help="CPU cores (torch threads) each Ray run reserves [1]")]
GpusOption = Annotated[float | None, typer.Option(
    help="GPUs each Ray run reserves; 0.5 lets two runs share a GPU [0]", callback=_finite)]
WorkersOption = Annotated[int | None, typer.Option(
    help="at most N runs at once on Ray (default: as many as the cluster's CPUs and GPUs hold)")]
StudyDeviceOption = Annotated[str | None, typer.Option(
    help="where every run computes: auto | cpu | cuda | cuda:N | mps [auto]; not part of a run's identity, "
         "so a folder started on one device resumes on another")]
BatchOption = Annotated[int | None, typer.Option(
    help="local backend: attack up to N runs together in one batched optimisation (those sharing model and "
         "attack settings: fills a GPU) [1]")]
DetailOption = Annotated[bool, typer.Option(help="a progress bar per run as well (local backend)")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


@dataclass(frozen=True)
class Execution:
    """Where a study's runs execute and how much of it is shown: the options ``fedleak study`` and
    ``fedleak sweep`` share, one each (the annotations are the options), handed to the command as
    one value by :func:`executing`."""

    backend: BackendOption = "local"
    address: AddressOption = None
    cpus_per_run: CpusOption = None
    gpus_per_run: GpusOption = None
    workers: WorkersOption = None
    batch: BatchOption = None
    detail: DetailOption = False


LOCAL = Execution()  # the defaults: in this process, one run at a time


def executing(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with its parameter ``execution: Execution`` spelled out, in its place, as one option
    per field of :class:`Execution` (Typer reads a command's options from its signature); it is
    called with the :class:`Execution` those options make."""
    hints = typing.get_type_hints(Execution, include_extras=True)
    options = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                                 annotation=hints[f.name]) for f in fields(Execution)]
    own = list(inspect.signature(command, eval_str=True).parameters.values())
    at = [p.name for p in own].index("execution")
    signature = inspect.Signature([*own[:at], *options, *own[at + 1:]], return_annotation=None)

    @functools.wraps(command)
    def run(**given: Any) -> None:
        execution = Execution(**{p.name: given.pop(p.name) for p in options})
        command(**given, execution=execution)

    run.__signature__ = signature  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()} | {"return": None}
    return run


TERMINATED = 143  # exit code of a study stopped by SIGTERM (128 + 15)


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived during a study: unwinds like Ctrl-C (no run's ``except Exception`` catches it;
    Ray, which turns a Ctrl-C inside its waits into a plain ``KeyboardInterrupt``, does the same)."""


def _run_study(s: Any, preset: str, folder: Path, quiet: bool, force: bool, execution: Execution) -> None:
    """Run a study on the chosen backend, print what happened; failed runs end it with one error line.

    The backend's notes (the Ray cluster joined and its size, how many runs it holds as nodes come
    and go) are ``fedleak: note:`` lines on stderr unless ``-q``; that the runs wait for nodes to join
    is said even with ``-q``. SIGTERM (``timeout``, a batch scheduler) stops the study like
    Ctrl-C — finished runs stay committed, claims are released, Ray is shut down — and ends with the
    line ``fedleak: terminated`` and exit code 143 (128 + SIGTERM, as a shell reports such a death)."""
    x = execution
    engine = make_backend(x.backend, address=x.address, cpus_per_run=x.cpus_per_run, gpus_per_run=x.gpus_per_run,
                          workers=x.workers, batch=x.batch)
    engine.note = lambda text: print(f"fedleak: note: {text}", file=sys.stderr, flush=True)
    engine.quiet = quiet  # -q: only what the user must know (that the runs wait for nodes to join)

    terminated = []

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: the cleanup is not interrupted again
        terminated.append(signum)
        raise _Terminated

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        outcome = run_study(s, preset, folder, progress=not quiet, detail=x.detail, force=force, backend=engine)
    except KeyboardInterrupt:
        if not terminated:
            raise
        print("fedleak: terminated", file=sys.stderr)
        raise typer.Exit(TERMINATED) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    with locked(folder):  # processes sharing the folder finish at about the same time: one writes at a time
        write_report(folder)
    shared = f", {outcome.elsewhere} by another process" if outcome.elsewhere else ""
    failed = f", {len(outcome.failed)} failed" if outcome.failed else ""
    console.print(f"{s.name}: {outcome.ran} runs done, {outcome.skipped} already there{shared}{failed}, "
                  f"{outcome.seconds:.0f} s on {outcome.backend} → {folder / 'report.html'}")
    for hint in outcome.hints:
        print(f"fedleak: note: {hint}", file=sys.stderr)
    if outcome.failed:
        raise FedleakError(failures_summary(outcome.failed, folder))


@executing
def study(
    name: Annotated[str, typer.Argument(help="tv | layers | stacking | transfer | obfuscation | dp-tradeoff | efficiency | secure-aggregation")],
    preset: Annotated[str, typer.Option(help="cpu (≤ 15 min on 2 cores) or full")] = "cpu",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML study settings")] = None,
    trust_config: TrustOption = False,
    root: Annotated[str | None, typer.Option(help="data folder (the study's root setting)")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override: key=value")] = None,
    out: Annotated[Path | None, typer.Option(help="study folder (default studies/NAME-PRESET)")] = None,
    device: StudyDeviceOption = None,
    execution: Execution = LOCAL,
    force: Annotated[bool, typer.Option(
        help="use a folder made with other settings: its study.json is replaced, and of its finished runs only "
             "those of the new grid are kept (the others are deleted)")] = False,
    quiet: QuietOption = False,
) -> None:
    """Run a named study (a grid of runs), resuming what its folder holds, then write its report.

    A folder holds one grid: one made with other settings is refused unless --force. Several
    processes may run the same study into one folder at once; they share its runs. A run that fails
    is recorded (`fedleak runs list DIR --failed`) and retried by the next invocation."""
    # A live study (flower-audit) is written by what it observes, not run from its grid here.
    runnable = [n for n in STUDIES if not getattr(STUDIES.get(n), "live", False)]
    if name in STUDIES and name not in runnable:
        raise ConfigError(f"study {name!r} is not run from the command line: its folder is written by a Flower "
                          "federation's LeakageAudit strategy (fedleak.integrations.flower, its out= folder) as the "
                          "federation runs; read one with `fedleak report DIR` or `fedleak runs list DIR`")
    if name not in STUDIES:
        close = difflib.get_close_matches(name, runnable, n=1)
        raise ConfigError(f"unknown study {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; choose one "
                          f"of: {', '.join(runnable)}")
    # --root is the override root=…, quoted so that the path stays a string; a later --set wins.
    root_setting = [f"root={json.dumps(root)}"] if root is not None else []
    device_setting = [f"device={json.dumps(device)}"] if device is not None else []
    s = build_study(name, preset, config, [*root_setting, *device_setting, *(overrides or [])],
                    trust_config=trust_config)
    folder = out or Path("studies") / f"{name}-{preset}"
    _run_study(s, preset, folder, quiet, force, execution)


@executing
def sweep(
    grid: Annotated[list[str], typer.Option(
        help="KEY=V1,V2: a config key and its values (repeat for more keys; the cells are their product). "
             "Values are YAML; separate them with ';' when they hold commas, or give a YAML list KEY=[V1, V2]")],
    images: Annotated[str | None, typer.Option(
        help="one run per image index, e.g. 0-15 or 0,3,5-7 (default: the config's images)")] = None,
    seeds: Annotated[str | None, typer.Option(help="run seeds, e.g. 0,1 or 0-4 (default: the config's seed)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config every run starts from")] = None,
    trust_config: TrustOption = False,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override of that config: key.path=value")] = None,
    root: Annotated[str | None, typer.Option(help="data folder (data.root)")] = None,
    device: StudyDeviceOption = None,
    client_seed: Annotated[int | None, typer.Option(
        help="mixed with the sweep folder's secret into every run's private client seed (the folder's "
             "client-secret file; resuming keeps the seeds)", min=0, max=MAX_SEED)] = None,
    out: Annotated[Path | None, typer.Option(
        help="sweep folder (default studies/sweep-HASH, the same for the same sweep: re-running resumes it)")] = None,
    execution: Execution = LOCAL,
    force: Annotated[bool, typer.Option(help="use a folder made by another sweep, keeping only this one's runs")] = False,
    quiet: QuietOption = False,
) -> None:
    """Run `fedleak attack` over a grid of any config settings × images × seeds, as one study: one
    results database (resumed when run again), a report with one table row per grid cell (n, mean
    and 95 % CI of PSNR, SSIM, LPIPS), `fedleak runs export`.

    Example: fedleak sweep --grid attack.tv=1e-3,1e-2 --grid client.defense=none,topk:sparsity=0.9 --images 0-15"""
    sets = [*([f"data.root={json.dumps(root)}"] if root is not None else []),
            *([f"device={json.dumps(device)}"] if device is not None else []), *(overrides or [])]
    s = build_sweep(grid, images, seeds, config, sets, client_seed, trust_config=trust_config)
    folder = out or Path("studies") / s.folder_name()  # the same sweep on moved data or another device: the same
    _run_study(s, "custom", folder, quiet, force, execution)


def report(folder: Annotated[Path, typer.Argument(help="study folder, or a Flower audit's out= folder")]) -> None:
    """Rebuild a study's report (table, figures, grid, HTML) from its results database.

    A Flower audit's folder (LeakageAudit's out=) may be reported while its federation runs: the
    report shows the audited updates finished so far. The audits of later runs into the same folder
    (its numbered sub-folders audit-2, audit-3, …) are reported too."""
    for target in audit_folders(folder) or [folder]:
        with locked(target):  # not while a study (or an audit) writing into the folder replaces the same files
            console.print(f"report → {write_report(target)}")

