"""A client-side check of the model a server sent: does it look built to leak?

A malicious server's modifications leave marks in the weights that a client can look for before it
trains (``fedleak inspect-model``, or :func:`inspect_model` from a Flower client mod):

- **imprint-like** (Robbing the Fed): a layer whose rows are one linear measurement repeated — every
  nonzero row pointing the same way — with staggered biases, i.e. thresholds on one number; or a
  layer whose columns all write the same direction back (the block's decoder);
- **fishing-like** (Wen et al.): a classifier with one dominant row (the others near zero) or with
  biases far apart, which makes the model's prediction ignore the input for all classes but one;
- **trap-like** (Boenisch et al.'s trap weights): a fully connected layer whose rows' negative
  weights are systematically larger than their positive ones — more than the rows' share of negative
  weights explains — so that its neurons rarely fire and many fire for one image alone.

The checks read weights only (a state dict is enough: no architecture, no data), by shape and role,
never by name — a server can call its tensors anything: every floating-point tensor of two or more
dimensions is a weight matrix (a convolution's filters are its rows), a 1-d tensor with one value
per row named or stored beside it its bias, and a linear matrix with one row per class (or whose
outputs no other layer reads) a classifier. A state dict with no weight matrix at all gets no
verdict: it is an error, not "nothing found". Honest layers —
randomly initialised or trained — have rows pointing in many directions and biases within a few
logits, so the thresholds below sit far from both. They are heuristics against the constructions
fedleak builds and close variants, not a proof of honesty: a server can hide a modification better.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from scipy.stats import binomtest
from torch import Tensor, nn

from fedleak.data import load_dataset
from fedleak.device import resolve_device
from fedleak.errors import FedleakError
from fedleak.modalities import build_target
from fedleak.pipeline import resolve_checkpoint
from fedleak.registry import Registry
from fedleak.serving import apply_server


@dataclass(frozen=True)
class Thresholds:
    """When a layer counts as suspicious (see :mod:`fedleak.inspect`)."""

    min_rows: int = 4  # fewer rows (or columns) than this are never a measurement bank
    alignment: float = 0.999  # cosine of a row to the rows' mean direction, for "the same measurement"
    aligned_share: float = 0.9  # share of nonzero rows that must be aligned
    dominance: float = 10.0  # largest classifier row norm over the median row norm
    bias_gap: float = 10.0  # largest minus smallest classifier bias, in logits
    trap_columns: int = 16  # fully connected layers with fewer inputs are not checked for trap weights
    trap_p: float = 1e-8  # one-sided sign-test p-value of rows with a negative-magnitude excess, at most
    trap_excess: float = 0.01  # the rows' median excess, log(magnitude ratio) − log(count ratio), at least


@dataclass(frozen=True)
class Finding:
    """One suspicious layer: what it looks like (``imprint`` or ``fishing``), where, and why."""

    kind: str
    layer: str
    detail: str
    score: float


@dataclass(frozen=True)
class Findings:
    """What :func:`inspect_model` found in ``checked`` weight tensors."""

    findings: tuple[Finding, ...] = ()
    checked: int = 0
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def suspicious(self) -> bool:
        return bool(self.findings)

    @property
    def kinds(self) -> list[str]:
        return sorted({f.kind for f in self.findings})

    def summary(self) -> str:
        """One line: what was found, or that nothing was."""
        if not self.findings:
            return f"no imprint-like or fishing-like structure, no trap weights, in {self.checked} weight tensors"
        return f"{len(self.findings)} suspicious layer(s) ({', '.join(self.kinds)}) in {self.checked} weight tensors"

    def as_dict(self) -> dict[str, Any]:
        findings = [{**asdict(f), "score": f.score if math.isfinite(f.score) else None} for f in self.findings]
        return {"suspicious": self.suspicious, "kinds": self.kinds, "checked": self.checked,
                "findings": findings, "thresholds": asdict(self.thresholds)}


class WeightMatrix(tuple):
    """One weight-like tensor as a matrix (one row per output unit: a convolution's filters
    flattened) and the bias found for it (``None`` if none): it unpacks as that pair, ``w, b =
    weights[name]``; it also knows the bias's name and how many dimensions the tensor had (2 for a
    linear layer, 4 for a 2-d convolution's kernel)."""

    bias_name: str | None
    ndim: int

    def __new__(cls, matrix: Tensor, bias: Tensor | None = None, bias_name: str | None = None,
                ndim: int = 2) -> WeightMatrix:
        self = super().__new__(cls, (matrix, bias))
        self.bias_name, self.ndim = bias_name, ndim
        return self

    @property
    def matrix(self) -> Tensor:
        return self[0]

    @property
    def bias(self) -> Tensor | None:
        return self[1]


