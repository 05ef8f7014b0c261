"""One batched optimisation for the gradient-matching attacks (IG, ROG): many independent payloads,
each with its restarts, optimised together.

The candidates of P payloads × R restarts form one tensor; each step evaluates every trial's
objective as ``vmap`` over payloads of ``vmap`` over restarts (at most ``chunk`` trials at a time) and
makes one optimiser step for all of them. The optimisers fedleak uses (Adam, with a schedule that
depends on the iteration only) act element by element, so this is the same optimisation as P × R
separate ones; each payload keeps its own matching loss, restart selection, trace and early
stopping. A payload that stops early is frozen (its candidates restored after each later step) and
leaves the computation.

Successive halving (``halving``: fractions of the iterations) drops, at each of its points, the worse
half of every payload's restarts by their matching loss: the variable and the optimiser's state are
cut down to the survivors, so every later step computes only those. The survivors' steps are the
ones they would have taken without it, so where a full run's winner survives, it is chosen again.
An optimisation may run in stages (:class:`Stage`, e.g. IG's coarse-to-fine), each a new variable
built from the last one's value; the halving points count over the stages' iterations together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedleak.attacks.base import Attack, AttackerKnowledge, Reconstruction
from fedleak.attacks.labels import recover_labels
from fedleak.attacks.matching import GradientMatching, MatchingConfig, matched_layers, same_state, shared_key, take
from fedleak.attacks.optimization import (
    INITS,
    Trace,
    best_restart,
    halving_points,
    matmul_precision,
    optimize_group,
)
from fedleak.device import generator, payload_device
from fedleak.fl.payload import Payload


@dataclass
class Variable:
    """What an attack optimises (``value``: P×R×…, a leaf) and how it becomes the model's input.

    ``to_input`` maps (a payload subset of) the value to normalised candidates P'×R×B×C×H×W,
    differentiably (``None``: the value is the input itself); ``grad_transform`` turns the input
    gradient into the step direction (IG's sign); ``project`` runs in place after each step (a box)."""

    value: Tensor
    to_input: Callable[[Tensor], Tensor] | None = None
    grad_transform: Callable[[Tensor], Tensor] = lambda g: g
    project: Callable[[Tensor], object] = lambda v: None

    def inputs(self, value: Tensor) -> Tensor:
        return value if self.to_input is None else self.to_input(value)


@dataclass
class Stage:
    """One stage of an optimisation: ``iterations`` steps of what ``build(previous)`` returns — the
    variable, its optimiser and lr schedule — given the previous stage's value (``None`` first)."""

    iterations: int
    build: Callable[[Tensor | None], tuple[Variable, torch.optim.Optimizer, Any]]


@dataclass
class GroupResult:
    """One payload's outcome of a group optimisation."""

    final: Tensor  # every surviving restart's final matching loss (R')
    trace: Trace
    iterations: int
    origin: Tensor | None = None  # the survivors' indices among the R restarts drawn (None: all survived)
    dropped: Tensor | None = None  # R: each dropped restart's matching loss when dropped (NaN for survivors)

    def restart_losses(self) -> Tensor:
        """Every restart's matching loss (R): a survivor's final one, a dropped restart's when dropped."""
        if self.origin is None or self.dropped is None:
            return self.final
        out = self.dropped.to(self.final.device, copy=True)  # the bookkeeping is on the host
        out[self.origin.to(self.final.device)] = self.final
        return out

    def restart(self, survivor: int) -> int:
        """The index among the restarts drawn of survivor ``survivor``."""
        return survivor if self.origin is None else int(self.origin[survivor])


def groups(payloads: Sequence[Payload], knowledges: Sequence[AttackerKnowledge], layers: str,
           layer_count: int | None) -> list[list[int]]:
    """The payloads (indices, in order) that can be optimised together: equal :func:`shared_key`
    and the same global model state."""
    found: list[tuple[tuple, list[int]]] = []
    for i, (p, k) in enumerate(zip(payloads, knowledges)):
        key = shared_key(p, k, matched_layers(p, layers, layer_count))
        for other_key, members in found:
            if other_key == key and same_state(payloads[members[0]], p):
                members.append(i)
                break
        else:
            found.append((key, [i]))
    return [members for _, members in found]


def shrink(variable: Variable, optimizer: torch.optim.Optimizer, keep: Tensor) -> None:
    """Cut ``variable`` (P×R×…) down to the restarts ``keep`` (P×R' indices) in place of its value,
    and the optimiser's per-element state with it (Adam's moments; its step count is shared)."""
    old = variable.value
    rows = torch.arange(old.shape[0], device=old.device)[:, None]
    index = keep.to(old.device)
    new = old.detach()[rows, index].clone().requires_grad_(True)
    for group in optimizer.param_groups:
        group["params"] = [new if q is old else q for q in group["params"]]
    if old in optimizer.state:
        state = optimizer.state.pop(old)
        optimizer.state[new] = {k: v[rows, index].clone() if torch.is_tensor(v) and v.shape == old.shape else v
                                for k, v in state.items()}
    variable.value = new


def optimize_variable(objective: GradientMatching, variable: Variable, labels: Tensor,
                      optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                      iterations: int, patience: int | None, min_delta: float, chunk: int | None,
                      progress: bool, desc: str, log_every: int,
                      halve: dict[int, int] | None = None) -> list[GroupResult]:
    """Optimise ``variable`` for the payloads of ``objective`` (``labels``: P×B) and score every
    surviving restart by its final matching loss; returns each payload's result. ``halve``
    (iteration → restarts kept, :func:`~fedleak.attacks.optimization.halving_points`) drops the
    worse restarts by matching loss (:func:`shrink`), leaving ``variable.value`` P×R'×…."""
    count, drawn = objective.count, variable.value.shape[1]
    subset: dict[str, Any] = {"active": list(range(count))}  # the cache select() fills, of mixed types
    origin = torch.arange(drawn, device="cpu").expand(count, drawn).clone()  # bookkeeping, on the host
    dropped = torch.full((count, drawn), float("nan"), device="cpu")

    def select(active: list[int]) -> None:
        """Cache the active payloads' part of the objective and the stopped ones' frozen values."""
        value = variable.value
        index = torch.tensor(active, device=value.device)
        stopped = torch.tensor(sorted(set(range(count)) - set(active)), dtype=torch.long, device=value.device)
        subset.update(active=active, index=index, labels=labels[index], data=take(objective.data, index),
                      stopped=stopped, frozen=value.detach()[stopped].clone())

    def step(active: list[int]) -> Tensor:
        value, full = variable.value, len(active) == count
        if not full and subset["active"] != active:
            select(active)
        current = value.detach() if full else value.detach()[subset["index"]]
        leaf = current.requires_grad_(variable.to_input is not None)
        x = variable.inputs(leaf)
        gx, match = objective.gradients(x.detach(), labels if full else subset["labels"],
                                        None if full else subset["data"], chunk)
        g = gx if variable.to_input is None else torch.autograd.grad(x, leaf, gx)[0]
        g = variable.grad_transform(g)
        if full:
            value.grad = g
        else:
            value.grad = torch.zeros_like(value)
            value.grad[subset["index"]] = g
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            variable.project(value)
            if not full:
                value[subset["stopped"]] = subset["frozen"]
        return match

    def drop(keep: Tensor, losses: Tensor) -> None:
        nonlocal origin
        losses, host = losses.detach().cpu(), keep.cpu()  # the bookkeeping lives on the host
        for p in range(count):
            gone = torch.ones(losses.shape[1], dtype=torch.bool, device="cpu")
            gone[host[p]] = False
            dropped[p, origin[p, gone]] = losses[p, gone]
        origin = torch.gather(origin, 1, host)
        shrink(variable, optimizer, keep)
        subset["active"] = None  # the cached frozen values have the old shape

    traces, done = optimize_group(step, count, iterations, patience, min_delta, progress, desc, log_every,
                                  halve, drop)
    with torch.no_grad():
        x = variable.inputs(variable.value.detach())
    final = objective.losses(x, labels, chunk=chunk)
    cut = variable.value.shape[1] < drawn
    return [GroupResult(final[p], traces[p], done[p], origin[p] if cut else None, dropped[p] if cut else None)
            for p in range(count)]


def staged(objective: GradientMatching, labels: Tensor, stages: Sequence[Stage], halving: Sequence[float],
           restarts: int, patience: int | None, min_delta: float, chunk: int | None, progress: bool,
           desc: str, log_every: int) -> tuple[list[GroupResult], Variable]:
    """Run the ``stages`` one after another (:func:`optimize_variable` each), each built from the last
    one's value, with the ``halving`` points (fractions of all the stages' iterations) falling in each;
    returns each payload's result over all stages (a trace that goes on across them, the survivors
    among the ``restarts`` drawn) and the last stage's variable."""
    total = sum(s.iterations for s in stages)
    points = halving_points(total, halving, restarts)
    results: list[GroupResult] | None = None
    value: Tensor | None = None
    offset = 0
    for stage in stages:
        variable, optimizer, scheduler = stage.build(value)
        halve = {it - offset: k for it, k in points.items() if offset <= it < offset + stage.iterations}
        now = optimize_variable(objective, variable, labels, optimizer, scheduler, stage.iterations, patience,
                                min_delta, chunk, progress, desc, log_every, halve)
        results = now if results is None else [chain(a, b, offset) for a, b in zip(results, now)]
        value, offset = variable.value.detach(), offset + stage.iterations
    assert results is not None
    return results, variable


def chain(first: GroupResult, then: GroupResult, offset: int) -> GroupResult:
    """``first`` followed by ``then`` (a later stage begun after ``offset`` iterations, on the survivors
    of ``first``): one trace, the survivors' indices and dropped losses composed."""
    trace = first.trace
    shift = then.trace.start - trace.start
    trace.rows += [{**row, "iteration": row["iteration"] + offset, "seconds": round(row["seconds"] + shift, 4)}
                   for row in then.trace.rows]
    drawn = first.final.shape[0] if first.dropped is None else first.dropped.shape[0]
    origin = torch.arange(drawn, device="cpu") if first.origin is None else first.origin
    dropped = torch.full((drawn,), float("nan"), device="cpu") if first.dropped is None else first.dropped.clone()
    if then.origin is not None and then.dropped is not None:
        dropped[origin] = then.dropped  # the first stage's survivors dropped later (NaN: still running)
        origin = origin[then.origin]
    cut = origin.shape[0] < drawn
    return GroupResult(then.final, trace, offset + then.iterations, origin if cut else None,
                       dropped if cut else None)


class BatchedMatching(Attack):
    """Base of the gradient-matching attacks (IG, ROG): :meth:`run_many` optimises each group of
    payloads that can share one model (:func:`groups`) in one batched optimisation, which a subclass
    sets up in :meth:`attack_group` from the helpers below; :meth:`run` is one payload's group."""

    config: MatchingConfig

    def run(self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False) -> Reconstruction:
        return self.run_many([payload], [knowledge], [seed], progress)[0]

    def run_many(self, payloads: Sequence[Payload], knowledges: Sequence[AttackerKnowledge],
                 seeds: Sequence[int], progress: bool = False) -> list[Reconstruction]:
        cfg = self.config
        results: dict[int, Reconstruction] = {}
        with matmul_precision(cfg.precision):
            for members in groups(payloads, knowledges, cfg.layers, cfg.layer_count):
                done = self.attack_group([payloads[i] for i in members], [knowledges[i] for i in members],
                                         [seeds[i] for i in members], progress)
                results.update(zip(members, done))
        return [results[i] for i in range(len(payloads))]

    def attack_group(self, payloads: list[Payload], knowledges: list[AttackerKnowledge], seeds: list[int],
                     progress: bool) -> list[Reconstruction]:
        """Reconstruct the batch behind each payload of one group (same model, same public settings)."""
        raise NotImplementedError

    def labels(self, payloads: Sequence[Payload], knowledges: Sequence[AttackerKnowledge]) -> Tensor:
        """Each payload's labels (P×B): known, or recovered from its update."""
        return torch.stack([recover_labels(p, k, self.config.labels) for p, k in zip(payloads, knowledges)])

    def initial(self, payloads: Sequence[Payload], seeds: Sequence[int], shape: tuple[int, ...]) -> Tensor:
        """The starting variable (P×``shape``, a leaf): each payload's restarts drawn from its own seed,
        on the payloads' device."""
        device = payload_device(payloads[0])
        init = INITS.get(self.config.init)
        return torch.stack([init(shape, generator(seed, device)) for seed in seeds]).requires_grad_(True)

    def optimize(self, objective: GradientMatching, variable: Variable, labels: Tensor,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                 progress: bool, images: Callable[[int, int], Tensor]) -> list[Reconstruction]:
        """Run :func:`optimize_variable` with the config's budget and return each payload's winning
        restart (the lowest final matching loss) as a reconstruction; ``images(p, r)`` are payload
        ``p``'s restart ``r`` as [0, 1] images."""
        stage = Stage(self.config.iterations, lambda _: (variable, optimizer, scheduler))
        return self.optimize_stages(objective, labels, [stage], progress, lambda p, r, _: images(p, r))

    def optimize_stages(self, objective: GradientMatching, labels: Tensor, stages: Sequence[Stage], progress: bool,
                        images: Callable[[int, int, Variable], Tensor],
                        halving: Sequence[float] = ()) -> list[Reconstruction]:
        """Run the ``stages`` (:func:`staged`, with successive ``halving`` at those fractions of their
        iterations) and return each payload's winning restart — the survivor with the lowest final
        matching loss — as a reconstruction; ``images(p, r, variable)`` are payload ``p``'s restart
        ``r`` of the last stage's ``variable`` (the survivors only) as [0, 1] images. Every restart's
        loss is reported: a survivor's final one, a dropped restart's when it was dropped."""
        cfg = self.config
        outcomes, variable = staged(objective, labels, stages, halving, cfg.restarts, cfg.patience, cfg.min_delta,
                                    cfg.chunk, progress, self.name, cfg.log_every)
        reconstructions = []
        for p, outcome in enumerate(outcomes):
            winner = best_restart(outcome.final)
            reconstructions.append(Reconstruction.from_restarts(
                images(p, winner, variable), labels[p], outcome.restart_losses(), outcome.restart(winner),
                outcome.trace, outcome.iterations))
        return reconstructions
