"""The ``fedleak`` command line (Typer). Bad input ends with one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from fedleak.config import RunConfig

try:  # Typer ≥ 0.22 vendors its own copy of Click
    from typer._click import exceptions as _cli_errors
except ImportError:  # pragma: no cover - older Typer on top of Click
    from click import exceptions as _cli_errors

app = typer.Typer(
    help="Measure how much private data leaks from federated-learning updates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
class _Console:
    """Rich output that is whole in logs and pipes: on a terminal Rich fits the screen; elsewhere
    (``| grep``, a log file, CI) no table is cut and no line is wrapped at 80 columns."""

    WIDE = 100_000  # wider than any table fedleak prints

    def print(self, *objects: Any, **options: Any) -> None:
        wide = not sys.stdout.isatty()
        Console(file=sys.stdout, width=self.WIDE if wide else None, soft_wrap=wide).print(*objects, **options)


console = _Console()


_state = {"debug": False}
MAX_SEED = 2**63 - 1  # seeds are 64-bit signed for torch and NumPy; negative ones are refused


def _finite(value: float | None) -> float | None:
    """Option callback: ``inf`` and ``nan`` parse as floats but are never a sensible setting."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


TrustOption = Annotated[bool, typer.Option(
    "--trust-config", help="let the --config file name a package.module:factory for fedleak to import "
                           "(without it, only the command line names code: --model, --set, --grid)")]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="print the traceback of an error as well")] = False,
) -> None:
    """fedleak: simulate FL clients, attack what the server sees, score and report."""
    _state["debug"] = debug


@app.command()
def attack(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config")] = None,
    trust_config: TrustOption = False,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override: key.path=value")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="samples | mnist | cifar10 | cifar100 | folder")] = None,
    root: Annotated[Optional[str], typer.Option(help="data folder")] = None,
    index: Annotated[Optional[str], typer.Option(help="image indices, e.g. 3 or 3,17")] = None,
    classes: Annotated[Optional[str], typer.Option("--class", help="draw images of these classes")] = None,
    image_size: Annotated[
        Optional[int], typer.Option(help="resize images to this square side (data.image_size=[H,W] for other shapes)")
    ] = None,
    channels: Annotated[Optional[int], typer.Option(help="convert images to 1 (grey) or 3 (colour) channels")] = None,
    model: Annotated[Optional[str], typer.Option(help="architecture, or package.module:factory")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="trained weights to attack")] = None,
    width: Annotated[Optional[float], typer.Option(help="model width multiplier")] = None,
    mean: Annotated[Optional[str], typer.Option(
        help="the clients' normalisation mean per channel, e.g. 0.5,0.5,0.5, with --std (a fedleak checkpoint's "
             "recorded values come first; unset: your model's declared, an ImageNet checkpoint's card, else the "
             "dataset's; docs/models.md)")] = None,
    std: Annotated[Optional[str], typer.Option(help="the clients' normalisation std per channel, e.g. 0.5,0.5,0.5")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="client batch size")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="client protocol: fedsgd | fedavg")] = None,
    local_steps: Annotated[Optional[int], typer.Option(help="FedAvg local steps τ")] = None,
    defense: Annotated[
        Optional[str], typer.Option(help="client defense spec, e.g. topk:sparsity=0.9 or clip:c=1+noise:snr_db=0")
    ] = None,
    server: Annotated[Optional[str], typer.Option(
        help="server threat model: honest, or a malicious modification, e.g. imprint:bins=128 or fishing:target=3 "
             "(its attack runs unless --attack names another)")] = None,
    attack_name: Annotated[Optional[str], typer.Option("--attack", help="attack name")] = None,
    prior: Annotated[Optional[Path], typer.Option(help="ROG restoration prior from `fedleak train-prior`")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="attack iterations")] = None,
    restarts: Annotated[Optional[int], typer.Option(help="attack restarts")] = None,
    known_labels: Annotated[
        Optional[bool], typer.Option("--known-labels/--recover-labels", help="attacker knows the labels")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="run seed")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N | mps (default auto: CUDA, else MPS, else CPU)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/<timestamp>)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite a non-empty run folder")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="print the resolved config (every setting, defaults filled in) as YAML and exit")
    ] = False,
) -> None:
    """Attack one client update and write config, metrics, images and an HTML report."""
    from fedleak.config import build_config
    from fedleak.fl.server import server_flags
    from fedleak.device import device_name, resolve_device
    from fedleak.pipeline import run
    from fedleak.report.run import summary, write_run
    from fedleak.store import check_out, default_out, write_atomically

    flags = {
        "data.name": dataset, "data.root": root, "data.index": index, "data.classes": classes,
        "data.image_size": image_size, "data.channels": channels, "model.name": model, "model.width": width,
        "model.mean": mean, "model.std": std,
        "model.checkpoint": str(checkpoint) if checkpoint else None, "client.batch_size": batch_size,
        "client.protocol": protocol, "client.local_steps": local_steps, "client.defense": defense,
        "attack.name": attack_name, "attack.prior": str(prior) if prior else None, "attack.iterations": iterations, "attack.restarts": restarts,
        "knowledge.labels": known_labels, "seed": seed, "device": device, "out": str(out) if out else None,
        **server_flags(server),
    }
    if prior is not None:
        _check_prior_applies(config, flags, overrides, trust_config)
    cfg = build_config(config, flags, overrides, trust_config=trust_config)
    cfg = cfg.model_copy(update={"device": device_name(resolve_device(cfg.device))})  # a missing device fails first
    if print_config:
        sys.stdout.write(_yaml(_resolved_config(cfg)))
        return
    folder = check_out(Path(cfg.out) if cfg.out else default_out(), force)
    result = run(cfg, progress=not quiet)
    write_atomically(folder, lambda tmp: write_run(tmp, result))
    row = summary(result)
    below = row["vs no-leak"] != "above"  # flagged: a guess without the update scores as well
    table = Table(title=f"fedleak attack → {folder}", caption=(
        f"▼ {row['vs no-leak']} the no-leak baseline (the better of two guesses without the update; "
        "report.html shows both)") if below else None)
    for key in row:
        table.add_column(key, justify="right")
    table.add_row(*row.values())
    console.print(table)
    for hint in result.hints:
        print(f"fedleak: note: {hint}", file=sys.stderr)


