"""Foreign state-dict layouts: torchvision / timm ResNet and DenseNet keys → fedleak's module names.

A user's ImageNet checkpoint names its tensors the way torchvision or timm build the model
(``layer1.0.conv1.weight``, ``features.denseblock1.denselayer1.norm1.weight``); fedleak's modules
name the same tensors by position (``stages.0.0.body.0.weight``, ``features.4.body.0.weight``). A
layout is a small table of regex renames, registered per model name in :data:`LAYOUTS`;
:func:`translate` applies it only when a state dict does not already use fedleak's names. Shapes are
never touched here: the loader checks them strictly afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from fedleak.registry import Registry

Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]
LayoutBuilder = Callable[[nn.Module], list[Rule]]

LAYOUTS: Registry[LayoutBuilder] = Registry("state-dict layout")

_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

# torchvision/timm ResNet: conv1/bn1 stem, layerN.J blocks, downsample.0/1 shortcut, fc head.
# fedleak's blocks are one Sequential ``body``: conv, norm, relu, conv, norm[, relu, conv, norm][, SE].
_RESNET: list[Rule] = [
    (rf"^conv1\.weight$", "stem.0.weight"),
    (rf"^bn1\.{_PARAM}$", r"stem.1.\1"),
    (rf"^layer([1-4])\.(\d+)\.(conv|bn)([1-3])\.{_PARAM}$",
     lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.body.{3 * (int(m[4]) - 1) + (m[3] == 'bn')}.{m[5]}"),
    (rf"^layer([1-4])\.(\d+)\.downsample\.([01])\.{_PARAM}$", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut.{m[3]}.{m[4]}"),
    (r"^layer([1-4])\.(\d+)\.se\.fc([12])\.(weight|bias)$",  # timm's SEModule
     lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.body.8.gate.{2 * int(m[3]) - 1}.{m[4]}"),
    (r"^fc\.(weight|bias)$", r"fc.\1"),
]

for _name in ("resnet18", "resnet34", "resnet50", "se_resnet50"):
    LAYOUTS.register(_name)(lambda model: _RESNET)


@LAYOUTS.register("densenet121")
def densenet_layout(model: nn.Module) -> list[Rule]:
    """torchvision/timm DenseNet: ``features.{conv0,norm0,denseblockB.denselayerL,transitionB,norm5}``
    and ``classifier``. fedleak's ``features`` is one flat Sequential, so the positions are read from
    the model itself (they depend on the block sizes and on the small-image stem)."""
    from fedleak.models.densenet import DenseLayer

    children = list(model.features.children())  # type: ignore[union-attr]
    blocks: list[list[int]] = [[]]
    transitions: list[int] = []
    for i, child in enumerate(children):
        if isinstance(child, DenseLayer):
            blocks[-1].append(i)
        elif isinstance(child, nn.Sequential):
            transitions.append(i)
            blocks.append([])
    last = blocks[-1][-1] if blocks[-1] else len(children) - 1
    body = {"norm1": 0, "conv1": 2, "norm2": 3, "conv2": 5}
    trans = {"norm": 0, "conv": 2}

    def layer(m: re.Match[str]) -> str:
        b, j = int(m[1]) - 1, int(m[2]) - 1
        if b >= len(blocks) or j >= len(blocks[b]):
            return m[0]  # left as it is: reported as unexpected
        return f"features.{blocks[b][j]}.body.{body[m[3] + m[4]]}.{m[5]}"

    def transition(m: re.Match[str]) -> str:
        b = int(m[1]) - 1
        return f"features.{transitions[b]}.{trans[m[2]]}.{m[3]}" if b < len(transitions) else m[0]

    return [
        (r"^features\.conv0\.weight$", "features.0.weight"),
        (rf"^features\.norm0\.{_PARAM}$", r"features.1.\1"),
        # old torchvision files spell ``norm.1`` for ``norm1`` (torchvision fixes them the same way)
        (rf"^features\.denseblock(\d+)\.denselayer(\d+)\.(norm|conv)\.?([12])\.{_PARAM}$", layer),
        (rf"^features\.transition(\d+)\.(norm|conv)\.{_PARAM}$", transition),
        (rf"^features\.norm5\.{_PARAM}$", rf"features.{last + 1}.\1"),
        (r"^classifier\.(weight|bias)$", r"classifier.\1"),
    ]


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
    rules = LAYOUTS.get(architecture)(model)
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = rename(key, rules)
        if new in renamed:  # two foreign tensors cannot land on one of ours
            new = key
        renamed[new] = value
        origin[new] = key
    return renamed, origin, "torchvision/timm"


def inverse(state: dict[str, torch.Tensor], model: nn.Module, architecture: str) -> dict[str, torch.Tensor]:
    """A fedleak state dict in the torchvision/timm layout: for exporting, and for tests."""
    rules = LAYOUTS.get(architecture)(model)
    foreign = _foreign_names(model, rules)
    return {foreign.get(k, k): v for k, v in state.items()}


def _foreign_names(model: nn.Module, rules: list[Rule]) -> dict[str, str]:
    """fedleak key → foreign key, by trying the foreign names each fedleak key could have come from."""
    candidates = _candidate_foreign_keys(model)
    out = {}
    for key in candidates:
        out.setdefault(rename(key, rules), key)
    return out


def _candidate_foreign_keys(model: nn.Module) -> list[str]:
    params = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight", "fc.weight", "fc.bias", "classifier.weight", "classifier.bias",
            "features.conv0.weight"]
    keys += [f"bn1.{p}" for p in params] + [f"features.norm0.{p}" for p in params]
    keys += [f"features.norm5.{p}" for p in params]
    for s in range(1, 5):
        for j in range(64):
            for kind in ("conv", "bn"):
                for n in (1, 2, 3):
                    keys += [f"layer{s}.{j}.{kind}{n}.{p}" for p in params]
            keys += [f"layer{s}.{j}.downsample.{i}.{p}" for i in (0, 1) for p in params]
            keys += [f"layer{s}.{j}.se.fc{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
            keys += [f"features.denseblock{s}.denselayer{j + 1}.{n}.{p}" for n in ("norm1", "conv1", "norm2", "conv2")
                     for p in params]
        keys += [f"features.transition{s}.{n}.{p}" for n in ("norm", "conv") for p in params]
    return keys
