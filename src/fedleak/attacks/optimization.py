"""Shared pieces of the optimisation attacks: initialisation, the lr schedule, restart selection,
successive halving of restarts, early stopping and a loss trace."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fedleak.device import PRECISIONS, matmul_precision  # noqa: F401  (the attacks' precision setting)
from fedleak.errors import FedleakError
from fedleak.registry import Registry

INITS: Registry = Registry("initialisation")
"""``init(shape, generator) → tensor``: the starting candidate, drawn on the generator's device."""

@INITS.register("randn")
def _randn(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=generator, device=generator.device)


@INITS.register("rand")
def _rand(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


@INITS.register("zeros")
def _zeros(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.zeros(shape, device=generator.device)


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


def halving_points(iterations: int, fractions: Sequence[float], restarts: int) -> dict[int, int]:
    """Successive halving's schedule: after iteration ``int(f · iterations)`` (counted from 1) for each
    fraction ``f``, keep ⌈R/2⌉ of the R restarts still running; a point where one restart is left, or
    that falls on or after the last iteration, does nothing. Returns iteration index (0-based, the
    step after which to drop) → restarts kept."""
    points: dict[int, int] = {}
    for f in sorted(fractions):
        at = int(f * iterations)
        if restarts > 1 and 1 <= at < iterations and at - 1 not in points:
            restarts = (restarts + 1) // 2
            points[at - 1] = restarts
    return points


def keep_best(losses: Tensor, keep: int) -> Tensor:
    """The ``keep`` restarts (P×keep indices, ascending) with the lowest matching losses of each
    payload (``losses``: P×R); a diverged restart (NaN, ±inf) ranks last, ties go to the lower index."""
    ranked = torch.where(torch.isfinite(losses), losses, torch.inf)
    order = torch.sort(ranked, dim=1, stable=True).indices[:, :keep]
    return torch.sort(order, dim=1).values


def finite_min(losses: Tensor) -> float:
    """The lowest finite loss of the trials (NaN when none is finite): what a trace and early stopping
    follow, so that one diverged restart does not hide the others' progress."""
    finite = losses[torch.isfinite(losses)]
    return float(finite.min()) if finite.numel() else float("nan")


class Trace:
    """Matching loss against iteration and wall time, thinned to about ``points`` rows."""

    def __init__(self, iterations: int, points: int = 500, every: int = 1) -> None:
        # A row every ``every`` iterations at least (the host reads the loss only then), thinned further
        # to about ``points`` rows.
        self.every = every * max(1, iterations // (points * every))
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

    def __call__(self, loss: float, steps: int = 1) -> bool:
        """Whether to stop, given the best loss after ``steps`` more iterations (a check every N
        iterations counts N stale iterations when the loss did not improve)."""
        if self.patience is None:
            return False
        if loss < self.best * (1 - self.min_delta) or self.best == float("inf"):
            self.best, self.stale = loss, 0
        else:
            self.stale += steps
        return self.stale >= self.patience


def optimize_group(step: Callable[[list[int]], Tensor], count: int, iterations: int, patience: int | None,
                   min_delta: float, progress: bool = False, desc: str = "attack", log_every: int = 1,
                   halve: dict[int, int] | None = None,
                   drop: Callable[[Tensor, Tensor], None] | None = None) -> tuple[list[Trace], list[int]]:
    """Call ``step`` up to ``iterations`` times for ``count`` independent payloads optimised together:
    ``step(active)`` makes one optimiser step for the payloads still running (``active``, indices in
    order) and returns their trials' matching losses (len(active)×R). Each payload traces its best and
    mean loss and stops early on its own plateau;
    a payload that stops leaves ``active`` (its candidates must then stay as they are). All
    payloads' losses come back to the host together, every ``log_every`` iterations, at the last and
    at each point of ``halve`` (iteration → restarts kept, :func:`halving_points`): there
    ``drop(keep, losses)`` is called with each payload's best restarts (P×kept, :func:`keep_best`) by
    its latest matching losses (P×R; a stopped payload's from its last read) and must shrink the
    candidates to them, for every payload. Returns each payload's trace and number of steps taken."""
    traces = [Trace(iterations, every=log_every) for _ in range(count)]
    stops = [EarlyStop(patience, min_delta) for _ in range(count)]
    done, active = [iterations] * count, list(range(count))
    halve = halve or {}
    latest: list[Tensor] = [torch.empty(0, device="cpu")] * count  # each payload's last read trial losses
    bar = tqdm(total=iterations, disable=not progress, desc=desc, unit="it", leave=False)
    shown = 0
    for it in range(iterations):
        match = step(active)
        last = it == iterations - 1
        if it % log_every and not last and it not in halve:
            continue  # no host synchronisation on this step
        rows = match.detach().cpu()  # one transfer for every payload
        steps, shown, still = it + 1 - shown, it + 1, []
        bests = []
        for row, p in zip(rows, active):
            latest[p] = row
            best = finite_min(row)
            bests.append(best)
            traces[p].record(it, last=last, loss=best, mean_loss=float(row.mean()))
            if stops[p](best, steps):
                done[p] = it + 1
            else:
                still.append(p)
        bar.update(steps)
        finite = [b for b in bests if b == b]
        bar.set_postfix(loss=f"{min(finite) if finite else float('nan'):.4g}", refresh=False)
        active = still
        if not active:
            break
        if it in halve and drop is not None:
            losses = torch.stack(latest)
            keep = keep_best(losses, halve[it])
            drop(keep, losses)
            latest = list(torch.gather(losses, 1, keep))
    bar.close()
    return traces, done
