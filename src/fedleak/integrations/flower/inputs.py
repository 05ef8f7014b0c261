"""What the Flower audit knows of the clients' inputs, by modality (DESIGN.md §7): :data:`INPUTS`.

The server (or the gate) names its model; the model's modality (:func:`modality_of_model`: a
fedleak :class:`~fedleak.models.text.TextModel` is ``text``, any other module ``image``) picks the
entry that turns what the user declared — input shape, classes, normalisation, public data, a
tokenizer — into the attacker's :class:`~fedleak.attacks.AttackerKnowledge`, checks the model and
the public data once, before the federation starts, and gives the audit its
:class:`~fedleak.audit.Scoring` (how its inputs reach the model, are checked, scored and shown).
The image entry is here; the text entry is :mod:`fedleak.integrations.flower.text`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from fedleak.attacks.base import AttackerKnowledge
from fedleak.audit import IMAGES, Scoring
from fedleak.errors import ConfigError
from fedleak.models.external import check_attackable
from fedleak.models.text import TextModel
from fedleak.registry import Registry


@dataclass(frozen=True)
class Declared:
    """What the user told the audit of its clients' inputs (``None``: not given)."""

    input_shape: Sequence[int] | None = None
    num_classes: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    tokenizer: Any = None  # text: a tokenizer (decode, pad_id) or the TextDataset the examples come from


@dataclass(frozen=True)
class AuditInputs:
    """One modality's entry: ``knowledge(model, declared)`` (checked; the model is probed once),
    ``public(public, knowledge)`` → the server's public data as (inputs, labels or None), checked,
    ``scoring(model, declared)`` → the audit's :class:`~fedleak.audit.Scoring`; ``lpips``: whether
    LPIPS backbones score it."""

    name: str
    knowledge: Callable[[nn.Module, Declared], AttackerKnowledge]
    public: Callable[[Any, AttackerKnowledge], tuple[Tensor | None, Tensor | None]]
    scoring: Callable[[nn.Module, Declared], Scoring]
    lpips: bool = False


INPUTS: Registry[AuditInputs] = Registry("audit modality")


def modality_of_model(model: nn.Module) -> str:
    """``text`` for a fedleak text model (a transformers model behind token ids), else ``image``."""
    return "text" if isinstance(model, TextModel) else "image"


def image_knowledge(model: nn.Module, declared: Declared) -> AttackerKnowledge:
    """The clients' ``input_shape`` (C, H, W), ``num_classes`` and one ``mean``/``std`` per channel,
    all required; the model must map such images to those logits (:func:`check_attackable`)."""
    shape = tuple(int(v) for v in declared.input_shape or ())
    mean, std = tuple(declared.mean or ()), tuple(declared.std or ())
    if declared.num_classes is None or len(shape) != 3 or len(mean) != shape[0] or len(std) != shape[0]:
        raise ConfigError("input_shape is (channels, height, width), with num_classes and one mean and std per "
                          "channel (an image model)")
    check_attackable(copy.deepcopy(model), shape, declared.num_classes)
    return AttackerKnowledge(architecture=model, input_shape=shape, num_classes=declared.num_classes,
                             mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))


def image_public(public: Any, knowledge: AttackerKnowledge) -> tuple[Tensor | None, Tensor | None]:
    """``public=`` as (images, labels or None), checked: N×C×H×W images in [0, 1], one label each."""
    if public is None:
        return None, None
    shape = knowledge.input_shape
    images, labels = public if isinstance(public, tuple) else (public, None)
    if not isinstance(images, Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape) \
            or len(images) == 0:
        raise ConfigError(f"public= must be N×{'×'.join(map(str, shape))} images (optionally with labels), "
                          f"got {tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    if not bool(((images >= 0) & (images <= 1)).all()):
        raise ConfigError("public= images must lie in [0, 1] (before normalisation)")
    if labels is not None and (not isinstance(labels, Tensor) or labels.shape != (len(images),)):
        raise ConfigError(f"public= labels must be one class index per image ({len(images)})")
    return images.detach().cpu().float().clone(), None if labels is None else labels.detach().cpu().long().clone()


INPUTS.register("image")(AuditInputs("image", image_knowledge, image_public, lambda model, declared: IMAGES,
                                     lpips=True))
