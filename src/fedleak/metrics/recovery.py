"""Exact recovery: how many images of a batch came back bit for bit, and the spread of PSNR over it.

PSNR is capped at 100 dB (MSE ≤ 1e-10, see :mod:`fedleak.metrics.image`): an image at the cap differs
from its original by less than float32 rounding of the pixel values — recovered exactly. That is what
Robbing the Fed's imprint attack achieves for every image alone in its bin, and what no optimisation
attack reaches.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

EXACT_DB = 100.0  # the PSNR cap: an exact recovery
_SLACK = 1e-3  # float32 rounding of 10·log10(1/1e-10)


def is_exact(psnr: float) -> bool:
    return psnr >= EXACT_DB - _SLACK


def recovery_summary(psnrs: Sequence[float]) -> dict[str, Any]:
    """The fraction and count of exactly recovered images, and PSNR's minimum, quartiles and maximum
    over the batch (after Hungarian matching)."""
    values = sorted(float(p) for p in psnrs)
    if not values:
        return {"exact_fraction": float("nan"), "exact_images": 0, "images": 0, "psnr_distribution": {}}
    exact = sum(map(is_exact, values))
    quartiles = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {
        "exact_fraction": exact / len(values),
        "exact_images": exact,
        "images": len(values),
        "psnr_distribution": {"min": values[0], "q1": quartiles[0], "median": quartiles[1], "q3": quartiles[2],
                              "max": values[-1]},
    }
