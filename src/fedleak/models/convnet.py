"""The ConvNet of Geiping et al. ("Inverting Gradients", 2020): eight 3×3 conv-BN-ReLU blocks
(four at full resolution, 3×3 pool, two, pool, two) and a linear classifier. ``width`` = 1 is
ConvNet-64; 0.25 is ConvNet-16.

``norm`` is ``batch`` (the paper), ``group`` or ``none``. ``pool="max"`` is the paper's
architecture. The default is average pooling: with max-pooling an untrained ConvNet's gradient
depends on which of nine positions wins each pool, and inversion from a random start stalls in that
combinatorial landscape (``benchmarks/pooling.py`` measures IG against both). Convolutions use He
initialisation so that, in eval mode, the gradients of early layers are not drowned by the
classifier's.
"""

from __future__ import annotations

from torch import nn

from fedleak.models.batchnorm import NormFactory, norm_layer
from fedleak.models.cards import cifar10
from fedleak.models.registry import ImageSize, image_hw, register_model, scaled, size_text

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _block(cin: int, cout: int, norm: NormFactory) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), norm(cout), nn.ReLU()]


class ConvNet(nn.Module):
    def __init__(
        self, num_classes: int, in_channels: int, image_size: ImageSize, width: float, pool: str = "avg",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        w = scaled(64, width)
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate([w, 2 * w, 2 * w, 4 * w, 4 * w, 4 * w, 4 * w, 4 * w]):
            layers += _block(cin, cout, norm_layer(norm))
            cin = cout
            if i in (3, 5):  # 32 px → 10 → 3
                layers.append(POOLS[pool](3))
        self.features = nn.Sequential(*layers)
        fh, fw = (side // 3 // 3 for side in image_hw(image_size))  # the feature map after two pools
        if min(fh, fw) < 1:
            raise ValueError(f"images of {size_text(image_size)} px are too small for convnet (at least 9×9)")
        self.classifier = nn.Linear(4 * w * fh * fw, num_classes)
        for module in self.modules():  # He initialisation keeps activations (and gradients) in scale
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:  # every conv here has one
                    nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register_model("convnet", cifar10("Geiping et al. 2020 (inversefed); Lim & Chan 2021"))
def convnet(
    num_classes: int, in_channels: int, image_size: ImageSize, width: float, pool: str = "avg",
    norm: str = "batch",
) -> nn.Module:
    return ConvNet(num_classes, in_channels, image_size, width, pool, norm)
