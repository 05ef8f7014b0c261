"""ResNets (He et al. 2016) and SE-ResNets (Hu et al. 2018) for small and large images.

At ≤ 64 px (the longer side) the stem is one 3×3 convolution without max-pool (the CIFAR variant); above, the
ImageNet 7×7 stride-2 convolution and max-pool. ``norm`` is ``batch``, ``group`` or ``none``.
"""

from __future__ import annotations

from torch import nn

from fedleak.models.batchnorm import NormFactory, norm_layer
from fedleak.models.cards import imagenet
from fedleak.models.layouts import PARAM, Layout, Rule
from fedleak.models.registry import Builder, ImageSize, image_hw, register_model, scaled


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 3, stride, 1, bias=False), norm(planes), nn.ReLU(),
            nn.Conv2d(planes, cout, 3, 1, 1, bias=False), norm(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride, norm)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class SqueezeExcitation(nn.Module):
    """Hu et al. (2018): channel gates from globally pooled features (two 1×1 convs, reduction r)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.gate(x)


class Bottleneck(nn.Module):
    expansion = 4
    squeeze_excitation = False

    def __init__(self, cin: int, planes: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        cout = planes * self.expansion
        layers = [
            nn.Conv2d(cin, planes, 1, bias=False), norm(planes), nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), norm(planes), nn.ReLU(),
            nn.Conv2d(planes, cout, 1, bias=False), norm(cout),
        ]
        if self.squeeze_excitation:
            layers.append(SqueezeExcitation(cout))
        self.body = nn.Sequential(*layers)
        self.shortcut = _shortcut(cin, cout, stride, norm)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int, norm: NormFactory) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))


class SEBottleneck(Bottleneck):
    squeeze_excitation = True


class ResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        depths: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        image_size: ImageSize,
        width: float,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        make_norm = norm_layer(norm)
        base = scaled(64, width)
        small = max(image_hw(image_size)) <= 64
        if small:
            stem: list[nn.Module] = [nn.Conv2d(in_channels, base, 3, 1, 1, bias=False)]
        else:
            stem = [nn.Conv2d(in_channels, base, 7, 2, 3, bias=False)]
        stem += [make_norm(base), nn.ReLU()]
        if not small:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        cin = base
        for i, depth in enumerate(depths):
            planes = base * 2**i
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, make_norm))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


# torchvision/timm ResNet: conv1/bn1 stem, layerN.J blocks, downsample.0/1 shortcut, fc head.
# fedleak's blocks are one Sequential ``body``: conv, norm, relu, conv, norm[, relu, conv, norm][, SE].
_RULES: list[Rule] = [
    (r"^conv1\.weight$", "stem.0.weight"),
    (rf"^bn1\.{PARAM}$", r"stem.1.\1"),
    (rf"^layer([1-4])\.(\d+)\.(conv|bn)([1-3])\.{PARAM}$",
     lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.body.{3 * (int(m[4]) - 1) + (m[3] == 'bn')}.{m[5]}"),
    (rf"^layer([1-4])\.(\d+)\.downsample\.([01])\.{PARAM}$", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut.{m[3]}.{m[4]}"),
    (r"^layer([1-4])\.(\d+)\.se\.fc([12])\.(weight|bias)$",  # timm's SEModule
     lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.body.8.gate.{2 * int(m[3]) - 1}.{m[4]}"),
    (r"^fc\.(weight|bias)$", r"fc.\1"),
]


TORCHVISION = Layout(rules=lambda model: _RULES)
"""torchvision's and timm's names for a ResNet's tensors."""


def _variant(name: str, origin: str, block: type[BasicBlock | Bottleneck], depths: tuple[int, int, int, int]) -> Builder:
    """Register the ResNet named ``name``: ``block`` stacked ``depths`` deep per stage, with torchvision's
    and timm's tensor names (``origin`` credits the design)."""

    def build(num_classes: int, in_channels: int, image_size: ImageSize, width: float, norm: str = "batch") -> nn.Module:
        return ResNet(block, depths, num_classes, in_channels, image_size, width, norm)

    build.__name__ = build.__qualname__ = name  # importable (and picklable) under its own name
    return register_model(name, imagenet(origin), TORCHVISION)(build)


resnet18 = _variant("resnet18", "He et al. 2016; torchvision/timm resnet18", BasicBlock, (2, 2, 2, 2))
resnet34 = _variant("resnet34", "He et al. 2016; torchvision/timm resnet34", BasicBlock, (3, 4, 6, 3))
resnet50 = _variant("resnet50", "He et al. 2016; torchvision/timm resnet50", Bottleneck, (3, 4, 6, 3))
se_resnet50 = _variant("se_resnet50", "Hu et al. 2018; timm seresnet50", SEBottleneck, (3, 4, 6, 3))