def _check_prior_applies(config: Path | None, flags: dict[str, Any], overrides: list[str] | None,
                         trust_config: bool) -> None:
    """``--prior`` is a restoration prior (``fedleak train-prior``), which only attacks that restore a
    low-resolution reconstruction take (ROG): say so instead of "unknown config key"."""
    from fedleak.attacks import ATTACKS, build_attack
    from fedleak.config import build_config
    from fedleak.errors import ConfigError

    cfg = build_config(config, {**flags, "attack.prior": None}, overrides, trust_config=trust_config)
    takers = [n for n in ATTACKS.names() if "prior" in ATTACKS.get(n).Config.model_fields]
    if "prior" not in type(build_attack(cfg.attack.name).config).model_fields:
        raise ConfigError(f"--prior is a restoration prior from `fedleak train-prior`, used only by the "
                          f"{', '.join(takers)} attack; the attack {cfg.attack.name!r} takes none "
                          f"(drop --prior, or add --attack {takers[0]})")


def _resolved_config(cfg: RunConfig) -> dict[str, Any]:
    """What a run of ``cfg`` would use: every section with its defaults, the checkpoint's architecture
    where one is given, and the chosen attack's (or preset's) settings in full."""
    from fedleak.attacks import build_attack
    from fedleak.pipeline import resolve_checkpoint

    attack = build_attack(cfg.attack.name, cfg.attack.settings())
    cfg, _ = resolve_checkpoint(cfg)
    tree = cfg.model_dump(mode="json")
    tree["attack"] = {"name": cfg.attack.name, **attack.config.model_dump(mode="json")}
    return tree


