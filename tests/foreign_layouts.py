"""torchvision / timm state dicts for tests, written out here from those libraries' module trees —
independent of fedleak's rename tables (:mod:`fedleak.models.layouts`), which the tests check.

A fedleak ResNet or DenseNet holds its tensors in the same order as the torchvision / timm model it
follows (stem, blocks in order — each block's convolutions and norms, then its shortcut — head), so
a fedleak state dict becomes a foreign one by giving its tensors, in order, the foreign names.
"""

from __future__ import annotations

import torch
from torch import nn

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{p}" for p in BN]


def resnet_keys(depths: tuple[int, ...], bottleneck: bool = False, se: bool = False) -> list[str]:
    """torchvision's ResNet (timm's SE-ResNet with ``se``) state-dict keys: conv1, bn1,
    layerN.J.{convK, bnK}[, se.fc1/fc2][, downsample.0/1], fc."""
    keys = ["conv1.weight", *_bn("bn1")]
    for stage, depth in enumerate(depths, 1):
        for block in range(depth):
            pre = f"layer{stage}.{block}"
            for k in range(1, 4 if bottleneck else 3):
                keys += [f"{pre}.conv{k}.weight", *_bn(f"{pre}.bn{k}")]
            if se:
                keys += [f"{pre}.se.fc{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
            if block == 0 and (stage > 1 or bottleneck):  # a stride or a channel change: a projection
                keys += [f"{pre}.downsample.0.weight", *_bn(f"{pre}.downsample.1")]
    return keys + ["fc.weight", "fc.bias"]


def densenet121_keys(stem_norm: bool = True) -> list[str]:
    """torchvision's densenet121 keys: features.conv0/norm0, denseblockB.denselayerL.{norm1,conv1,
    norm2,conv2}, transitionB.{norm,conv}, norm5, classifier (without norm0 for fedleak's small-image
    stem, a lone convolution)."""
    keys = ["features.conv0.weight", *(_bn("features.norm0") if stem_norm else [])]
    for b, depth in enumerate((6, 12, 24, 16), 1):
        for layer in range(1, depth + 1):
            pre = f"features.denseblock{b}.denselayer{layer}"
            keys += [*_bn(f"{pre}.norm1"), f"{pre}.conv1.weight", *_bn(f"{pre}.norm2"), f"{pre}.conv2.weight"]
        if b < 4:
            keys += [*_bn(f"features.transition{b}.norm"), f"features.transition{b}.conv.weight"]
    return keys + [*_bn("features.norm5"), "classifier.weight", "classifier.bias"]


FOREIGN_KEYS = {
    "resnet18": lambda own: resnet_keys((2, 2, 2, 2)),
    "se_resnet50": lambda own: resnet_keys((3, 4, 6, 3), bottleneck=True, se=True),
    "densenet121": lambda own: densenet121_keys(stem_norm="features.1.running_mean" in own),
}


def foreign_state(model: nn.Module, architecture: str) -> dict[str, torch.Tensor]:
    """``model``'s state dict under the torchvision / timm names of ``architecture``."""
    own = model.state_dict()
    keys = FOREIGN_KEYS[architecture](own)
    assert len(keys) == len(own), (len(keys), len(own))
    return dict(zip(keys, own.values()))
