"""Shared pieces of the optimisation attacks: initialisation, box bounds, the lr schedule, the
simulated gradient, and a loss trace."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fedleak.errors import FedleakError
from fedleak.registry import Registry

INITS: Registry = Registry("initialisation")

@INITS.register("randn")
def _randn(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=generator)


@INITS.register("rand")
def _rand(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator)


@INITS.register("zeros")
def _zeros(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.zeros(shape)


def box_bounds(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """The valid pixel range [0, 1] expressed in the model's normalised input space."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


def to_unit_range(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised model input → images clamped to [0, 1]."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.detach() * s + m).clamp(0, 1)


def step_milestones(iterations: int) -> list[int]:
    """Geiping et al.'s schedule: lr × 0.1 at 3/8, 5/8 and 7/8 of the iterations."""
    return [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]


def best_restart(final: Tensor) -> int:
    """Index of the restart with the lowest finite final matching loss. A restart that diverged (NaN
    or ±inf) never wins; when every restart diverged there is nothing to return."""
    finite = torch.isfinite(final)
    if not finite.any():
        raise FedleakError(
            f"every restart of the attack diverged (final matching losses {final.tolist()}); "
            "lower attack.lr or change attack.init"
        )
    return int(torch.argmin(torch.where(finite, final, torch.inf)))


def finite_min(losses: Tensor) -> float:
    """The lowest finite loss of the trials (NaN when none is finite): what a trace and early stopping
    follow, so that one diverged restart does not hide the others' progress."""
    finite = losses[torch.isfinite(losses)]
    return float(finite.min()) if finite.numel() else float("nan")


class Trace:
    """Matching loss against iteration and wall time, thinned to about ``points`` rows."""

    def __init__(self, iterations: int, points: int = 500) -> None:
        self.every = max(1, iterations // points)
        self.start = time.perf_counter()
        self.rows: list[dict[str, float]] = []

    def record(self, iteration: int, last: bool = False, **values: float) -> None:
        if iteration % self.every == 0 or last:
            row = {"iteration": iteration, **values, "seconds": round(time.perf_counter() - self.start, 4)}
            self.rows.append(row)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


class EarlyStop:
    """Stop when the best matching loss has not improved by a relative ``min_delta`` for
    ``patience`` iterations (``patience=None``: never)."""

    def __init__(self, patience: int | None, min_delta: float) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best, self.stale = float("inf"), 0

    def __call__(self, loss: float) -> bool:
        if self.patience is None:
            return False
        if loss < self.best * (1 - self.min_delta) or self.best == float("inf"):
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
        return self.stale >= self.patience


def optimize(step: Callable[[], Tensor], iterations: int, patience: int | None, min_delta: float,
             progress: bool = False, desc: str = "attack") -> tuple[Trace, int]:
    """Call ``step`` (one optimiser step; it returns every trial's matching loss) up to
    ``iterations`` times, tracing the best and mean loss and stopping early on a plateau.
    Returns the trace and the number of steps taken."""
    trace, stop = Trace(iterations), EarlyStop(patience, min_delta)
    bar = tqdm(total=iterations, disable=not progress, desc=desc, unit="it", leave=False)
    done = iterations
    for it in range(iterations):
        match = step()
        best = finite_min(match)
        trace.record(it, loss=best, mean_loss=float(match.mean()))
        bar.update(1)
        bar.set_postfix(loss=f"{best:.4g}", refresh=False)
        if stop(best):
            done = it + 1
            break
    bar.close()
    return trace, done
