"""The attacker's side of the boundary: what an attack may know and what it returns.

An :class:`Attack` sees a :class:`~fedleak.fl.Payload` and an :class:`AttackerKnowledge`, nothing
else — no client images and, unless the run declares them known, no labels. Restarts and checkpoints
are chosen by the observable matching loss only.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import Tensor, nn

from fedleak.attacks.objectives import COSTS
from fedleak.attacks.optimization import INITS
from fedleak.config import describe_validation_error
from fedleak.data.normalization import Normalization
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.payload import Payload
from fedleak.presets import load_preset
from fedleak.registry import Registry


@dataclass(frozen=True)
class AttackerKnowledge:
    """What the server-side attacker knows besides the payload.

    ``architecture`` is a module of the target's architecture (its weights are replaced by the
    payload's model state). ``labels`` and ``bn_stats`` (the client batch's per-channel mean and
    variance at each batch-norm layer, in module order) are set only when the run declares the
    attacker knows them.
    """

    architecture: nn.Module
    input_shape: tuple[int, ...]  # an image's C×H×W; a token batch's padded length (T,)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: Tensor | None = None
    bn_stats: list[tuple[Tensor, Tensor]] | None = None

    @property
    def normalization(self) -> Normalization:
        """The client's normalisation the attacker is declared to know (``mean``, ``std``)."""
        return Normalization(self.mean, self.std)


@dataclass
class Reconstruction:
    """An attack's output: the recovered inputs in their modality's form — images in [0, 1]
    (B×C×H×W), or token ids (int64 B×T, right-padded with the model's pad id) — in ``images``,
    and recovered labels, plus how it got there."""

    images: Tensor
    labels: Tensor
    matching_loss: float
    restart_losses: list[float]
    iterations: int
    seconds: float
    trace: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the attacker can tell about its own result

    @classmethod
    def from_restarts(cls, images: Tensor, labels: Tensor, final: Tensor, winner: int, trace: Any,
                      done: int) -> Reconstruction:
        """The winning restart's ``images`` with every restart's final matching loss ``final``;
        ``winner`` is the restart chosen by :func:`~fedleak.attacks.optimization.best_restart` (the
        lowest finite loss). The winner's loss closes the ``trace`` (a
        :class:`~fedleak.attacks.optimization.Trace`)."""
        finite = final[torch.isfinite(final)]
        trace.record(done, last=True, loss=float(final[winner]), mean_loss=float(finite.mean()))
        return cls(images=images, labels=labels.detach().clone(), matching_loss=float(final[winner]),
                   restart_losses=final.tolist(), iterations=done, seconds=trace.seconds, trace=trace.rows)


