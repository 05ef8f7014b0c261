"""VGG-7 as used in ROG's experiments: six 3×3 convolutions in three pairs, each pair followed by a
2×2 max-pool, and one linear classifier (7 weight layers). ``norm`` = none (default) | batch."""

from __future__ import annotations

from torch import nn

from fedleak.models.cards import cifar10
from fedleak.models.registry import ImageSize, image_hw, register_model, scaled, size_text


@register_model("vgg7", cifar10("Yue et al. 2023 (ROG)"))
def vgg7(num_classes: int, in_channels: int, image_size: ImageSize, width: float, norm: str = "none") -> nn.Module:
    if norm not in ("none", "batch"):
        raise ValueError(f"norm must be one of none, batch, got {norm!r}")
    h, w = (side // 8 for side in image_hw(image_size))
    if min(h, w) < 1:
        raise ValueError(f"images of {size_text(image_size)} px are too small for vgg7 (at least 8×8)")
    layers: list[nn.Module] = []
    cin = in_channels
    for planes in (64, 128, 256):
        cout = scaled(planes, width)
        for _ in range(2):
            layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
            cin = cout
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(cin * h * w, num_classes)]
    return nn.Sequential(*layers)
