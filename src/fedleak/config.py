"""Typed run configuration: defaults < YAML file < command-line flags < ``--set a.b=c`` overrides
(files and overrides are read by :mod:`fedleak.config_yaml`).

Every section forbids unknown keys, so a typo is an error naming the key rather than a silently
ignored setting. Attack settings are validated by the chosen attack's own config class.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

# load_yaml: fedleak.config's own reader of settings (imported for the callers of fedleak.config).
from fedleak.config_yaml import (  # noqa: F401
    apply_override,
    cut,
    describe_validation_error,
    load_yaml,
    parse_override,
    read_yaml,
)
from fedleak.data.transforms import size_hw
from fedleak.defenses import check_spec, parse_defense
from fedleak.device import check_device
from fedleak.errors import ConfigError
from fedleak.fl.payload import TRAINING_SETTINGS, ClientTraining, client_training
from fedleak.fl.server import HONEST, canonical, default_attack
from fedleak.identity import LATER_FIELDS
from fedleak.models.external import is_external, refuse_file_factory
from fedleak.threats import THREAT_MODELS


class Section(BaseModel):
    """A config section: unknown keys and non-finite numbers (``.inf``, ``.nan``) are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSection(Section):
    name: str = Field("samples", description="dataset: samples | mnist | cifar10 | cifar100 | folder; text (with the text extra): pii | text | hf-disk")
    root: str | None = Field(None, description="data folder ($FEDLEAK_DATA when unset)")
    split: Literal["train", "test"] = "test"
    image_size: int | tuple[int, int] | None = Field(None, description="resize to this square side, or to [H, W]")
    channels: Literal[1, 3] | None = Field(None, description="convert images to 1 (grey) or 3 (colour) channels")
    index: list[int] | None = Field(None, description="dataset indices of the client's images")
    classes: list[str] | None = Field(None, description="draw the client's images from these classes")
    options: dict[str, Any] = Field(default_factory=dict, description="loader-specific options")

    @field_validator("index", "classes", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if isinstance(v, (int, str)):
            return [v] if isinstance(v, int) else [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        """A side or [H, W], both positive; a square [S, S] is the side S."""
        if v is None:
            return v
        h, w = size_hw(v)  # its ValueError is the config error
        return h if h == w else (h, w)


class ModelSection(Section):
    name: str = Field("convnet", description="registered architecture or package.module:factory")
    checkpoint: str | None = Field(None, description="trained weights (.safetensors from fedleak train, or .pt)")
    width: float | None = Field(None, gt=0, description="channel multiplier; the model's own default (1) when unset")
    seed: int | None = Field(None, ge=0, lt=2**63, description="initialisation seed (the run seed when unset)")
    mode: Literal["eval", "train"] = Field("eval", description="batch-norm mode on the client")
    options: dict[str, Any] = Field(default_factory=dict, description="builder-specific options")
    mean: tuple[float, ...] | None = Field(None, description="per-channel normalisation mean on [0, 1] pixels, e.g. "
                                           "0.5,0.5,0.5 (unset: see fedleak.models.normalization for the order)")
    std: tuple[float, ...] | None = Field(None, description="per-channel normalisation std (> 0), with model.mean")

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        """``0.5,0.5,0.5`` (the command line's form) or one number → a list."""
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _normalization(self) -> ModelSection:
        """mean and std come together, one value per channel (1 or 3) each, every std positive."""
        if (self.mean is None) != (self.std is None):
            raise ValueError("set model.mean and model.std together (one value per channel each)")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
                raise ValueError(f"model.mean and model.std need one value per channel (1 or 3) each, "
                                 f"got {len(self.mean)} and {len(self.std)}")
            if min(self.std) <= 0:
                raise ValueError(f"every model.std value must be positive, got {min(self.std):g}")
        return self

    @model_validator(mode="after")
    def _resolve_width(self) -> ModelSection:
        """A registered model's unset width is its default, 1, written out so that the resolved config
        says so; an external factory's stays unset (the factory's own default applies)."""
        if self.width is None and not is_external(self.name):
            self.width = 1.0
        return self


def _training_field(f: dataclasses.Field[Any], annotation: Any) -> tuple[Any, Any]:
    """One :class:`~fedleak.fl.ClientTraining` setting as a pydantic field: its type (its choices as
    a ``Literal``; not optional where the config's default is a value), the config's default, its
    description and bounds, from the setting's metadata."""
    meta = f.metadata
    if meta["choices"]:
        annotation = Literal[meta["choices"]]
    elif meta["config_default"] is not None and type(None) in get_args(annotation):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return annotation, Field(meta["config_default"], description=meta["help"], **meta["bounds"])


def _check_settings(values: Any) -> Any:
    """Each setting's own ``check`` (e.g. the optimizer is a registered one), as pydantic's error."""
    if isinstance(values, dict):
        for name, value in values.items():
            f = TRAINING_SETTINGS.get(name)
            if f is not None and f.metadata["check"] is not None and value is not None:
                f.metadata["check"](value)
    return values


_HINTS = get_type_hints(ClientTraining)
if TYPE_CHECKING:
    class _TrainingSection(Section):
        """The client section's training settings (their types come from ClientTraining)."""

        def __getattr__(self, name: str) -> Any: ...
else:
    _TrainingSection = create_model(
        "_TrainingSection", __base__=Section,
        __validators__={"_settings": model_validator(mode="before")(_check_settings)},
        **{name: _training_field(f, _HINTS[name]) for name, f in TRAINING_SETTINGS.items() if f.metadata["config"]})

LATER_CONFIG_FIELDS: dict[str, Any] = {
    **LATER_FIELDS,
    **{f"client.{name}": f.metadata["config_default"] for name, f in TRAINING_SETTINGS.items()
       if f.metadata["config"] and f.metadata["later"]}}
"""Run config fields added after run keys existed, with their defaults (:data:`fedleak.identity.LATER_FIELDS`
and each client-training setting declared ``later``): a run that leaves one at its default keeps its key."""


class ClientSection(_TrainingSection):
    """The client: its training settings (each a :class:`~fedleak.fl.ClientTraining` setting, declared
    there once), the size of its batch, its defense and its private seed."""

    batch_size: int = Field(1, ge=1, description="images in the client batch")
    defense: str | None = Field(None, description="obfuscation spec, e.g. topk:sparsity=0.9+noise:snr_db=10")
    seed: int | None = Field(None, ge=0, lt=2**63, description="the client's private seed: defense noise, data order, which "
                             "images it draws; drawn from OS entropy when unset (never given to the attack)")

    @field_validator("defense")
    @classmethod
    def _defense(cls, v: str | None) -> str | None:
        return check_spec(v)

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> ClientSection:
        """``epochs`` and ``local_steps`` both say how long the round is: one of them, not both; and
        the settings together must make a training (e.g. Nesterov needs SGD with momentum)."""
        if self.epochs is not None and "local_steps" in self.model_fields_set:
            raise ValueError("set client.epochs or client.local_steps, not both")
        try:
            self.training("eval")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def training(self, model_mode: str) -> ClientTraining:
        """The client's :class:`~fedleak.fl.ClientTraining` (batch norm in ``model_mode``, the model
        section's)."""
        return client_training({**self.model_dump(), "model_mode": model_mode})


class KnowledgeSection(Section):
    """What the attacker is declared to know beyond the payload."""

    labels: bool = Field(False, description="the attacker knows the client's labels")
    bn_stats: bool = Field(False, description="the attacker knows the client batch's BN statistics")


def _alex() -> list[Literal["alex", "vgg"]]:
    return ["alex"]


class MetricsSection(Section):
    """Optional metrics beyond PSNR and SSIM."""

    lpips: list[Literal["alex", "vgg"]] = Field(default_factory=_alex,
                                                description="LPIPS backbones (n/a without local weights)")
    lpips_weights: str | None = Field(None, description="folder with LPIPS weight files (searched first)")
    semantic: str | None = Field(None, description="a fedleak checkpoint of an independent classifier (not the "
                                 "target): each pair's Jaccard index of its top-k label sets (ROG's semantic metric)")
    semantic_k: int = Field(3, ge=1, description="labels per image of the semantic metric")

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


class ServerSection(Section):
    """The server threat model: honest-but-curious (the default) or malicious with a named model
    modification, e.g. ``imprint:bins=128`` or ``fishing:target=3`` (see :mod:`fedleak.fl.server`)."""

    threat: Literal["honest", "malicious"] = Field("honest", description="honest | malicious")
    modification: str | None = Field(None, description="what a malicious server changes in the model it sends: "
                                     "imprint:bins=128 | fishing:target=0 (settings spelled out once validated)")

    @field_validator("modification")
    @classmethod
    def _modification(cls, v: str | None) -> str | None:
        return None if v is None else canonical(v)

    @model_validator(mode="after")
    def _consistent(self) -> ServerSection:
        if self.threat == "malicious" and self.modification is None:
            raise ValueError("a malicious server needs server.modification (e.g. imprint:bins=128)")
        if self.threat == "honest" and self.modification is not None:
            raise ValueError("an honest server modifies nothing: set server.threat=malicious (or --server SPEC)")
        return self


class RunConfig(Section):
    """One attack run, everything that decides it: the client's data, the global model, the client's
    training and defense, the server's threat model, what the attacker knows, the attack and the
    metrics, plus the run seed and the device. Built by :func:`build_config` from a file, flags and
    ``--set`` overrides; ``config.yaml`` in a run folder is its resolved form and repeats the run."""

    device: str = Field("auto", description="where the run computes: auto | cpu | cuda | cuda:N | mps (auto: CUDA, "
                        "else MPS, else CPU); the resolved device is recorded with the results")
    seed: int = Field(0, ge=0, lt=2**63, description="run seed, recorded with the results")
    threat: str | None = Field(None, description="the threat model the run grants its attacker, A–H (fedleak.threats; "
                               "unset: B, the honest-but-curious server with public training settings, for a run; "
                               "the weakest that grants what each run uses, for a study); a run that needs more "
                               "is refused")
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    client: ClientSection = Field(default_factory=ClientSection)
    knowledge: KnowledgeSection = Field(default_factory=KnowledgeSection)
    attack: AttackSection = Field(default_factory=AttackSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    server: ServerSection = Field(default_factory=ServerSection)
    out: str | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("threat")
    @classmethod
    def _threat(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if v.strip().upper() not in THREAT_MODELS:
            raise ValueError(f"unknown threat model {v!r}: choose one of {', '.join(THREAT_MODELS)}")
        return v.strip().upper()

    @model_validator(mode="after")
    def _normalization_channels(self) -> RunConfig:
        """An explicit normalisation has one value per channel of the images the run reads."""
        mean, channels = self.model.mean, self.data.channels
        if mean is not None and channels is not None and len(mean) != channels:
            raise ValueError(f"model.mean and model.std have {len(mean)} value(s) but data.channels is {channels}")
        return self


DEFAULT_JOB: dict[str, dict[str, Any]] = {
    "model": {"name": "convnet", "width": 0.25},
    "data": {"name": "samples", "index": [4]},
}
"""The one-minute job of a bare ``fedleak attack``: ConvNet-16 (``convnet`` at width 0.25) attacked on
scikit-image's "camera" photograph (``samples`` index 4), the same image on every run. It fills in
only what a run leaves open: the model part when no ``model.name`` is named (a width the user set
wins); the data part when no ``data.name``, ``data.index`` or ``data.classes`` is named and the
client holds one image (batch size 1, one client) — otherwise a seeded draw with the client's private
seed picks the images. Naming a model gives that model at its own default width (1)."""


def _clients(spec: str | None) -> int:
    """How many clients' batches a defense spec aggregates (1 without ``aggregate``)."""
    return parse_defense(spec).clients


def _apply_default_job(tree: dict[str, Any]) -> None:
    """Fill in :data:`DEFAULT_JOB` where ``tree`` leaves the model or the data open."""
    model, data, client = (tree.get(k, {}) for k in ("model", "data", "client"))
    if not all(isinstance(s, dict) for s in (model, data, client)):
        return  # a malformed section that validation reports
    if model.get("name") is None:
        width = model.get("width")
        tree["model"] = {**model, "name": DEFAULT_JOB["model"]["name"],
                         "width": DEFAULT_JOB["model"]["width"] if width is None else width}
    spec = client.get("defense")
    one_image = client.get("batch_size") in (None, 1) and (not isinstance(spec, str) or _clients(spec) == 1)
    # A checkpoint names the dataset it was trained on (``resolve_checkpoint`` takes it): no default photo.
    trained = model.get("checkpoint") is not None
    if one_image and not trained and all(data.get(k) is None for k in ("name", "index", "classes")):
        tree["data"] = {**data, **DEFAULT_JOB["data"]}


def _apply_server_attack(tree: dict[str, Any]) -> None:
    """A malicious server's run that names no attack runs the attack its modification is for (imprint
    → ``imprint``, fishing → ``fishing``); a bad spec is left for validation to report."""
    server, attack = tree.get("server"), tree.get("attack", {})
    if not isinstance(server, dict) or not isinstance(attack, dict) or attack.get("name") is not None:
        return
    spec = server.get("modification")
    if isinstance(spec, str) and server.get("threat", HONEST) == "malicious":
        try:
            tree["attack"] = {**attack, "name": default_attack(spec)}
        except ConfigError:
            return


def _refuse_file_factory(tree: dict[str, Any], given: dict[str, Any], file: str | Path) -> None:
    """The run's ``model.name`` — the one setting that names code to import — may be external only
    when the user's own layers (``given``) name that factory, not when only ``file`` does."""
    def name_in(t: dict[str, Any]) -> Any:
        model = t.get("model")
        return model.get("name") if isinstance(model, dict) else None

    name = name_in(tree)
    if isinstance(name, str) and is_external(name) and name_in(given) != name:
        refuse_file_factory(name, f"config file {cut(str(file))}", "--model {name}")


def _batch_from_index(config: RunConfig) -> RunConfig:
    """Explicit image indices without an explicit batch size set the batch: the indices are shared
    evenly by the clients whose batches are aggregated (indices = batch × clients)."""
    index, client = config.data.index, config.client
    if not index or "batch_size" in client.model_fields_set:
        return config  # an explicit batch size is checked against the indices when the run draws them
    clients = _clients(client.defense)
    if len(index) % clients:
        raise ConfigError(f"{len(index)} image indices cannot be shared by {clients} clients; "
                          f"give a multiple of {clients} or set the batch size")
    return config.model_copy(update={"client": client.model_copy(update={"batch_size": len(index) // clients})})


def build_config(
    file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    *,
    trust_config: bool = False,
) -> RunConfig:
    """Merge the layers, fill in :data:`DEFAULT_JOB` where the run names no model, and validate.
    ``flags`` maps dotted keys to values (``None`` = not given). Image indices without a batch size
    set the batch size.

    ``flags`` and ``overrides`` are the user's own (command line or Python); ``file`` is a file: an
    external ``model.name`` (``package.module:factory``) that only the file names is refused, so that
    no file makes fedleak import code, unless ``trust_config`` (``--trust-config``)."""
    tree: dict[str, Any] = copy.deepcopy(read_yaml(file)) if file else {}
    given: dict[str, Any] = {}  # what the user's own layers set, apart from the file
    for key, value in (flags or {}).items():
        if value is not None:
            apply_override(tree, key.split("."), value)
            apply_override(given, key.split("."), value)
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(tree, parts, value)
        apply_override(given, parts, value)
    if file and not trust_config:
        _refuse_file_factory(tree, given, file)
    _apply_default_job(tree)
    _apply_server_attack(tree)
    try:
        config = RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    return _batch_from_index(config)