class AttackConfig(BaseModel):
    """Base of every attack's settings; unknown keys and non-finite numbers (a weight or a learning
    rate of ``.inf`` or ``.nan`` would only produce NaN reconstructions) are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class OptimizationConfig(AttackConfig):
    """Settings shared by the optimisation attacks (IG, DLG); each sets its own defaults on top."""

    iterations: int = Field(1200, ge=1, description="optimisation steps")
    lr: float = Field(0.1, gt=0, description="learning rate")
    cost: str = Field("cosine", description="matching cost: cosine | l2")
    init: str = Field("randn", description="initialisation: randn | rand | zeros")
    restarts: int = Field(1, ge=1, description="random restarts; the lowest matching loss wins")
    patience: int | None = Field(None, ge=1, description="early stop after this many stale steps")
    min_delta: float = Field(1e-4, ge=0, description="relative improvement that resets patience")
    log_every: int = Field(10, ge=1, description="read the loss back to the host (progress, trace, early stopping) "
                           "every N iterations only, so a GPU is not stalled each step (1: every step)")

    precision: Literal["fp32", "tf32"] = Field("fp32", description="float32 products on a CUDA GPU: fp32 (exact; "
                                               "also turns off cuDNN's default TF32 convolutions) | tf32 "
                                               "(Ampere+ tensor cores, faster, ~3 decimal digits per product)")

    _cost = field_validator("cost")(lambda v: COSTS.check(v))
    _init = field_validator("init")(lambda v: INITS.check(v))


C = TypeVar("C", bound=AttackConfig)


class Attack(ABC, Generic[C]):
    """An attack is built from its validated ``Config`` and run on one payload.

    ``class Analytic(Attack[AnalyticConfig])`` makes ``AnalyticConfig`` the attack's ``Config`` (and
    the type of ``self.config``). :attr:`requires` names the capabilities
    (:data:`fedleak.threats.CAPABILITIES`) the attack always uses beyond the payload, each with why;
    :meth:`needs` adds those its settings call for."""

    Config: ClassVar[type[AttackConfig]] = AttackConfig
    name: ClassVar[str] = "attack"  # shown on progress bars
    requires: ClassVar[Mapping[str, str]] = {}
    config: C

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__:  # named in the class body: that one
            return
        for base in cls.__dict__.get("__orig_bases__", ()):  # its own bases only, never a parent's
            for arg in get_args(base):
                if isinstance(arg, type) and issubclass(arg, AttackConfig):
                    cls.Config = arg

    def __init__(self, config: C) -> None:
        self.config = config

    def needs(self) -> dict[str, str]:
        """The capabilities this attack, with its settings, uses beyond the payload: capability →
        what uses it (for the refusal line of :func:`fedleak.threats.check`)."""
        return {c: f"attack {self.name} ({why})" for c, why in self.requires.items()}

    @abstractmethod
    def run(
        self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False
    ) -> Reconstruction:
        """Reconstruct the client batch behind ``payload``."""

    def run_many(self, payloads: Sequence[Payload], knowledges: Sequence[AttackerKnowledge],
                 seeds: Sequence[int], progress: bool = False) -> list[Reconstruction]:
        """Reconstruct the batch behind each of several independent payloads (``knowledges`` and
        ``seeds``: one per payload). Each result equals what :meth:`run` gives for that payload alone;
        attacks that can optimise many payloads at once (IG, ROG) do so, the others run them one
        after another."""
        return [self.run(p, k, seed=s, progress=progress) for p, k, s in zip(payloads, knowledges, seeds)]


ATTACKS: Registry[type[Attack[Any]]] = Registry("attack")
A = TypeVar("A", bound=Attack[Any])


def register_attack(name: str) -> Callable[[type[A]], type[A]]:
    """Class decorator: register an attack under ``name``, which is also its :attr:`Attack.name`."""

    def add(cls: type[A]) -> type[A]:
        cls.name = name
        ATTACKS.register(name)(cls)
        return cls

    return add


def build_attack(name: str, settings: dict[str, Any] | None = None) -> Attack[Any]:
    """Build attack or preset ``name`` with ``settings`` (which override a preset's) validated
    against the attack's config."""
    preset = load_preset(name)
    if preset is not None:
        name = preset.pop("name")
        settings = {**preset, **(settings or {})}
    cls = ATTACKS.get(name)
    try:
        return cls(cls.Config.model_validate(settings or {}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix="attack.")) from None


def target_model(payload: Payload, knowledge: AttackerKnowledge) -> nn.Module:
    """The attacker's copy of the global model: the known architecture with the payload's state."""
    model = copy.deepcopy(knowledge.architecture)
    try:
        model.load_state_dict(payload.model_state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise FedleakError(f"the payload's model state does not fit the architecture: {first}") from None
    model.train(payload.hyper.model_mode == "train")
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def check_update(payload: Payload, params: Mapping[str, Tensor]) -> None:
    """The payload's update must name the model's parameters, with their shapes, and be finite."""
    if not payload.update:
        raise FedleakError("the payload holds no update")
    for name, target in payload.update.items():
        if name not in params:
            raise FedleakError(f"update {name!r} names no parameter of the model")
        if target.shape != params[name].shape:
            raise FedleakError(
                f"update {name!r} has shape {tuple(target.shape)}, parameter {tuple(params[name].shape)}"
            )
        if not torch.isfinite(target).all():
            raise FedleakError(f"update {name!r} contains NaN or infinite values")
