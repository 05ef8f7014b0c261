"""The gradient-matching objective shared by the optimisation attacks, defined per trial so that
restarts — and independent payloads attacked together — can be ``vmap``-ed.

A *trial* is one candidate batch for one payload. :class:`GradientMatching` holds what the trials of
a group of payloads share (the global model, the public hyperparameters, the matched layers, the
cost and the image regularisers) and, stacked along a leading payload dimension, what each payload has of its
own (its prepared observed update, its known BN statistics). The payloads of one group must agree
on everything shared; :func:`shared_key` says what that is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor
from torch.func import grad, vmap

from fedleak.attacks.base import AttackerKnowledge, OptimizationConfig, check_update
from fedleak.attacks.labels import LABEL_METHODS
from fedleak.attacks.layers import LAYER_SELECTIONS, select_layers
from fedleak.attacks.objectives import COSTS, MATCHINGS, auto_matching, check_matching
from fedleak.attacks.regularizers import REGULARIZERS, RegularizerContext, batch_norm_statistics
from fedleak.attacks.simulation import Simulation
from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload
from fedleak.models.batchnorm import batch_norm_layers

Tree = Any  # nested dicts / lists / tuples of tensors


def tree_map(fn: Callable[..., Tensor], *trees: Tree) -> Tree:
    """``fn`` applied leaf-wise to trees of one structure (dicts, lists, tuples of tensors)."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: tree_map(fn, *(t[k] for t in trees)) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(tree_map(fn, *items) for items in zip(*trees))
    return fn(*trees)


def stack(trees: Sequence[Tree]) -> Tree:
    """Trees of one structure stacked leaf-wise along a new leading dimension."""
    return tree_map(lambda *leaves: torch.stack(leaves), *trees)


def take(tree: Tree, index: int | slice | Tensor) -> Tree:
    """The payloads ``index`` (an int drops the payload dimension) of a stacked tree."""
    return tree_map(lambda leaf: leaf[index], tree)


class MatchingConfig(OptimizationConfig):
    """Settings of the gradient-matching attacks (IG, ROG) beyond the optimiser's."""

    layers: str = Field("all", description="all | largest-norm | first | last")
    layer_count: int | None = Field(None, ge=1, description="k for largest-norm / first / last")
    labels: str = Field("auto", description="label recovery when labels are not known: auto (iDLG for one "
                        "image, wainakh for a batch) | idlg | yin | wainakh")
    matching: str = Field("plain", description="plain | masked | sign | auto (from the defense spec)")
    chunk: int | None = Field(None, ge=1, description="memory bound: at most this many trials (restarts × "
                              "payloads) go through the model at once (unset: all of them)")

    _labels = field_validator("labels")(lambda v: LABEL_METHODS.check(v))
    _layers = field_validator("layers")(lambda v: LAYER_SELECTIONS.check(v))
    _matching = field_validator("matching")(check_matching)


def matched_layers(payload: Payload, layers: str, layer_count: int | None) -> tuple[str, ...]:
    """The parameter names whose update is matched (chosen from the observed update only)."""
    return tuple(select_layers(payload.update, layers, layer_count))


def shared_key(payload: Payload, knowledge: AttackerKnowledge, names: Sequence[str]) -> tuple:
    """What the payloads attacked together must share: the architecture, the public
    hyperparameters, the matched layers, the input and normalisation, which knowledge is declared.
    (The model state is compared separately, tensor by tensor.)"""
    arch = type(knowledge.architecture)
    return (f"{arch.__module__}.{arch.__qualname__}", repr(payload.hyper), tuple(names),
            tuple(knowledge.input_shape), knowledge.num_classes, tuple(knowledge.mean), tuple(knowledge.std),
            knowledge.labels is None, knowledge.bn_stats is None, tuple(payload.update))


def same_state(a: Payload, b: Payload) -> bool:
    """Whether two payloads were computed on the same global model (equal state, tensor by tensor)."""
    if a.model_state is b.model_state:
        return True
    if a.model_state.keys() != b.model_state.keys():
        return False
    return all(a.model_state[k].shape == b.model_state[k].shape and torch.equal(a.model_state[k], b.model_state[k])
               for k in a.model_state)


