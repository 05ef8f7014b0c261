"""``fedleak attack`` (and its ``--print-config``) and ``fedleak config``.

The attack command's one-to-one options come from one table, :data:`FLAGS` (option → the config
key it sets): their help is that config field's description, and the ``flags`` given to
:func:`~fedleak.config.build_config` are read off the same table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.table import Table

from fedleak.attacks import ATTACKS, build_attack
from fedleak.cli.common import TrustOption, _yaml, console
from fedleak.config import AttackSection, RunConfig, build_config
from fedleak.device import device_name, resolve_device
from fedleak.errors import ConfigError
from fedleak.fl.server import server_flags
from fedleak.models import MODELS
from fedleak.models.catalogue import describe_model, describe_models
from fedleak.pipeline import resolve_checkpoint, run
from fedleak.report.run import summary, write_run
from fedleak.store import check_out, default_out, write_atomically

# `fedleak attack`'s options that each set one config key, in the order they are applied.
FLAGS: dict[str, str] = {
    "--dataset": "data.name", "--root": "data.root", "--index": "data.index", "--class": "data.classes",
    "--image-size": "data.image_size", "--channels": "data.channels",
    "--model": "model.name", "--width": "model.width", "--mean": "model.mean", "--std": "model.std",
    "--checkpoint": "model.checkpoint",
    "--batch-size": "client.batch_size", "--protocol": "client.protocol", "--local-steps": "client.local_steps",
    "--defense": "client.defense",
    "--attack": "attack.name", "--prior": "attack.prior", "--iterations": "attack.iterations",
    "--restarts": "attack.restarts",
    "--known-labels": "knowledge.labels", "--threat": "threat",
    "--seed": "seed", "--device": "device", "--out": "out",
}
# Help where the field has no description, or where the command line says more (or takes less) than the field.
HELP: dict[str, str] = {
    "--image-size": "resize images to this square side (data.image_size=[H,W] for other shapes)",
    "--mean": "the clients' normalisation mean per channel, e.g. 0.5,0.5,0.5, with --std (a fedleak checkpoint's "
              "recorded values come first; unset: your model's declared, an ImageNet checkpoint's card, else the "
              "dataset's; docs/models.md)",
    "--attack": "attack name",
    "--out": "run folder (default runs/<timestamp>)",
}
# The option's parameter below where it is not the option's name (``--class`` is a keyword, ``attack`` the command).
PARAMETERS: dict[str, str] = {"--class": "classes", "--attack": "attack_name"}


def field_help(key: str) -> str:
    """The description of config key ``key``, e.g. ``client.batch_size``: the field of
    :class:`~fedleak.config.RunConfig`'s section, or for an attack's own setting (``attack.iterations``)
    the default attack's (ig) where it has one, else the first registered attack's that has it."""
    *sections, name = key.split(".")
    model: type[BaseModel] = RunConfig
    for section in sections:
        annotation = model.model_fields[section].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), key
        model = annotation
    if model is AttackSection and name not in model.model_fields:  # the default attack's setting, else the first's
        default = AttackSection.model_fields["name"].default
        infos = [ATTACKS.get(n).Config.model_fields.get(name) for n in sorted(ATTACKS.names(), key=lambda n: n != default)]
        info: FieldInfo | None = next((i for i in infos if i is not None and i.description), None)
    else:
        info = model.model_fields.get(name)
    if info is None or not info.description:
        raise KeyError(f"config key {key!r} has no description: give {key}'s option a HELP entry")
    return info.description


def flag(name: str, *short: str) -> Any:
    """The ``typer.Option`` of :data:`FLAGS` entry ``name`` (``--a/--no-a`` for a switch), its help
    the config field's description."""
    main = name.split("/")[0]
    return typer.Option(name, *short, help=HELP.get(main) or field_help(FLAGS[main]))


def config_flags(given: dict[str, Any]) -> dict[str, Any]:
    """:data:`FLAGS`'s config keys with the values ``given`` by parameter name (``None``: not given)."""
    values = (given[PARAMETERS.get(f, f[2:].replace("-", "_"))] for f in FLAGS)
    return {key: str(v) if isinstance(v, Path) else v for key, v in zip(FLAGS.values(), values, strict=True)}