Weights = dict[str, WeightMatrix]  # tensor name → the tensor as a matrix, with its bias
Check = Callable[[Weights, Thresholds, "int | None"], list[Finding]]
CHECKS: Registry[Check] = Registry("model check")
STATISTICS = ("running_mean", "running_var")  # batch norm's buffers: never a layer's bias


def weight_matrices(state: Mapping[str, Tensor]) -> Weights:
    """Every floating-point tensor of two or more dimensions, whatever its name (a server that
    renames ``weight`` to ``w8`` hides nothing), as a matrix with its bias, in state order; in
    float64 (float32 on MPS, which has none) on the device the weights are on.

    A bias is a floating-point 1-d tensor with one value per row: for a tensor named ``….weight``,
    the ``….bias`` beside it (PyTorch's naming); for any other name, the tensor right after it in
    the state's order (a module's parameters are listed weight, bias) or the one right before it
    (files that sort their names, such as safetensors, put ``b…`` before ``w…``), whichever shares
    more of its name (the one after on a tie)."""
    names = list(state)
    position = {n: i for i, n in enumerate(names)}
    matrices = [n for n in names if _weight_like(state[n])]
    claimed = {n[: -len("weight")] + "bias" for n in matrices if n.endswith("weight")}
    out: Weights = {}
    for name in matrices:
        t = state[name]
        rows = t.shape[0]
        if name.endswith("weight"):
            candidates = [name[: -len("weight")] + "bias"]
        else:
            at = position[name]
            beside = [n for n in names[at + 1: at + 2] + names[max(at - 1, 0): at]
                      if n not in claimed and not n.endswith(STATISTICS)]
            # the one sharing more of the matrix's name first ("fc.w8" → "fc.b8", not "features.0.b8")
            candidates = sorted(beside, key=lambda n: -len(os.path.commonprefix([n, name])))
        bias_name = next((n for n in candidates if n in state and _bias_like(state[n], rows)), None)
        if bias_name is not None and not name.endswith("weight"):
            claimed.add(bias_name)
        bias = _wide(state[bias_name]) if bias_name is not None else None
        out[name] = WeightMatrix(_wide(t).flatten(1), bias, bias_name, t.ndim)
    return out


def _weight_like(t: Any) -> bool:
    return isinstance(t, Tensor) and t.ndim >= 2 and torch.is_floating_point(t) and t.shape[0] > 0 and t[0].numel() > 0


def _bias_like(t: Any, rows: int) -> bool:
    return isinstance(t, Tensor) and t.ndim == 1 and torch.is_floating_point(t) and t.numel() == rows


def _wide(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32 if t.device.type == "mps" else torch.float64)


def aligned_rows(matrix: Tensor, limits: Thresholds) -> tuple[float, int]:
    """(share of the nonzero rows pointing along their mean direction, number of nonzero rows)."""
    norms = matrix.norm(dim=1)
    rows = matrix[norms > norms.max() * 1e-6] if norms.max() > 0 else matrix[:0]
    if len(rows) < limits.min_rows or matrix.shape[1] < limits.min_rows:
        return 0.0, len(rows)
    unit = rows / rows.norm(dim=1, keepdim=True)
    mean = unit.sum(0)
    if mean.norm() == 0:
        return 0.0, len(rows)
    cos = unit @ (mean / mean.norm())
    return float((cos >= limits.alignment).double().mean()), len(rows)


