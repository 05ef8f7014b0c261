"""PSNR of [0, 1] images: the one image measure the layers below the metrics need (ROG's prior scores
its validation images with it), so it lives here, importing nothing of fedleak;
:mod:`fedleak.metrics.image` hands it on beside SSIM."""

from __future__ import annotations

import torch
from torch import Tensor

PSNR_CAP_MSE = 1e-10  # identical images score 100 dB instead of infinity


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """PSNR in dB of each image pair of two B×C×H×W batches in [0, 1] (peak 1)."""
    mse = (x.clamp(0, 1) - y.clamp(0, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(PSNR_CAP_MSE))
