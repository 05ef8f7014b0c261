"""LeNet-5 (LeCun et al. 1998) with ReLU: two 5×5 convolutions with 2×2 max-pools, then 120-84-classes;
and the ROG authors' LeNet (``lenet-rog``), the same shape with wider layers and a 512-unit layer."""

from __future__ import annotations

from torch import nn

from fedleak.models.cards import ModelCard, mnist
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


ROG_LENET = ModelCard((3, 128, 128), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "ImageNet at 128 px, unnormalised",
                      "Yue et al. 2023 (ROG's release: Resize and ToTensor only)")


@register_model("lenet-rog", ROG_LENET)
def lenet_rog(num_classes: int, in_channels: int, image_size: ImageSize, width: float) -> nn.Module:
    """The LeNet of the ROG authors' release: two padded 5×5 convolutions (32, 64) with ReLU and 2×2
    max-pools, then a bias-free 512-unit layer and a bias-free head. Its first linear layer sees the
    feature maps at a quarter of the input's side (64×32×32 at 128 px: 33.6 M weights), which is why
    gradients of this model leak so much."""
    c1, c2 = scaled(32, width), scaled(64, width)
    h, w = (side // 4 for side in image_hw(image_size))
    if min(h, w) < 1:
        raise ValueError(f"images of {size_text(image_size)} px are too small for lenet-rog (at least 4×4)")
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(c2 * h * w, scaled(512, width), bias=False), nn.ReLU(),
        nn.Linear(scaled(512, width), num_classes, bias=False),
    )
