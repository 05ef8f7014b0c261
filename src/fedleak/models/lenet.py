"""LeNet as DLG used it: three 5×5 convolutions with sigmoid activations and one linear layer."""

from __future__ import annotations

from torch import nn

from fedleak.models.cards import ModelCard
from fedleak.models.registry import ImageSize, image_hw, register_model, scaled

# DLG attacks CIFAR-100 at 32 px and feeds the model raw [0, 1] pixels (no normalisation).
DLG = ModelCard((3, 32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "CIFAR-100, unnormalised", "Zhu et al. 2019 (DLG)")


def _conv_out(size: int, stride: int) -> int:
    return (size + 2 * 2 - 5) // stride + 1


class LeNet(nn.Module):
    """Sigmoid LeNet of Zhu et al. (DLG), weights uniform in [-0.5, 0.5] as in their release."""

    def __init__(self, num_classes: int, in_channels: int, image_size: ImageSize, width: float) -> None:
        super().__init__()
        c = scaled(12, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c, 5, stride=2, padding=2), nn.Sigmoid(),
            nn.Conv2d(c, c, 5, stride=2, padding=2), nn.Sigmoid(),
            nn.Conv2d(c, c, 5, stride=1, padding=2), nn.Sigmoid(),
        )
        h, w = (_conv_out(_conv_out(side, 2), 2) for side in image_hw(image_size))
        self.classifier = nn.Linear(c * h * w, num_classes)
        for p in self.parameters():
            nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register_model("lenet", DLG)
def lenet(num_classes: int, in_channels: int, image_size: ImageSize, width: float) -> nn.Module:
    return LeNet(num_classes, in_channels, image_size, width)