def _yaml(tree: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


@app.command()
def train(
    model: Annotated[str, typer.Option(help="architecture, or package.module:factory")],
    dataset: Annotated[str, typer.Option(help="samples | mnist | cifar10 | cifar100 | folder")],
    root: Annotated[Optional[str], typer.Option(help="data folder")] = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 10,
    lr: Annotated[float, typer.Option(help="initial learning rate (cosine schedule)", callback=_finite)] = 0.05,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="minibatch size")] = 64,
    width: Annotated[Optional[float], typer.Option(help="model width multiplier (default: the model's own, 1)",
                                                   callback=_finite)] = None,
    option: Annotated[Optional[list[str]], typer.Option(help="model option key=value, e.g. norm=group")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="resize images to this side")] = None,
    channels: Annotated[Optional[int], typer.Option(help="convert images to 1 or 3 channels")] = None,
    test_fraction: Annotated[
        Optional[float], typer.Option(help="split a test set off the training data (default: the dataset's test split, or 0.2)",
                                      callback=_finite)
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="train on at most N images")] = None,
    augment: Annotated[bool, typer.Option(help="random flips and crops")] = False,
    seed: Annotated[int, typer.Option(help="seed for initialisation, splits and order", min=0, max=MAX_SEED)] = 0,
    out: Annotated[Optional[Path], typer.Option(help="checkpoint file (.safetensors)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing checkpoint")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, else MPS, else CPU)")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Train a target model and save it as a checkpoint for `fedleak attack --checkpoint`."""
    from fedleak.config import parse_override
    from fedleak.models.checkpoint import save_checkpoint
    from fedleak.store import check_file_out
    from fedleak.training import TrainSettings, train_target

    path = check_file_out(out or Path("checkpoints") / f"{model.replace(':', '_')}-{dataset}.safetensors",
                          force, "checkpoint", ".safetensors")
    options = {".".join(parts): value for parts, value in (parse_override(o) for o in option or [])}
    result = train_target(model, dataset, root, width, options, image_size, channels, test_fraction, limit,
                          TrainSettings(epochs=epochs, lr=lr, batch_size=batch_size, augment=augment, seed=seed,
                                        device=device),
                          progress=not quiet)
    save_checkpoint(path, result.model, result.info)
    table = Table(title=f"fedleak train → {path}")
    for key in ("model", "dataset", "train images", "test accuracy", "seconds"):
        table.add_column(key, justify="right")
    t = result.info.training
    table.add_row(model, result.info.dataset, str(t["train_images"]), f"{result.info.test_accuracy:.3f}",
                  f"{result.history.seconds:.0f}")
    console.print(table)


