"""Per-image quality metrics on [0, 1] images: PSNR and SSIM.

SSIM follows Wang et al. (2004) with a Gaussian window of σ = 1.5 truncated at 3.5σ (11 × 11), the
population covariance and K1 = 0.01, K2 = 0.03 — scikit-image's ``structural_similarity`` with
``gaussian_weights=True``: the mean is taken over the pixels the full window covers, and channels are
averaged. Images smaller than the window use the largest odd window that fits.

PSNR is defined in :mod:`fedleak.pixels` (below the attacks, whose ROG prior scores itself with it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedleak.pixels import PSNR_CAP_MSE, psnr

__all__ = ["PSNR_CAP_MSE", "gaussian_window", "psnr", "ssim"]


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5, max_size: int | None = None,
                    device: torch.device | str = "cpu") -> Tensor:
    """Normalised 1-D Gaussian of radius ``int(truncate·σ + 0.5)`` (scipy's rule), on ``device``."""
    radius = int(truncate * sigma + 0.5)
    if max_size is not None:
        radius = min(radius, (max_size - 1) // 2)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def ssim(x: Tensor, y: Tensor, sigma: float = 1.5) -> Tensor:
    """SSIM of each image pair of two B×C×H×W batches in [0, 1] (data range 1)."""
    x = x.clamp(0, 1).double()
    y = y.clamp(0, 1).double()
    b, c, h, w = x.shape
    g = gaussian_window(sigma, max_size=min(h, w), device=x.device)
    k = g.numel()
    kernel_h = g.view(1, 1, 1, k).expand(c, 1, 1, k)
    kernel_v = g.view(1, 1, k, 1).expand(c, 1, k, 1)

    def blur(t: Tensor) -> Tensor:  # valid separable filtering, per channel
        return F.conv2d(F.conv2d(t, kernel_h, groups=c), kernel_v, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()