@CHECKS.register("imprint")
def imprint_like(weights: Weights, limits: Thresholds, num_classes: int | None = None) -> list[Finding]:
    """Layers whose rows repeat one measurement (with staggered biases), or whose columns repeat one
    direction."""
    found = []
    for name, entry in weights.items():
        w, b = entry.matrix, entry.bias
        for side, matrix in (("rows", w), ("columns", w.T)):
            share, count = aligned_rows(matrix, limits)
            if share < limits.aligned_share or _one_live_row(w, limits):
                continue
            detail = f"{count} {side} are one linear measurement repeated ({share:.0%} aligned)"
            if side == "rows" and b is not None:
                distinct = int(torch.unique(b).numel())
                detail += f", biases staggered over {distinct} distinct values" if distinct > 1 else ", one bias"
            found.append(Finding("imprint", name, detail, share))
            break
    return found


def _one_live_row(w: Tensor, limits: Thresholds) -> bool:
    """A matrix with a single nonzero row (a fished classifier) is the fishing check's finding."""
    norms = w.norm(dim=1)
    return bool(norms.max() > 0 and (norms > norms.max() * 1e-6).sum() == 1)


def classifiers(weights: Weights, num_classes: int | None) -> list[str]:
    """The weight matrices that may be the model's classifier, by shape alone (names may lie):
    with ``num_classes``, every linear matrix (two dimensions) with that many rows (else every
    matrix, convolution kernels too); without, the last linear matrix in the state's order and
    every linear matrix whose outputs no other layer reads (its row count is no other matrix's
    column count) — a file that sorts its names (e.g. safetensors) keeps no layer order — or, in a
    model with no linear matrix, its last matrix."""
    linear = [n for n, m in weights.items() if m.ndim == 2]
    if num_classes is not None:
        return [n for n in linear if weights[n].matrix.shape[0] == num_classes] or \
            [n for n in weights if weights[n].matrix.shape[0] == num_classes]  # e.g. a 1×1 convolution's
    if not linear:
        return list(weights)[-1:]
    inputs = {weights[n].matrix.shape[1] for n in weights}
    last = linear[-1:]
    sinks = [n for n in linear if weights[n].matrix.shape[0] not in inputs]
    return [n for n in linear if n in last or n in sinks]


def classifier(weights: Weights, num_classes: int | None) -> tuple[str, Tensor, Tensor | None] | None:
    """The last weight matrix (with ``num_classes`` rows when given): the model's classifier."""
    names = classifiers(weights, num_classes)
    if not names:
        return None
    entry = weights[names[-1]]
    return names[-1], entry.matrix, entry.bias


@CHECKS.register("fishing")
def fishing_like(weights: Weights, limits: Thresholds, num_classes: int | None = None) -> list[Finding]:
    """A classifier (see :func:`classifiers`) with one dominant row or biases far apart."""
    found = []
    for name in classifiers(weights, num_classes):
        w, b, bias_name = weights[name].matrix, weights[name].bias, weights[name].bias_name
        norms = w.norm(dim=1)
        if len(norms) >= 2 and norms.max() > 0:
            median = norms.median()
            ratio = float(norms.max() / median) if median > 0 else float("inf")
            if ratio >= limits.dominance:
                found.append(Finding("fishing", name, f"one classifier row dominates: its norm is "
                                     f"{'∞' if ratio == float('inf') else f'{ratio:.3g}'}× the median row's "
                                     f"({int((norms <= norms.max() * 1e-6).sum())} rows are zero)", ratio))
        if b is not None and b.numel() >= 2:
            gap = float(b.max() - b.min())
            if gap >= limits.bias_gap:
                found.append(Finding("fishing", bias_name or name,
                                     f"classifier biases span {gap:.3g} logits (class {int(b.argmin())} is pushed "
                                     f"{float(b.median() - b.min()):.3g} below the median)", gap))
    return found


