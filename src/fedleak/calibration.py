"""The risk score's calibration: from what the attacker observes to how often the batch was recognisable.

An audit of a real update has no ground truth, only observables; the one it scores risk by is the
**update fit** (:func:`fedleak.audit.update_fit`: the cosine between the update the reconstruction
would produce and the observed one). How often a fit means a recognisable reconstruction was
measured in simulation, against the truth, on many updates at several batch sizes
(``benchmarks/calibrate_risk.py``): *recognisable* means at least one image of the batch beats its
own mean-colour guess by :data:`fedleak.verdicts.PSNR_MARGIN` dB of PSNR after matching. Per batch
size, an isotonic (monotone non-decreasing) regression of recognisable (0/1) on the fit
(``scipy.optimize.isotonic_regression``) gives the probability; the table stores its steps as data
(``risk_calibration.json``, beside this module), with the conditions it was measured under.

:func:`calibrated` reads it: the step function of the largest calibrated batch size at or below
the update's (a larger batch leaks less, so a smaller batch's calibration overstates the risk rather
than understating it), interpolated linearly between steps. Outside the fits measured the map is
held at its end values, which (the map being non-decreasing) bound the probability without
estimating it: below the range from above (it can rule a leak out, never claim one), above it from
below (it can claim a leak, never rule one out). It applies only where the audit's simulation is
verified (see :mod:`fedleak.verdicts`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression

from fedleak.errors import FedleakError

TABLE = "risk_calibration.json"


def fit_calibration(fits: Sequence[float], recognisable: Sequence[bool]) -> dict[str, list[float]]:
    """The monotone map from update fit to P(recognisable) on one batch size's measurements: the
    isotonic regression's distinct steps (``fit``, ``probability``: for each run of equal fitted
    values, its first and last fit), non-decreasing in the fit."""
    x = np.asarray(fits, dtype=float)
    y = np.asarray(recognisable, dtype=float)
    if len(x) == 0 or len(x) != len(y) or not np.isfinite(x).all():
        raise FedleakError("a calibration needs as many finite fits as outcomes, at least one")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    fitted = isotonic_regression(y, increasing=True).x
    points_x, points_y = [], []
    for value in np.unique(fitted):
        where = np.flatnonzero(fitted == value)
        for i in sorted({where[0], where[-1]}):
            points_x.append(float(x[i]))
            points_y.append(float(value))
    return {"fit": points_x, "probability": points_y}


@functools.lru_cache(maxsize=1)
def calibration_table() -> dict[str, Any]:
    """The stored calibration: ``target`` (what recognisable means), ``observable``, ``conditions``
    (model, data, attack and budget it was measured with) and ``tables``, one per batch size
    (``batch_size``, ``updates``, ``recognisable``, ``fit``, ``probability``), smallest first."""
    text = resources.files("fedleak").joinpath(TABLE).read_text()
    table = json.loads(text)
    table["tables"] = sorted(table["tables"], key=lambda t: t["batch_size"])
    return table


def calibrated(fit: float, batch_size: int) -> tuple[float, str] | None:
    """P(recognisable) for an update of ``batch_size`` observed images whose reconstruction fits it
    with ``fit``, and what the value is: ``"estimate"`` (the fit within the measured range),
    ``"upper bound"`` (below it: the map held at its first value, which a non-decreasing map cannot
    exceed there) or ``"lower bound"`` (above it); ``None`` for a non-finite fit."""
    if not np.isfinite(fit):
        return None
    tables = calibration_table()["tables"]
    table = next((t for t in reversed(tables) if t["batch_size"] <= batch_size), tables[0])
    kind = "upper bound" if fit < table["fit"][0] else "lower bound" if fit > table["fit"][-1] else "estimate"
    return float(np.interp(fit, table["fit"], table["probability"])), kind


def calibrated_probability(fit: float, batch_size: int) -> float | None:
    """:func:`calibrated`'s probability alone."""
    found = calibrated(fit, batch_size)
    return None if found is None else found[0]


def calibration_rows() -> list[dict[str, Any]]:
    """The table flat, one row per step (batch size, fit, probability), as a report shows it."""
    return [{"batch_size": t["batch_size"], "fit": x, "probability": p}
            for t in calibration_table()["tables"] for x, p in zip(t["fit"], t["probability"])]


def draw_calibration(ax: Any) -> None:
    """The calibration curves on a matplotlib axis: P(recognisable) against update fit, one step
    line per batch size."""
    table = calibration_table()
    for t in table["tables"]:
        ax.plot(t["fit"], t["probability"], drawstyle="default", marker=".",
                label=f"B = {t['batch_size']} ({t['recognisable']}/{t['updates']} recognisable)")
    ax.set_xlabel(f"{table['observable']} (observable)")
    ax.set_ylabel("P(recognisable)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small")
