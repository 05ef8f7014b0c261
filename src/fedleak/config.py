"""Typed run configuration: defaults < YAML file < command-line flags < ``--set a.b=c`` overrides.

Every section forbids unknown keys, so a typo is an error naming the key rather than a silently
ignored setting. Attack settings are validated by the chosen attack's own config class.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedleak.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; accept exponents without a decimal point as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(Section):
    name: str = Field("samples", description="dataset: samples | mnist | cifar10 | cifar100 | folder")
    root: str | None = Field(None, description="data folder ($FEDLEAK_DATA when unset)")
    split: Literal["train", "test"] = "test"
    image_size: int | None = Field(None, ge=1, description="resize to this square side")
    channels: Literal[1, 3] | None = None
    index: list[int] | None = Field(None, description="dataset indices of the client's images")
    classes: list[str] | None = Field(None, description="draw the client's images from these classes")
    options: dict[str, Any] = Field(default_factory=dict, description="loader-specific options")

    @field_validator("index", "classes", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if isinstance(v, (int, str)):
            return [v] if isinstance(v, int) else [p.strip() for p in v.split(",") if p.strip()]
        return v


class ModelSection(Section):
    name: str = Field("convnet", description="registered architecture or package.module:factory")
    checkpoint: str | None = Field(None, description="trained weights (.safetensors from fedleak train, or .pt)")
    width: float = Field(0.25, gt=0, description="channel multiplier")
    seed: int | None = Field(None, description="initialisation seed (the run seed when unset)")
    mode: Literal["eval", "train"] = Field("eval", description="batch-norm mode on the client")
    options: dict[str, Any] = Field(default_factory=dict, description="builder-specific options")


class ClientSection(Section):
    protocol: str = Field("fedsgd", description="client protocol: fedsgd | fedavg")
    batch_size: int = Field(1, ge=1, description="images in the client batch")
    lr: float = Field(0.01, gt=0, description="local learning rate (fedavg)")
    local_steps: int = Field(1, ge=1, description="local SGD steps τ (fedavg)")
    local_batch_size: int | None = Field(None, ge=1, description="minibatch size (fedavg; default the batch)")
    shuffle_seed: int | None = Field(None, description="reshuffle each epoch with this public seed (fedavg)")
    update_scale: Literal["delta", "delta/lr"] = Field("delta", description="send θ₀ − θ_τ or that over lr")
    defense: str | None = Field(None, description="obfuscation spec, e.g. topk:sparsity=0.9+noise:snr_db=10")

    @field_validator("defense")
    @classmethod
    def _defense(cls, v: str | None) -> str | None:
        from fedleak.defenses import check_spec

        return check_spec(v)


class KnowledgeSection(Section):
    """What the attacker is declared to know beyond the payload."""

    labels: bool = Field(False, description="the attacker knows the client's labels")
    bn_stats: bool = Field(False, description="the attacker knows the client batch's BN statistics")


class MetricsSection(Section):
    """Optional metrics beyond PSNR and SSIM."""

    lpips: list[Literal["alex", "vgg"]] = Field(default_factory=lambda: ["alex"],
                                                description="LPIPS backbones (n/a without local weights)")
    lpips_weights: str | None = Field(None, description="folder with LPIPS weight files (searched first)")

    @field_validator("lpips", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v


class AttackSection(BaseModel):
    """``name`` plus the attack's own settings (validated by that attack)."""

    model_config = ConfigDict(extra="allow")
    name: str = "ig"

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RunConfig(Section):
    seed: int = 0
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    client: ClientSection = Field(default_factory=ClientSection)
    knowledge: KnowledgeSection = Field(default_factory=KnowledgeSection)
    attack: AttackSection = Field(default_factory=AttackSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    out: str | None = None


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line naming the first offending key and what is wrong with it."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    key = f"{prefix}{key}" if key else prefix.rstrip(".")
    if err["type"] == "extra_forbidden":
        return f"unknown config key {key!r}"
    if err["type"] == "value_error":
        return f"config {key}: {err['ctx']['error']}"
    return f"config {key}: {err['msg']}" + (f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` → (["a", "b"], c) with ``c`` read as YAML (numbers, booleans, lists)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or any(not p for p in parts):
        raise ConfigError(f"malformed --set {text!r}: expected key.path=value")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"malformed --set {text!r}: the value is not valid YAML") from None
    return parts, value


def apply_override(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    node = tree
    for i, p in enumerate(parts[:-1]):
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = load_yaml(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections")
    return data


def build_config(
    file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Merge the layers and validate. ``flags`` maps dotted keys to values (``None`` = not given)."""
    tree: dict[str, Any] = copy.deepcopy(read_yaml(file)) if file else {}
    for key, value in (flags or {}).items():
        if value is not None:
            apply_override(tree, key.split("."), value)
    for text in overrides or []:
        apply_override(tree, *parse_override(text))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
