"""Models a user might bring, for the bring-your-own-model tests (imported as tests.byo_models)."""

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, hidden: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.head = nn.Linear(hidden * image_size * image_size, num_classes)

    def forward(self, x):
        return self.head(torch.sigmoid(self.conv(x)).flatten(1))


def tiny(num_classes, in_channels, image_size):
    return Tiny(num_classes, in_channels, image_size)


class _InPlace(Tiny):
    def forward(self, x):
        h = torch.sigmoid(self.conv(x))
        h.mul_(2.0)  # overwrites a tensor sigmoid's backward needs
        return self.head(h.flatten(1))


def inplace(num_classes, in_channels, image_size):
    return _InPlace(num_classes, in_channels, image_size)


class _Detached(Tiny):
    def forward(self, x):
        return self.head(torch.sigmoid(self.conv(x)).flatten(1).detach())


def detached(num_classes, in_channels, image_size):
    return _Detached(num_classes, in_channels, image_size)


def wrong_output(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes + 1))


def not_a_module():
    return "model"


def widened(num_classes, in_channels, image_size, width=7.0):
    """A factory with its own width default: it has round(width) hidden channels."""
    return Tiny(num_classes, in_channels, image_size, hidden=round(width))