class GradientMatching:
    """cost(view(simulated update of the selected layers), observed update) + Σ weight·regularizer(x).

    ``matching`` picks the view (plain, masked, sign, or auto: chosen from the payload's public
    defense spec). Given several payloads (and their knowledge), the objective holds each one's
    prepared observed update stacked along a payload dimension; they must share the model, its
    state and the public hyperparameters (see :func:`shared_key`)."""

    def __init__(
        self,
        payload: Payload | Sequence[Payload],
        knowledge: AttackerKnowledge | Sequence[AttackerKnowledge],
        cost: str = "cosine",
        layers: str = "all",
        layer_count: int | None = None,
        regularizers: dict[str, float] | None = None,
        matching: str = "plain",
    ) -> None:
        payloads = [payload] if isinstance(payload, Payload) else list(payload)
        knowledges = [knowledge] * len(payloads) if isinstance(knowledge, AttackerKnowledge) else list(knowledge)
        first, known = payloads[0], knowledges[0]
        self.simulation = Simulation(first, known)
        params = dict(self.simulation.model.named_parameters())
        self.names = matched_layers(first, layers, layer_count)
        key = shared_key(first, known, self.names)
        for p, k in zip(payloads, knowledges):
            check_update(p, params)
            if p is not first and (shared_key(p, k, matched_layers(p, layers, layer_count)) != key
                                   or not same_state(p, first)):
                raise FedleakError("payloads attacked together must share the model, its state, the public "
                                   "hyperparameters and the matched layers")
        if matching == "auto":
            matching = auto_matching(first.hyper.defense)
        self.matching = MATCHINGS.get(matching)
        self.cost = COSTS.get(cost)
        self.regularizers = [(REGULARIZERS.get(name), w) for name, w in (regularizers or {}).items() if w]
        sim = self.simulation
        self.context = RegularizerContext(sim.model, sim.params, sim.buffers, None, batch_norm_layers(sim.model))
        uses_bn = any(term is batch_norm_statistics for term, _ in self.regularizers)
        # The BN regulariser reads the trial's batch statistics from the simulated forward pass (hooks).
        self.observe = uses_bn and bool(self.context.bn_layers)
        for k in knowledges:
            if k.bn_stats is not None and len(k.bn_stats) != len(self.context.bn_layers):
                raise FedleakError(
                    f"{len(k.bn_stats)} batch-norm statistics given for {len(self.context.bn_layers)} layers"
                )
        self.count = len(payloads)
        self.data = stack([self._prepare(p, k) for p, k in zip(payloads, knowledges)])
        """Each payload's own part of the objective, stacked along the payload dimension."""

    def _prepare(self, payload: Payload, knowledge: AttackerKnowledge) -> dict[str, Any]:
        view_state, compared = self.matching.prepare([payload.update[n] for n in self.names])
        data: dict[str, Any] = {"view": view_state, "cost": self.cost.prepare(list(compared))}
        if knowledge.bn_stats is not None:
            data["bn"] = [tuple(pair) for pair in knowledge.bn_stats]
        return data

    # ---------------------------------------------------------------------------- one trial

    def _match(self, x: Tensor, labels: Tensor, data: dict[str, Any], batched: bool,
               observe: bool) -> tuple[Tensor, Any]:
        update, seen = self.simulation.update_and_statistics(x, labels, batched, observe)
        simulated = self.matching.view([update[n] for n in self.names], data["view"])
        return self.cost.evaluate(simulated, data["cost"]), seen

    def trial(self, x: Tensor, labels: Tensor, batched: bool = False,
              data: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """(total loss, matching loss) of one trial's candidate batch ``x`` for one payload (``data``:
        its slice of :attr:`data`; the first payload's by default)."""
        data = take(self.data, 0) if data is None else data
        match, seen = self._match(x, labels, data, batched, self.observe)
        total = match
        if self.regularizers:
            context = dataclasses.replace(self.context, bn_targets=data.get("bn"), seen=seen)
            for term, weight in self.regularizers:
                total = total + weight * term(x, context)
        return total, match.detach()

    def matching_loss(self, x: Tensor, labels: Tensor, batched: bool = False,
                      data: dict[str, Any] | None = None) -> Tensor:
        """The matching loss (no regularisers) of one trial for one payload (the first by default)."""
        data = take(self.data, 0) if data is None else data
        return self._match(x, labels, data, batched, False)[0]

    # ---------------------------------------------------------------------------- many trials

    def _trial_gradient(self, x: Tensor, labels: Tensor, data: dict[str, Any]) -> tuple[Tensor, Tensor]:
        return grad(lambda xr: self.trial(xr, labels, True, data), has_aux=True)(x)

    def _trial_loss(self, x: Tensor, labels: Tensor, data: dict[str, Any]) -> Tensor:
        return self.matching_loss(x, labels, True, data).detach()

    def _blocks(self, per_trial: Callable, single: Callable, x: Tensor, labels: Tensor, data: Tree,
                chunk: int | None) -> Any:
        """``per_trial`` over every (payload, restart) of ``x`` (P×R×B×C×H×W), as ``vmap`` over
        payloads of ``vmap`` over restarts, at most ``chunk`` trials at a time; a lone trial takes
        ``single`` (plain autograd, faster on a CPU than ``torch.func.grad``: ``benchmarks/image_gradient.py``)."""
        count, restarts = x.shape[:2]
        per_restart = vmap(per_trial, in_dims=(0, None, None))
        per_payload = vmap(per_restart)
        cr = restarts if chunk is None else min(restarts, chunk)
        cp = count if chunk is None else max(1, chunk // cr)
        rows = []
        for p0 in range(0, count, cp):
            cols = []
            for r0 in range(0, restarts, cr):
                xs = x[p0:p0 + cp, r0:r0 + cr]
                if xs.shape[0] == 1 and xs.shape[1] == 1:
                    out = single(xs[0, 0], labels[p0], take(data, p0))
                    out = tree_map(lambda t: t[None, None], out)
                elif xs.shape[0] == 1:
                    out = tree_map(lambda t: t[None], per_restart(xs[0], labels[p0], take(data, p0)))
                else:
                    out = per_payload(xs, labels[p0:p0 + cp], take(data, slice(p0, p0 + cp)))
                cols.append(out)
            rows.append(tree_map(lambda *parts: torch.cat(parts, dim=1), *cols))
        return tree_map(lambda *parts: torch.cat(parts, dim=0), *rows)

    def _single_gradient(self, x: Tensor, labels: Tensor, data: dict[str, Any]) -> tuple[Tensor, Tensor]:
        xr = x.detach().requires_grad_(True)
        total, match = self.trial(xr, labels, False, data)
        (gx,) = torch.autograd.grad(total, xr)
        return gx, match

    def _single_loss(self, x: Tensor, labels: Tensor, data: dict[str, Any]) -> Tensor:
        return self.matching_loss(x, labels, False, data).detach()

    def gradients(self, x: Tensor, labels: Tensor, data: Tree | None = None,
                  chunk: int | None = None) -> tuple[Tensor, Tensor]:
        """∂(total loss)/∂x and the matching loss of every trial: ``x`` is P×R×B×C×H×W (payloads ×
        restarts × the batch), ``labels`` P×B, ``data`` the payloads' slice of :attr:`data`."""
        data = self.data if data is None else data
        return self._blocks(self._trial_gradient, self._single_gradient, x.detach(), labels, data, chunk)

    def losses(self, x: Tensor, labels: Tensor, data: Tree | None = None, chunk: int | None = None) -> Tensor:
        """The matching loss of every trial of ``x`` (P×R×B×C×H×W) → P×R."""
        data = self.data if data is None else data
        return self._blocks(self._trial_loss, self._single_loss, x.detach(), labels, data, chunk)

