"""Inception-ResNet-v1 (Szegedy et al. 2017), FaceNet's architecture, with a classifier head.

Stem, 5 × Block35, Reduction-A, 10 × Block17, Reduction-B, 5 × Block8 (+1 without ReLU), a 512-d
embedding (linear + BN) and a linear classifier. At ≤ 64 px (the longer side) the stem keeps the resolution (no
strides, no max-pool) so that the two reductions still leave a 7×7 map at 32 px.
"""

from __future__ import annotations

import torch
from torch import nn

from fedleak.models.cards import ModelCard
from fedleak.models.registry import ImageSize, image_hw, register_model, scaled

# FaceNet (as facenet-pytorch ships it) takes 160 px faces standardised as (x·255 − 127.5) / 128.
FACENET = ModelCard((3, 160, 160), (0.5, 0.5, 0.5), (128 / 255,) * 3, "VGGFace2 faces",
                    "Szegedy et al. 2017; Schroff et al. 2015 (FaceNet)")


def conv(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU())


class Residual(nn.Module):
    """relu(x + scale · up(concat(branches(x)))), the common shape of Block35/17/8."""

    def __init__(self, channels: int, branches: list[nn.Module], mixed: int, scale: float, relu: bool = True):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.up = nn.Conv2d(mixed, channels, 1)
        self.scale = scale
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x):
        return self.act(x + self.scale * self.up(torch.cat([b(x) for b in self.branches], 1)))


def block35(c: int, w: float) -> Residual:
    b = scaled(32, w)
    return Residual(c, [conv(c, b, 1), nn.Sequential(conv(c, b, 1), conv(b, b, 3, padding=1)),
                        nn.Sequential(conv(c, b, 1), conv(b, b, 3, padding=1), conv(b, b, 3, padding=1))],
                    3 * b, 0.17)


def block17(c: int, w: float) -> Residual:
    b = scaled(128, w)
    return Residual(c, [conv(c, b, 1), nn.Sequential(conv(c, b, 1), conv(b, b, (1, 7), padding=(0, 3)),
                                                     conv(b, b, (7, 1), padding=(3, 0)))], 2 * b, 0.10)


def block8(c: int, w: float, relu: bool = True) -> Residual:
    b = scaled(192, w)
    return Residual(c, [conv(c, b, 1), nn.Sequential(conv(c, b, 1), conv(b, b, (1, 3), padding=(0, 1)),
                                                     conv(b, b, (3, 1), padding=(1, 0)))], 2 * b, 0.20, relu)


class Concat(nn.Module):
    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


class InceptionResNetV1(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: ImageSize, width: float,
                 embedding: int = 512, dropout: float = 0.6) -> None:
        super().__init__()
        s = lambda c: scaled(c, width)  # noqa: E731
        small = max(image_hw(image_size)) <= 64
        stride, pad = (1, 1) if small else (2, 0)
        stem: list[nn.Module] = [conv(in_channels, s(32), 3, stride, pad), conv(s(32), s(32), 3, 1, pad),
                                 conv(s(32), s(64), 3, padding=1)]
        if not small:
            stem.append(nn.MaxPool2d(3, 2))
        stem += [conv(s(64), s(80), 1), conv(s(80), s(192), 3, 1, pad), conv(s(192), s(256), 3, stride, pad)]
        c35 = s(256)
        reduction_a = Concat(conv(c35, s(384), 3, 2),
                             nn.Sequential(conv(c35, s(192), 1), conv(s(192), s(192), 3, padding=1),
                                           conv(s(192), s(256), 3, 2)),
                             nn.MaxPool2d(3, 2))
        c17 = s(384) + s(256) + c35
        reduction_b = Concat(nn.Sequential(conv(c17, s(256), 1), conv(s(256), s(384), 3, 2)),
                             nn.Sequential(conv(c17, s(256), 1), conv(s(256), s(256), 3, 2)),
                             nn.Sequential(conv(c17, s(256), 1), conv(s(256), s(256), 3, padding=1),
                                           conv(s(256), s(256), 3, 2)),
                             nn.MaxPool2d(3, 2))
        c8 = s(384) + 2 * s(256) + c17
        self.features = nn.Sequential(
            *stem, *[block35(c35, width) for _ in range(5)], reduction_a,
            *[block17(c17, width) for _ in range(10)], reduction_b,
            *[block8(c8, width) for _ in range(5)], block8(c8, width, relu=False),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
        )
        self.embedding = nn.Sequential(nn.Linear(c8, s(embedding), bias=False), nn.BatchNorm1d(s(embedding), eps=1e-3))
        self.classifier = nn.Linear(s(embedding), num_classes)

    def forward(self, x):
        return self.classifier(self.embedding(self.features(x)))


@register_model("inception_resnet_v1", FACENET)
def inception_resnet_v1(num_classes: int, in_channels: int, image_size: ImageSize, width: float) -> nn.Module:
    return InceptionResNetV1(num_classes, in_channels, image_size, width)
