"""One batched optimisation for the gradient-matching attacks (IG, ROG): many independent payloads,
each with its restarts, optimised together.

The candidates of P payloads × R restarts form one tensor; each step evaluates every trial's
objective as ``vmap`` over payloads of ``vmap`` over restarts (at most ``chunk`` trials at a time) and
makes one optimiser step for all of them. The optimisers fedleak uses (Adam, with a schedule that
depends on the iteration only) act element by element, so this is the same optimisation as P × R
separate ones; each payload keeps its own matching loss, restart selection, trace and early
stopping. A payload that stops early is frozen (its candidates restored after each later step) and
leaves the computation.
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
from fedleak.attacks.optimization import INITS, Trace, best_restart, matmul_precision, optimize_group
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
class GroupResult:
    """One payload's outcome of a group optimisation."""

    final: Tensor  # every restart's final matching loss (R)
    trace: Trace
    iterations: int


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


def optimize_variable(objective: GradientMatching, variable: Variable, labels: Tensor,
                      optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                      iterations: int, patience: int | None, min_delta: float, chunk: int | None,
                      progress: bool, desc: str, log_every: int) -> list[GroupResult]:
    """Optimise ``variable`` for the payloads of ``objective`` (``labels``: P×B) and score every
    restart by its final matching loss; returns each payload's result."""
    value, count = variable.value, objective.count
    subset: dict[str, Any] = {"active": list(range(count))}  # the cache select() fills, of mixed types

    def select(active: list[int]) -> None:
        """Cache the active payloads' part of the objective and the stopped ones' frozen values."""
        index = torch.tensor(active, device=value.device)
        stopped = torch.tensor(sorted(set(range(count)) - set(active)), dtype=torch.long, device=value.device)
        subset.update(active=active, index=index, labels=labels[index], data=take(objective.data, index),
                      stopped=stopped, frozen=value.detach()[stopped].clone())

    def step(active: list[int]) -> Tensor:
        full = len(active) == count
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

    traces, done = optimize_group(step, count, iterations, patience, min_delta, progress, desc, log_every)
    with torch.no_grad():
        x = variable.inputs(value.detach())
    final = objective.losses(x, labels, chunk=chunk)
    return [GroupResult(final[p], traces[p], done[p]) for p in range(count)]


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
        cfg = self.config
        outcomes = optimize_variable(objective, variable, labels, optimizer, scheduler, cfg.iterations,
                                     cfg.patience, cfg.min_delta, cfg.chunk, progress, self.name, cfg.log_every)
        reconstructions = []
        for p, outcome in enumerate(outcomes):
            winner = best_restart(outcome.final)
            reconstructions.append(Reconstruction.from_restarts(images(p, winner), labels[p], outcome.final, winner,
                                                                outcome.trace, outcome.iterations))
        return reconstructions
