"""DenseNet-121 (Huang et al. 2017): dense blocks of 6, 12, 24, 16 layers, growth 32, bottleneck 4,
compression 0.5. At ≤ 64 px (the longer side) the stem is one 3×3 convolution without pooling."""

from __future__ import annotations

import re

import torch
from torch import nn

from fedleak.models.cards import imagenet
from fedleak.models.layouts import PARAM, Layout, Rule
from fedleak.models.registry import ImageSize, image_hw, register_model, scaled


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, bottleneck * growth, 1, bias=False),
            nn.BatchNorm2d(bottleneck * growth), nn.ReLU(),
            nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def _transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    def __init__(
        self,
        blocks: tuple[int, ...],
        growth: int,
        stem: int,
        num_classes: int,
        in_channels: int,
        image_size: ImageSize,
        bottleneck: int = 4,
    ) -> None:
        super().__init__()
        if max(image_hw(image_size)) <= 64:
            layers: list[nn.Module] = [nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)]
        else:
            layers = [nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(),
                      nn.MaxPool2d(3, 2, 1)]
        channels = stem
        for i, depth in enumerate(blocks):
            for _ in range(depth):
                layers.append(DenseLayer(channels, growth, bottleneck))
                channels += growth
            if i < len(blocks) - 1:
                layers.append(_transition(channels, channels // 2))
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def _rules(model: nn.Module) -> list[Rule]:
    """torchvision/timm DenseNet: ``features.{conv0,norm0,denseblockB.denselayerL,transitionB,norm5}``
    and ``classifier``. fedleak's ``features`` is one flat Sequential, so the positions are read from
    the model itself (they depend on the block sizes and on the small-image stem)."""
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
        (rf"^features\.norm0\.{PARAM}$", r"features.1.\1"),
        # old torchvision files spell ``norm.1`` for ``norm1`` (torchvision fixes them the same way)
        (rf"^features\.denseblock(\d+)\.denselayer(\d+)\.(norm|conv)\.?([12])\.{PARAM}$", layer),
        (rf"^features\.transition(\d+)\.(norm|conv)\.{PARAM}$", transition),
        (rf"^features\.norm5\.{PARAM}$", rf"features.{last + 1}.\1"),
        (r"^classifier\.(weight|bias)$", r"classifier.\1"),
    ]


TORCHVISION = Layout(rules=_rules)
"""torchvision's and timm's names for a DenseNet's tensors."""


@register_model("densenet121", imagenet("Huang et al. 2017; torchvision/timm densenet121"), TORCHVISION)
def densenet121(num_classes: int, in_channels: int, image_size: ImageSize, width: float) -> nn.Module:
    return DenseNet((6, 12, 24, 16), scaled(32, width), scaled(64, width), num_classes, in_channels, image_size)
