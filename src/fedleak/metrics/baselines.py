"""What "nothing leaked" scores: PSNR and SSIM of guesses that use no information from the update.

A PSNR of 14 dB means little on its own; beside what a guess without the update reaches it becomes
readable. Two such guesses, on the auditor's side (they need the ground truth):

- **mean colour**: each original against a flat image of its own per-channel mean — what an attack
  that recovered only the average colour would score (a generous baseline: it knows that colour);
- **other image**: each original against another image of the same dataset that is not in the batch
  (the first such index, so the choice is deterministic) — what a plausible but unrelated image scores.

A run's **no-leak baseline** (:func:`best_guess`) is, per metric, the better of the two; a
reconstruction that scores at or below it on PSNR or SSIM is flagged wherever its scores are shown
(:func:`verdict`): on that metric it shows nothing a guess without the update would not.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any

from torch import Tensor

from fedleak.data import ImageDataset
from fedleak.metrics.image import psnr, ssim


def scores(guess: Tensor, originals: Tensor) -> dict[str, float]:
    """Mean PSNR and SSIM of ``guess`` (broadcast to the batch) against ``originals``."""
    guess = guess.expand_as(originals).contiguous()
    return {"psnr": float(psnr(guess, originals).mean()), "ssim": float(ssim(guess, originals).mean())}


def other_index(dataset: Sized, batch: Sequence[int]) -> int | None:
    """The first dataset index not in ``batch`` (``None`` when the batch holds every example)."""
    taken = {int(i) % len(dataset) for i in batch}
    return next((i for i in range(len(dataset)) if i not in taken), None)


def no_leak_baselines(originals: Tensor, dataset: ImageDataset, batch: Sequence[int]) -> dict[str, Any]:
    """``{"mean_colour": {psnr, ssim}, "other_image": {psnr, ssim, index} or None}`` for the client's
    ``originals`` (B×C×H×W in [0, 1]) drawn from ``dataset`` at indices ``batch``."""
    originals = originals.detach().cpu()
    out: dict[str, Any] = {"mean_colour": scores(originals.mean((2, 3), keepdim=True), originals)}
    index = other_index(dataset, batch)
    other = None
    if index is not None:
        image = dataset.image(index)
        if image.shape == originals.shape[1:]:
            other = {**scores(image[None], originals), "index": index}
    out["other_image"] = other
    return out


GUESSES = {"mean_colour": "mean colour of each original", "other_image": "another image of the set"}


def best_guess(baselines: Any) -> dict[str, float] | None:
    """The no-leak baseline of one run: per metric (PSNR, SSIM) the better of its guesses — what
    some guess without the update reaches. ``None`` where the run stored no baselines."""
    if not isinstance(baselines, dict):
        return None
    guesses = [g for g in (baselines.get(k) for k in GUESSES) if isinstance(g, dict)]
    if not guesses:
        return None
    return {m: max(float(g[m]) for g in guesses) for m in ("psnr", "ssim")}


def at_or_below(scores: dict[str, Any], baseline: dict[str, float] | None) -> list[str]:
    """The metrics (of ``psnr``, ``ssim``) on which ``scores`` do no better than ``baseline``."""
    if baseline is None:
        return []
    out = []
    for m in ("psnr", "ssim"):
        v, b = scores.get(m), baseline.get(m)
        if isinstance(v, (int, float)) and isinstance(b, (int, float)) and v == v and b == b and v <= b:
            out.append(m.upper())
    return out


def verdict(scores: dict[str, Any], baseline: dict[str, float] | None) -> str | None:
    """``"PSNR, SSIM at or below the no-leak baseline"`` where the reconstruction does no better than a
    guess without the update on those metrics; ``None`` where it beats it (or there is no baseline)."""
    worse = at_or_below(scores, baseline)
    return f"{', '.join(worse)} at or below the no-leak baseline" if worse else None
