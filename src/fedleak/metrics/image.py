"""Per-image quality metrics on [0, 1] images: PSNR and SSIM.

SSIM follows Wang et al. (2004) with a Gaussian window of σ = 1.5 truncated at 3.5σ (11 × 11), the
population covariance and K1 = 0.01, K2 = 0.03 — scikit-image's ``structural_similarity`` with
``gaussian_weights=True``: the mean is taken over the pixels the full window covers, and channels are
averaged. Images smaller than the window use the largest odd window that fits.

:func:`ssim_rog` is the SSIM of the ROG paper's code (Yue et al., USENIX Security 2023; their
``src/metric.py``), so that numbers can be set beside theirs: the images as 8-bit integers
(``round(255·v)``), colour converted to YCrCb exactly as OpenCV's 8-bit ``COLOR_RGB2YCrCb`` (its
14-bit fixed-point coefficients), and per channel one *global* SSIM — the statistics of the whole
image, no window — with K1 = 0.01, K2 = 0.03, L = 255 and the separate structure term
(C3 = C2/2); the channels weighted 0.8 Y + 0.1 Cr + 0.1 Cb (grey images: the one channel). It reads
higher than windowed SSIM on the same pair: global statistics forgive local structure.

PSNR is defined in :mod:`fedleak.pixels` (below the attacks, whose ROG prior scores itself with it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedleak.pixels import PSNR_CAP_MSE, psnr

__all__ = ["PSNR_CAP_MSE", "gaussian_window", "psnr", "ssim", "ssim_rog", "ycrcb_8bit"]


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


def _descale(v: Tensor, bits: int = 14) -> Tensor:
    return torch.div(v + (1 << (bits - 1)), 1 << bits, rounding_mode="floor")


def ycrcb_8bit(q: Tensor) -> Tensor:
    """OpenCV's 8-bit ``COLOR_RGB2YCrCb`` of B×3×H×W integer-valued RGB (0…255): Y, Cr, Cb channels,
    with its fixed-point coefficients (0.299, 0.587, 0.114; 0.713, 0.564 at 14 bits)."""
    r, g, b = (q[:, i].to(torch.int64) for i in range(3))
    y = _descale(r * 4899 + g * 9617 + b * 1868)
    cr = _descale((r - y) * 11682 + (128 << 14)).clamp(0, 255)
    cb = _descale((b - y) * 9241 + (128 << 14)).clamp(0, 255)
    return torch.stack([y, cr, cb], dim=1)


def _global_ssim(a: Tensor, b: Tensor) -> Tensor:
    """Global SSIM of B×H×W 8-bit channels (float64): one window, the whole image."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    mu_a, mu_b = a.mean(1), b.mean(1)
    sd_a = ((a - mu_a[:, None]) ** 2).mean(1).sqrt()
    sd_b = ((b - mu_b[:, None]) ** 2).mean(1).sqrt()
    cov = ((a - mu_a[:, None]) * (b - mu_b[:, None])).mean(1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    c3 = c2 / 2
    return ((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * (2 * sd_a * sd_b + c2) / (sd_a**2 + sd_b**2 + c2)
            * (cov + c3) / (sd_a * sd_b + c3))


def ssim_rog(x: Tensor, y: Tensor) -> Tensor:
    """ROG's SSIM (see the module docstring) of each pair of two B×C×H×W batches in [0, 1] (C = 1 or 3)."""
    qx = (x.detach().clamp(0, 1).double() * 255).round()
    qy = (y.detach().clamp(0, 1).double() * 255).round()
    if qx.shape[1] == 1:
        return _global_ssim(qx[:, 0], qy[:, 0]).float()
    if qx.shape[1] != 3:
        raise ValueError(f"ROG's SSIM takes grey or RGB images, got {qx.shape[1]} channels")
    cx, cy = ycrcb_8bit(qx), ycrcb_8bit(qy)
    channels = [_global_ssim(cx[:, i], cy[:, i]) for i in range(3)]
    return (0.8 * channels[0] + 0.1 * channels[1] + 0.1 * channels[2]).float()
