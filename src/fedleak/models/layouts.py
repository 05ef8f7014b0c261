"""Foreign state-dict layouts: how torchvision / timm name a family's tensors, mapped to fedleak's names.

A user's ImageNet checkpoint names its tensors the way torchvision or timm build the model
(``layer1.0.conv1.weight``, ``features.denseblock1.denselayer1.norm1.weight``); fedleak's modules
name the same tensors by position (``stages.0.0.body.0.weight``, ``features.4.body.0.weight``). A
:class:`Layout` is a small table of regex renames from the foreign names to fedleak's; each family
declares its own beside its builders (timm's ``filter_fn`` habit: :mod:`fedleak.models.resnet`,
:mod:`fedleak.models.densenet`) and registers it with the model
(:func:`fedleak.models.registry.register_model`) in :data:`LAYOUTS`. :func:`translate` applies one
only when a state dict does not already use fedleak's names. Shapes are never touched here: the
loader checks them strictly afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedleak.registry import Registry

Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]

PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
"""The tensor names of a layer, as a regex group."""


@dataclass(frozen=True)
class Layout:
    """A family's foreign layout: ``rules(model)`` renames foreign keys to the model's own (positions
    may depend on the built model)."""

    rules: Callable[[nn.Module], list[Rule]]


LAYOUTS: Registry[Layout] = Registry("state-dict layout")
"""Each registered model's foreign layout, by model name (filled by :func:`register_model`)."""


def rename(key: str, rules: list[Rule]) -> str:
    """``key`` under the first rule that matches it (unchanged when none does)."""
    for pattern, target in rules:
        renamed, n = re.subn(pattern, target, key)
        if n:
            return renamed
    return key


def translate(state: dict[str, torch.Tensor], model: nn.Module,
              architecture: str) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """``state`` in fedleak's names, the original name of each renamed key, and the layout used.

    A state dict that already uses the model's names, or a model without a registered layout, is
    returned unchanged (layout ``""``). A ``module.`` prefix (a DataParallel save) is dropped first."""
    own = model.state_dict()
    if all(k.startswith("module.") for k in state) and state:
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if set(state) == set(own) or architecture not in LAYOUTS:
        return state, {}, ""
    rules = LAYOUTS.get(architecture).rules(model)
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = rename(key, rules)
        if new in renamed:  # two foreign tensors cannot land on one of ours
            new = key
        renamed[new] = value
        origin[new] = key
    return renamed, origin, "torchvision/timm"