def magnitude_excess(matrix: Tensor) -> Tensor:
    """Per row with weights of both signs: log(mean |negative weight| / mean positive weight) −
    log(count of negative / count of positive weights). It is 0 in expectation for a sign-symmetric
    row (every honest initialisation) and for a uniform row shifted by a constant (a shift grows the
    negatives' count and magnitude together), and log s for a row whose negative weights were scaled
    by s (trap weights keep the signs balanced)."""
    negative, positive = (matrix < 0).sum(1), (matrix > 0).sum(1)
    both = (negative > 0) & (positive > 0)
    m, neg, pos = matrix[both], negative[both].to(matrix.dtype), positive[both].to(matrix.dtype)
    ratio = ((-m).clamp_min(0).sum(1) / neg) / (m.clamp_min(0).sum(1) / pos)
    return torch.log(ratio) - torch.log(neg / pos)


@CHECKS.register("trap")
def trap_like(weights: Weights, limits: Thresholds, num_classes: int | None = None) -> list[Finding]:
    """Fully connected layers (not classifiers, at least ``trap_columns`` inputs) whose rows have a
    positive :func:`magnitude_excess` so systematically that a sign test (each row's excess positive
    or not, probability ½ each for an honest row) gives p ≤ ``trap_p``, with a median excess of at
    least ``trap_excess``."""
    heads = set(classifiers(weights, num_classes))
    found = []
    for name, entry in weights.items():
        if entry.ndim != 2 or name in heads or entry.matrix.shape[1] < limits.trap_columns:
            continue
        excess = magnitude_excess(entry.matrix)
        if len(excess) < limits.min_rows:
            continue
        above = int((excess > 0).sum())
        p = float(binomtest(above, len(excess), 0.5, alternative="greater").pvalue)
        median = float(excess.median())
        if p <= limits.trap_p and median >= limits.trap_excess:
            found.append(Finding("trap", name, f"{above} of {len(excess)} rows weigh their negative weights "
                                 f"more than their positive ones beyond their count (median factor "
                                 f"{math.exp(median):.3g}, sign test p = {p:.2g}): neurons that rarely fire", median))
    return found


def inspect_state(state: Mapping[str, Tensor], num_classes: int | None = None,
                  thresholds: Thresholds | None = None) -> Findings:
    """Run every check on a state dict (weights only; no architecture needed)."""
    limits = thresholds or Thresholds()
    weights = weight_matrices(state)
    if not weights:
        held = (f"none of the model's {len(state)} tensor{'s' * (len(state) != 1)} is a weight matrix (a "
                "floating-point tensor of two or more dimensions)") if state else "the model holds no tensors"
        raise FedleakError(f"{held}: nothing to inspect, so no verdict")
    findings = [f for name in CHECKS for f in CHECKS.get(name)(weights, limits, num_classes)]
    return Findings(tuple(findings), len(weights), limits)


def inspect_model(module: nn.Module, num_classes: int | None = None,
                  thresholds: Thresholds | None = None) -> Findings:
    """:func:`inspect_state` of ``module``'s state dict: what a Flower client mod calls on the model
    it received before training on it."""
    return inspect_state(module.state_dict(), num_classes, thresholds)


FLAGGED = 3  # exit code of ``fedleak inspect-model`` when a layer looks built to leak


def sent_model(config: Any, loader: Callable[..., Any] | None = None) -> tuple[nn.Module, int]:
    """The global model a run with ``config`` (a :class:`~fedleak.config.RunConfig`) sends — the
    payload's model state, after the server's modification — and its number of classes. It is built
    on the config's ``device``, as the run builds it (the modification and its public images there)."""
    load = loader or load_dataset
    device = resolve_device(config.device)
    config, info = resolve_checkpoint(config)
    d = config.data
    dataset = load(d.name, d.root, split=d.split, image_size=d.image_size, channels=d.channels, **d.options)
    target = build_target(config, dataset, info)
    target.model.to(device)
    target = apply_server(config, target, dataset, load)
    return target.model, dataset.num_classes
