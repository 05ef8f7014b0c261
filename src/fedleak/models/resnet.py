"""ResNets (He et al. 2016) and SE-ResNets (Hu et al. 2018) for small and large images.

At ≤ 64 px (the longer side) the stem is one 3×3 convolution without max-pool (the CIFAR variant); above, the
ImageNet 7×7 stride-2 convolution and max-pool. ``norm`` is ``batch``, ``group`` or ``none``.
"""

from __future__ import annotations

from torch import nn

from fedleak.models.batchnorm import NormFactory, norm_layer
from fedleak.models.cards import imagenet
from fedleak.models.registry import ImageSize, image_hw, register_model, scaled

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


@register_model("resnet18", imagenet("He et al. 2016; torchvision/timm resnet18"))
def resnet18(num_classes: int, in_channels: int, image_size: ImageSize, width: float, norm: str = "batch") -> nn.Module:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, image_size, width, norm)


@register_model("resnet34", imagenet("He et al. 2016; torchvision/timm resnet34"))
def resnet34(num_classes: int, in_channels: int, image_size: ImageSize, width: float, norm: str = "batch") -> nn.Module:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, image_size, width, norm)


@register_model("resnet50", imagenet("He et al. 2016; torchvision/timm resnet50"))
def resnet50(num_classes: int, in_channels: int, image_size: ImageSize, width: float, norm: str = "batch") -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, image_size, width, norm)


@register_model("se_resnet50", imagenet("Hu et al. 2018; timm seresnet50"))
def se_resnet50(num_classes: int, in_channels: int, image_size: ImageSize, width: float, norm: str = "batch") -> nn.Module:
    return ResNet(SEBottleneck, (3, 4, 6, 3), num_classes, in_channels, image_size, width, norm)