@app.command("train-prior")
def train_prior(
    dataset: Annotated[str, typer.Option(help="public images: samples | mnist | cifar10 | cifar100 | folder")],
    root: Annotated[Optional[str], typer.Option(help="data folder")] = None,
    split: Annotated[str, typer.Option(help="split to train on (keep the attacked split out)")] = "train",
    scale: Annotated[int, typer.Option(help="ROG downsampling factor the prior undoes")] = 2,
    image_size: Annotated[Optional[int], typer.Option(help="resize images to this side")] = None,
    channels: Annotated[Optional[int], typer.Option(help="convert images to 1 or 3 channels")] = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="minibatch size")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine schedule)", callback=_finite)] = 1e-3,
    noise: Annotated[float, typer.Option(help="largest σ of the Gaussian degradation", callback=_finite)] = 0.1,
    width: Annotated[int, typer.Option(help="channels of the network")] = 32,
    depth: Annotated[int, typer.Option(help="convolutions of the network")] = 6,
    limit: Annotated[Optional[int], typer.Option(help="train on at most N images")] = None,
    seed: Annotated[int, typer.Option(help="seed for splits, degradations and initialisation", min=0, max=MAX_SEED)] = 0,
    out: Annotated[Optional[Path], typer.Option(help="prior file (.safetensors)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, else MPS, else CPU)")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Train ROG's denoising + super-resolution prior on public images, for `attack --prior`."""
    from fedleak.attacks.priors import PriorSettings, save_prior, train_prior_on
    from fedleak.errors import ConfigError
    from fedleak.store import check_file_out

    path = check_file_out(out or Path("checkpoints") / f"prior-{dataset}-x{scale}.safetensors", force, "prior",
                          ".safetensors")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be train or test, got {split!r}")
    settings = PriorSettings(scale=scale, width=width, depth=depth, noise=noise, epochs=epochs,
                             batch_size=batch_size, lr=lr, seed=seed, device=device)
    net, info = train_prior_on(dataset, root, split, image_size, channels, limit, settings, progress=not quiet)
    save_prior(path, net, info)
    table = Table(title=f"fedleak train-prior → {path}")
    for key in ("dataset", "images", "scale", "bicubic PSNR", "prior PSNR", "seconds"):
        table.add_column(key, justify="right")
    v = info.validation
    table.add_row(info.dataset, str(info.images), str(info.scale), f"{v['bicubic_psnr']:.2f}",
                  f"{v['prior_psnr']:.2f}", f"{info.seconds:.0f}")
    console.print(table)


BackendOption = Annotated[str, typer.Option(help="where runs execute: local (this process) or ray (a Ray cluster)")]
AddressOption = Annotated[Optional[str], typer.Option(
    help="Ray cluster to join: auto, HOST:6379 (on a cluster node) or ray://HOST:10001 (default: start Ray here)")]
CpusOption = Annotated[Optional[int], typer.Option(help="CPU cores (torch threads) each Ray run reserves [1]")]
GpusOption = Annotated[Optional[float], typer.Option(
    help="GPUs each Ray run reserves; 0.5 lets two runs share a GPU [0]", callback=_finite)]
WorkersOption = Annotated[Optional[int], typer.Option(
    help="at most N runs at once on Ray (default: as many as the cluster's CPUs and GPUs hold)")]
StudyDeviceOption = Annotated[Optional[str], typer.Option(
    help="where every run computes: auto | cpu | cuda | cuda:N | mps [auto]; not part of a run's identity, "
         "so a folder started on one device resumes on another")]
BatchOption = Annotated[Optional[int], typer.Option(
    help="local backend: attack up to N runs together in one batched optimisation (those sharing model and "
         "attack settings: fills a GPU) [1]")]


TERMINATED = 143  # exit code of a study stopped by SIGTERM (128 + 15)


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived during a study: unwinds like Ctrl-C (no run's ``except Exception`` catches it;
    Ray, which turns a Ctrl-C inside its waits into a plain ``KeyboardInterrupt``, does the same)."""


def _run_study(s: Any, preset: str, folder: Path, quiet: bool, detail: bool, force: bool, backend: str,
               address: str | None, cpus_per_run: int | None, gpus_per_run: float | None, workers: int | None,
               batch: int | None = None) -> None:
    """Run a study on the chosen backend, print what happened; failed runs end it with one error line.

    The backend's notes (the Ray cluster joined and its size, how many runs it holds as nodes come
    and go) are ``fedleak: note:`` lines on stderr unless ``-q``; that the runs wait for nodes to join
    is said even with ``-q``. SIGTERM (``timeout``, a batch scheduler) stops the study like
    Ctrl-C — finished runs stay committed, claims are released, Ray is shut down — and ends with the
    line ``fedleak: terminated`` and exit code 143 (128 + SIGTERM, as a shell reports such a death)."""
    import signal
    import threading

    from fedleak.errors import FedleakError
    from fedleak.studies import run_study
    from fedleak.studies.backends import make_backend
    from fedleak.studies.runner import failures_summary

    engine = make_backend(backend, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                          workers=workers, batch=batch)
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
        outcome = run_study(s, preset, folder, progress=not quiet, detail=detail, force=force, backend=engine)
    except KeyboardInterrupt:
        if not terminated:
            raise
        print("fedleak: terminated", file=sys.stderr)
        raise typer.Exit(TERMINATED) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    shared = f", {outcome.elsewhere} by another process" if outcome.elsewhere else ""
    failed = f", {len(outcome.failed)} failed" if outcome.failed else ""
    console.print(f"{s.name}: {outcome.ran} runs done, {outcome.skipped} already there{shared}{failed}, "
                  f"{outcome.seconds:.0f} s on {outcome.backend} → {folder / 'report.html'}")
    for hint in outcome.hints:
        print(f"fedleak: note: {hint}", file=sys.stderr)
    if outcome.failed:
        raise FedleakError(failures_summary(outcome.failed, folder))


@app.command()
def study(
    name: Annotated[str, typer.Argument(help="tv | layers | stacking | transfer | obfuscation | dp-tradeoff | efficiency | secure-aggregation")],
    preset: Annotated[str, typer.Option(help="cpu (≤ 15 min on 2 cores) or full")] = "cpu",
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML study settings")] = None,
    trust_config: TrustOption = False,
    root: Annotated[Optional[str], typer.Option(help="data folder (the study's root setting)")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override: key=value")] = None,
    out: Annotated[Optional[Path], typer.Option(help="study folder (default studies/NAME-PRESET)")] = None,
    device: StudyDeviceOption = None,
    backend: BackendOption = "local",
    address: AddressOption = None,
    cpus_per_run: CpusOption = None,
    gpus_per_run: GpusOption = None,
    workers: WorkersOption = None,
    batch: BatchOption = None,
    detail: Annotated[bool, typer.Option(help="a progress bar per run as well (local backend)")] = False,
    force: Annotated[bool, typer.Option(
        help="use a folder made with other settings: its study.json is replaced, and of its finished runs only "
             "those of the new grid are kept (the others are deleted)")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Run a named study (a grid of runs), resuming what its folder holds, then write its report.

    A folder holds one grid: one made with other settings is refused unless --force. Several
    processes may run the same study into one folder at once; they share its runs. A run that fails
    is recorded (`fedleak runs list DIR --failed`) and retried by the next invocation."""
    from fedleak.errors import ConfigError
    from fedleak.studies import STUDIES, build_study

    import json

    # A live study (flower-audit) is written by what it observes, not run from its grid here.
    runnable = [n for n in STUDIES if not getattr(STUDIES.get(n), "live", False)]
    if name in STUDIES and name not in runnable:
        raise ConfigError(f"study {name!r} is not run from the command line: its folder is written by a Flower "
                          "federation's LeakageAudit strategy (fedleak.integrations.flower, its out= folder) as the "
                          "federation runs; read one with `fedleak report DIR` or `fedleak runs list DIR`")
    if name not in STUDIES:
        import difflib

        close = difflib.get_close_matches(name, runnable, n=1)
        raise ConfigError(f"unknown study {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; choose one "
                          f"of: {', '.join(runnable)}")
    # --root is the override root=…, quoted so that the path stays a string; a later --set wins.
    root_setting = [f"root={json.dumps(root)}"] if root is not None else []
    device_setting = [f"device={json.dumps(device)}"] if device is not None else []
    s = build_study(name, preset, config, [*root_setting, *device_setting, *(overrides or [])],
                    trust_config=trust_config)
    folder = out or Path("studies") / f"{name}-{preset}"
    _run_study(s, preset, folder, quiet, detail, force, backend, address, cpus_per_run, gpus_per_run, workers, batch)


