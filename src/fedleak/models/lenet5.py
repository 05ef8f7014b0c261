"""LeNet-5 (LeCun et al. 1998) with ReLU: two 5×5 convolutions with 2×2 max-pools, then 120-84-classes."""

from __future__ import annotations

from torch import nn

from fedleak.models.cards import mnist
from fedleak.models.registry import ImageSize, image_hw, register_model, scaled, size_text


@register_model("lenet5", mnist("LeCun et al. 1998, unpadded 28 px input"))
def lenet5(num_classes: int, in_channels: int, image_size: ImageSize, width: float) -> nn.Module:
    c1, c2 = scaled(6, width), scaled(16, width)
    h, w = (((side - 4) // 2 - 4) // 2 for side in image_hw(image_size))
    if min(h, w) < 1:
        raise ValueError(f"images of {size_text(image_size)} px are too small for lenet5 (at least 16×16)")
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(c2 * h * w, scaled(120, width)), nn.ReLU(),
        nn.Linear(scaled(120, width), scaled(84, width)), nn.ReLU(),
        nn.Linear(scaled(84, width), num_classes),
    )