def attack(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config")] = None,
    trust_config: TrustOption = False,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="override: key.path=value")] = None,
    dataset: Annotated[str | None, flag("--dataset")] = None,
    root: Annotated[str | None, flag("--root")] = None,
    index: Annotated[str | None, flag("--index")] = None,
    classes: Annotated[str | None, flag("--class")] = None,
    image_size: Annotated[int | None, flag("--image-size")] = None,
    channels: Annotated[int | None, flag("--channels")] = None,
    model: Annotated[str | None, flag("--model")] = None,
    checkpoint: Annotated[Path | None, flag("--checkpoint")] = None,
    width: Annotated[float | None, flag("--width")] = None,
    mean: Annotated[str | None, flag("--mean")] = None,
    std: Annotated[str | None, flag("--std")] = None,
    batch_size: Annotated[int | None, flag("--batch-size", "-b")] = None,
    protocol: Annotated[str | None, flag("--protocol")] = None,
    local_steps: Annotated[int | None, flag("--local-steps")] = None,
    defense: Annotated[str | None, flag("--defense")] = None,
    server: Annotated[str | None, typer.Option(
        help="server threat model: honest, or a malicious modification, e.g. imprint:bins=128 or fishing:target=3 "
             "(its attack runs unless --attack names another)")] = None,
    attack_name: Annotated[str | None, flag("--attack")] = None,
    prior: Annotated[Path | None, flag("--prior")] = None,
    iterations: Annotated[int | None, flag("--iterations")] = None,
    restarts: Annotated[int | None, flag("--restarts")] = None,
    known_labels: Annotated[bool | None, flag("--known-labels/--recover-labels")] = None,
    threat: Annotated[str | None, flag("--threat")] = None,
    seed: Annotated[int | None, flag("--seed")] = None,
    device: Annotated[str | None, flag("--device")] = None,
    out: Annotated[Path | None, flag("--out")] = None,
    force: Annotated[bool, typer.Option(help="overwrite a non-empty run folder")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="print the resolved config (every setting, defaults filled in) as YAML and exit")
    ] = False,
) -> None:
    """Attack one client update and write config, metrics, images and an HTML report."""
    flags = {**config_flags(locals()), **server_flags(server)}  # locals(): as yet only the parameters
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
    below = row.get("vs no-leak", "above") != "above"  # flagged: a guess without the update scores as well
    table = Table(title=f"fedleak attack → {folder}", caption=(
        f"▼ {row.get('vs no-leak')} the no-leak baseline (the better of two guesses without the update; "
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
    cfg = build_config(config, {**flags, "attack.prior": None}, overrides, trust_config=trust_config)
    takers = [n for n in ATTACKS.names() if "prior" in ATTACKS.get(n).Config.model_fields]
    if "prior" not in type(build_attack(cfg.attack.name).config).model_fields:
        raise ConfigError(f"--prior is a restoration prior from `fedleak train-prior`, used only by the "
                          f"{', '.join(takers)} attack; the attack {cfg.attack.name!r} takes none "
                          f"(drop --prior, or add --attack {takers[0]})")


def _resolved_config(cfg: RunConfig) -> dict[str, Any]:
    """What a run of ``cfg`` would use: every section with its defaults, the checkpoint's architecture
    where one is given, and the chosen attack's (or preset's) settings in full."""
    attack = build_attack(cfg.attack.name, cfg.attack.settings())
    cfg, _ = resolve_checkpoint(cfg)
    tree = cfg.model_dump(mode="json")
    tree["attack"] = {"name": cfg.attack.name, **attack.config.model_dump(mode="json")}
    return tree


def config_cmd(
    attack_name: Annotated[str, typer.Argument(
        metavar="NAME", help="attack or preset name, e.g. ig, rog, ig-limchan; a model name, e.g. resnet18; "
                             "or models (every model's card)")],
) -> None:
    """Print an attack's settings as YAML: each with its default (a preset's values where it sets
    them), type and description. Set them with --set attack.KEY=VALUE or a config file's attack section.
    For a model: its config section, options and card (input size, normalisation); `models` lists every card."""
    if attack_name == "models" or attack_name in MODELS:  # models are named apart from attacks
        sys.stdout.write(describe_models() if attack_name == "models" else describe_model(attack_name))
        return
    attack = build_attack(attack_name)
    values = attack.config.model_dump(mode="json")
    fields = type(attack.config).model_fields
    base = next(n for n in ATTACKS.names() if ATTACKS.get(n) is type(attack))
    doc = (type(attack).__doc__ or "").strip().splitlines()
    lines = [f"# {attack_name}" + (f" (a preset of {base})" if base != attack_name else "")
             + (f": {doc[0]}" if doc else ""),
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