@app.command()
def sweep(
    grid: Annotated[list[str], typer.Option(
        help="KEY=V1,V2: a config key and its values (repeat for more keys; the cells are their product). "
             "Values are YAML; separate them with ';' when they hold commas, or give a YAML list KEY=[V1, V2]")],
    images: Annotated[Optional[str], typer.Option(
        help="one run per image index, e.g. 0-15 or 0,3,5-7 (default: the config's images)")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="run seeds, e.g. 0,1 or 0-4 (default: the config's seed)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config every run starts from")] = None,
    trust_config: TrustOption = False,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override of that config: key.path=value")] = None,
    root: Annotated[Optional[str], typer.Option(help="data folder (data.root)")] = None,
    device: StudyDeviceOption = None,
    client_seed: Annotated[Optional[int], typer.Option(
        help="mixed with the sweep folder's secret into every run's private client seed (the folder's "
             "client-secret file; resuming keeps the seeds)", min=0, max=MAX_SEED)] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="sweep folder (default studies/sweep-HASH, the same for the same sweep: re-running resumes it)")] = None,
    backend: BackendOption = "local",
    address: AddressOption = None,
    cpus_per_run: CpusOption = None,
    gpus_per_run: GpusOption = None,
    workers: WorkersOption = None,
    batch: BatchOption = None,
    detail: Annotated[bool, typer.Option(help="a progress bar per run as well (local backend)")] = False,
    force: Annotated[bool, typer.Option(help="use a folder made by another sweep, keeping only this one's runs")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Run `fedleak attack` over a grid of any config settings × images × seeds, as one study: one
    results database (resumed when run again), a report with one table row per grid cell (n, mean
    and 95 % CI of PSNR, SSIM, LPIPS), `fedleak runs export`.

    Example: fedleak sweep --grid attack.tv=1e-3,1e-2 --grid client.defense=none,topk:sparsity=0.9 --images 0-15"""
    import hashlib
    import json

    from fedleak.studies.sweep import build_sweep

    sets = [*([f"data.root={json.dumps(root)}"] if root is not None else []),
            *([f"device={json.dumps(device)}"] if device is not None else []), *(overrides or [])]
    s = build_sweep(grid, images, seeds, config, sets, client_seed, trust_config=trust_config)
    identity = s.settings.model_dump(mode="json")
    if isinstance(identity["base"].get("data"), dict):  # the same sweep on moved data: the same folder
        identity["base"]["data"].pop("root", None)
    identity["base"].pop("device", None)  # and on another device
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    folder = out or Path("studies") / f"sweep-{digest[:8]}"
    _run_study(s, "custom", folder, quiet, detail, force, backend, address, cpus_per_run, gpus_per_run, workers, batch)


@app.command()
def report(folder: Annotated[Path, typer.Argument(help="study folder")]) -> None:
    """Rebuild a study's report (table, figures, grid, HTML) from its results database."""
    from fedleak.report.study import write_report
    from fedleak.store import locked

    with locked(folder):  # not while a study writing into the folder replaces the same files
        console.print(f"report → {write_report(folder)}")


@app.command("inspect-model")
def inspect_model_cmd(
    path: Annotated[Optional[Path], typer.Argument(
        help="weights to check: .safetensors or a torch state dict (.pt), e.g. the global model a server sent")] = None,
    from_payload: Annotated[bool, typer.Option(
        "--from-payload", help="check the model a run with these settings sends (its payload's model state)")] = False,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config (--from-payload)")] = None,
    trust_config: TrustOption = False,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="override: key.path=value (--from-payload)")] = None,
    server: Annotated[Optional[str], typer.Option(help="server threat model (--from-payload): honest | imprint:… | fishing:…")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="architecture (--from-payload; with a weights file: whose model card to show)")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="dataset (--from-payload)")] = None,
    root: Annotated[Optional[str], typer.Option(help="data folder (--from-payload)")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="image side (--from-payload)")] = None,
    num_classes: Annotated[Optional[int], typer.Option(
        help="classes of the model (which layer is the classifier; default: found by shape, see fedleak.inspect)",
        min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the findings as JSON")] = False,
    device: Annotated[Optional[str], typer.Option(
        help="where the checks (and --from-payload's model and modification) run: auto | cpu | cuda | cuda:N | mps "
             "[auto, or the config's]")] = None,
) -> None:
    """Check a model for imprint-like or fishing-like structure before training on it: exit 0 when
    nothing is found, 3 when a layer looks built to leak, 2 when there is nothing to check (no
    weight matrix: tensors are inspected by shape, whatever their names)."""
    import json

    from fedleak.errors import ConfigError
    from fedleak.inspect import FLAGGED, inspect_state, sent_model
    from fedleak.models.cards import file_card, named_card

    from fedleak.device import device_name, resolve_device

    if (path is None) == (not from_payload):
        raise ConfigError("give a weights file or --from-payload (one of them)")
    if path is not None:
        from fedleak.models.checkpoint import load_state

        where = resolve_device(device or "auto")
        state, classes, what = {k: v.to(where) for k, v in load_state(path).items()}, num_classes, str(path)
        card = file_card(path) or named_card(model)  # the checkpoint's architecture, else the one --model names
    else:
        from fedleak.config import build_config
        from fedleak.fl.server import server_flags
        from fedleak.pipeline import resolve_checkpoint

        flags = {"model.name": model, "data.name": dataset, "data.root": root, "data.image_size": image_size,
                 "device": device, **server_flags(server)}
        run_config = build_config(config, flags, overrides, trust_config=trust_config)
        sent, classes = sent_model(run_config)
        state, classes, what = sent.state_dict(), num_classes or classes, "the model the run's server sends"
        card = named_card(resolve_checkpoint(run_config)[0].model.name)
    findings = inspect_state(state, classes)
    if as_json:
        on = device_name(next(iter(state.values())).device) if state else "cpu"
        card_json = {"model": card[0], **card[1].as_dict()} if card else None
        print(json.dumps({"model": what, "device": on, "card": card_json, **findings.as_dict()}, indent=2, default=str))
    else:
        if card:
            console.print(f"model card ({card[0]}): {card[1].summary()}", markup=False, highlight=False,
                          soft_wrap=True)
        # The verdict is one line whatever the width (scripts grep it): never wrapped, no markup read in a path.
        console.print(f"{what}: {findings.summary()}", markup=False, highlight=False, soft_wrap=True)
        if findings.suspicious:
            table = Table()
            for col in ("looks like", "layer", "why"):
                table.add_column(col, justify="left")
            for f in findings.findings:
                table.add_row(f.kind, f.layer, f.detail)
            console.print(table)
    if findings.suspicious:
        raise typer.Exit(FLAGGED)


@app.command("config")
def config_cmd(
    attack_name: Annotated[str, typer.Argument(
        metavar="NAME", help="attack or preset name, e.g. ig, rog, ig-limchan; a model name, e.g. resnet18; "
                             "or models (every model's card)")],
) -> None:
    """Print an attack's settings as YAML: each with its default (a preset's values where it sets
    them), type and description. Set them with --set attack.KEY=VALUE or a config file's attack section.
    For a model: its config section, options and card (input size, normalisation); `models` lists every card."""
    from fedleak.attacks import ATTACKS, build_attack
    from fedleak.models import MODELS
    from fedleak.models.cards import describe_model, describe_models

    if attack_name == "models" or attack_name in MODELS:  # models are named apart from attacks
        sys.stdout.write(describe_models() if attack_name == "models" else describe_model(attack_name))
        return
    attack = build_attack(attack_name)
    values = attack.config.model_dump(mode="json")
    fields = type(attack.config).model_fields
    base = next(n for n in ATTACKS.names() if ATTACKS.get(n) is type(attack))
    about = (type(attack).__doc__ or "").strip().splitlines()
    lines = [f"# {attack_name}" + (f" (a preset of {base})" if base != attack_name else "")
             + (f": {about[0]}" if about else ""),
             "# every setting with its default; set one with --set attack.KEY=VALUE", "attack:", f"  name: {attack_name}"]
    for key, value in values.items():
        first, *rest = _yaml({key: value}).strip().split("\n")  # a mapping value spans several lines
        about = " — ".join(filter(None, (_type_text(fields[key]), fields[key].description)))
        lines += [f"  {first}  # {about}", *(f"  {line}" for line in rest)]
    sys.stdout.write("\n".join(lines) + "\n")


def _type_text(info: FieldInfo) -> str:
    """A field's type and bounds, e.g. ``int, ≥ 1`` or ``float, > 0``."""
    kind = info.annotation
    name = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
    bounds = [f"{sign} {getattr(m, attr)}" for m in info.metadata
              for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")) if getattr(m, attr, None) is not None]
    return ", ".join([name, *bounds])


runs_app = typer.Typer(help="Inspect a study's results database.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


def _db(folder: Path):
    from fedleak.errors import ConfigError
    from fedleak.store import ResultsDB
    from fedleak.studies.runner import DB_NAME

    if not (folder / DB_NAME).is_file():
        raise ConfigError(f"{str(folder)!r} holds no results database ({DB_NAME})")
    return ResultsDB(folder / DB_NAME, create=False)


@runs_app.command("list")
def runs_list(
    folder: Annotated[Path, typer.Argument(help="study folder")],
    failed: Annotated[bool, typer.Option("--failed", help="the runs that failed, with their errors")] = False,
) -> None:
    """One line per finished run: key, name, PSNR and SSIM beside their no-leak baselines (flagged where
    the run does no better), seconds (with --failed: each failed run's
    error and attempts; the next `fedleak study`/`sweep` into the folder retries them)."""
    from rich.markup import escape  # run names hold grid values, which are no markup

    from fedleak.metrics.baselines import best_guess, verdict

    with _db(folder) as db:
        records, failures = db.records(), db.failures()
    if failed:  # plain lines: errors are long, and their text is not markup
        print(f"{len(failures)} failed run{'s' if len(failures) != 1 else ''} in {folder}"
              + (" (the next study or sweep into it retries them)" if failures else ""))
        for f in failures:
            where = f"  on {f.host}" if f.host else ""
            print(f"{f.key}  {f.study}  {f.name}  attempts {f.attempts}{where}\n    {f.error}")
        return
    also = f" ({len(failures)} failed: --failed)" if failures else ""
    table = Table(title=f"{len(records)} runs in {folder}{also}")
    numbers = ("PSNR", "no-leak PSNR", "SSIM", "no-leak SSIM", "seconds")
    for col in ("key", "study", "name", *numbers, "vs no-leak"):
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in records:
        guess = best_guess(r.metrics.get("baselines"))
        table.add_row(r.key, r.study, escape(r.name), _score(r.metrics.get("psnr"), 2),
                      _score(guess and guess["psnr"], 2), _score(r.metrics.get("ssim"), 3),
                      _score(guess and guess["ssim"], 3), f"{r.seconds:.1f}",
                      "" if guess is None else (verdict(r.metrics, guess) or "above").replace(" the no-leak baseline", ""))
    console.print(table)


def _score(value: Any, digits: int) -> str:
    """A stored score for `runs list`: n/a where the run has none (no baselines stored, LPIPS unset)."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


@runs_app.command("show")
def runs_show(folder: Annotated[Path, typer.Argument(help="study folder")],
              key: Annotated[str, typer.Argument(help="run key (a unique prefix is enough)")]) -> None:
    """Everything stored about one run, as JSON."""
    import dataclasses
    import json

    with _db(folder) as db:
        record = db.get(key)
    print(json.dumps(dataclasses.asdict(record), indent=2, default=str))


@runs_app.command("export")
def runs_export(
    folder: Annotated[Path, typer.Argument(help="study folder")],
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV: one row per run, its parameters and scalar metrics (the default)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON: every run in full, and the failed runs")] = False,
    out: Annotated[Optional[Path], typer.Option(help="file to write (default: standard output)")] = None,
) -> None:
    """Export every run's parameters and metrics."""
    from fedleak.errors import ConfigError
    from fedleak.store import write_text_atomically

    if as_csv and as_json:
        raise ConfigError("choose one of --csv and --json")
    with _db(folder) as db:
        text = db.to_json() if as_json else db.to_csv()
    if out:
        write_text_atomically(out, text)
    else:
        sys.stdout.write(text)


weights_app = typer.Typer(help="Weight files for metrics, downloaded only when you ask.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("fetch")
def weights_fetch(
    nets: Annotated[list[str], typer.Argument(metavar="BACKBONE", help="LPIPS backbones: alex, vgg")],
    folder: Annotated[
        Optional[Path], typer.Option("--dir", help="where to write (default: torch's hub cache, which runs search)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Download LPIPS's backbone (torchvision) and linear layers (LPIPS v0.1), SHA-256 checked."""
    from fedleak.weights import fetch, files

    for net in nets:  # every name checked before anything downloads
        files(net)
    for net in nets:
        for got in fetch(net, folder, progress=not quiet):
            state = "downloaded" if got.downloaded else "already there"
            console.print(f"LPIPS-{net}: {got.path.name} {state} (SHA-256 checked) → {got.path.parent}")
    if folder:
        print(f"fedleak: note: runs find these files with --set metrics.lpips_weights={folder} "
              f"or FEDLEAK_LPIPS={folder}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app; how it ends is decided in :mod:`fedleak.exits` (user
    errors one line and exit 2, Ctrl-C exit 130, bugs one line and exit 1)."""
    from fedleak.exits import INTERRUPTED, USER_ERROR, one_line, report

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


if __name__ == "__main__":
    main()
