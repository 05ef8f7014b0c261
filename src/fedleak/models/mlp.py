"""A fully connected network on flattened images: the model on which analytic recovery is exact."""

from __future__ import annotations

from torch import nn

from fedleak.models.cards import mnist
from fedleak.models.registry import ImageSize, image_hw, register_model, scaled


@register_model("mlp", mnist("analytic recovery through a fully connected first layer (Phong et al. 2018)"))
def mlp(
    num_classes: int, in_channels: int, image_size: ImageSize, width: float, hidden: int = 256, depth: int = 2
) -> nn.Module:
    """``depth`` hidden layers of ``hidden`` × ``width`` ReLU units, then a linear classifier."""
    if depth < 1:
        raise ValueError(f"mlp depth must be at least 1, got {depth}")
    units = scaled(hidden, width)
    layers: list[nn.Module] = [nn.Flatten()]
    h, w = image_hw(image_size)
    fan_in = in_channels * h * w
    for _ in range(depth):
        layers += [nn.Linear(fan_in, units), nn.ReLU()]
        fan_in = units
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)
