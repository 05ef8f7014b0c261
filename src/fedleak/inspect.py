"""A client-side check of the model a server sent: does it look built to leak?

A malicious server's modifications leave marks in the weights that a client can look for before it
trains (``fedleak inspect-model``, or :func:`inspect_model` from a Flower client mod):

- **imprint-like** (Robbing the Fed): a layer whose rows are one linear measurement repeated — every
  nonzero row pointing the same way — with staggered biases, i.e. thresholds on one number; or a
  layer whose columns all write the same direction back (the block's decoder);
- **fishing-like** (Wen et al.): a classifier with one dominant row (the others near zero) or with
  biases far apart, which makes the model's prediction ignore the input for all classes but one.

The checks read weights only (a state dict is enough: no architecture, no data). Honest layers —
randomly initialised or trained — have rows pointing in many directions and biases within a few
logits, so the thresholds below sit far from both. They are heuristics against the constructions
fedleak builds and close variants, not a proof of honesty: a server can hide a modification better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fedleak.registry import Registry


@dataclass(frozen=True)
class Thresholds:
    """When a layer counts as suspicious (see :mod:`fedleak.inspect`)."""

    min_rows: int = 4  # fewer rows (or columns) than this are never a measurement bank
    alignment: float = 0.999  # cosine of a row to the rows' mean direction, for "the same measurement"
    aligned_share: float = 0.9  # share of nonzero rows that must be aligned
    dominance: float = 10.0  # largest classifier row norm over the median row norm
    bias_gap: float = 10.0  # largest minus smallest classifier bias, in logits


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
            return f"no imprint-like or fishing-like structure in {self.checked} weight tensors"
        return f"{len(self.findings)} suspicious layer(s) ({', '.join(self.kinds)}) in {self.checked} weight tensors"

    def as_dict(self) -> dict[str, Any]:
        findings = [{**asdict(f), "score": f.score if math.isfinite(f.score) else None} for f in self.findings]
        return {"suspicious": self.suspicious, "kinds": self.kinds, "checked": self.checked,
                "findings": findings, "thresholds": asdict(self.thresholds)}


Weights = dict[str, tuple[Tensor, Tensor | None]]  # weight name → (weight as a matrix, its bias)
Check = Callable[[Weights, Thresholds, "int | None"], list[Finding]]
CHECKS: Registry[Check] = Registry("model check")


def weight_matrices(state: Mapping[str, Tensor]) -> Weights:
    """Every floating-point weight of two or more dimensions as a matrix (one row per output unit:
    a convolution's filters flattened) with the bias of the same module, in state order; in float64
    (float32 on MPS, which has none) on the device the weights are on."""
    out: Weights = {}
    for name, t in state.items():
        if not name.endswith("weight") or t.ndim < 2 or not torch.is_floating_point(t):
            continue
        bias = state.get(name[: -len("weight")] + "bias")
        out[name] = (_wide(t).flatten(1), _wide(bias) if bias is not None else None)
    return out


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
    for name, (w, b) in weights.items():
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


def classifier(weights: Weights, num_classes: int | None) -> tuple[str, Tensor, Tensor | None] | None:
    """The last weight matrix (with ``num_classes`` rows when given): the model's classifier."""
    for name in reversed(list(weights)):
        w, b = weights[name]
        if num_classes is None or w.shape[0] == num_classes:
            return name, w, b
    return None


@CHECKS.register("fishing")
def fishing_like(weights: Weights, limits: Thresholds, num_classes: int | None = None) -> list[Finding]:
    """A classifier with one dominant row or biases far apart."""
    head = classifier(weights, num_classes)
    if head is None:
        return []
    name, w, b = head
    found = []
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
            found.append(Finding("fishing", name[: -len("weight")] + "bias",
                                 f"classifier biases span {gap:.3g} logits (class {int(b.argmin())} is pushed "
                                 f"{float(b.median() - b.min()):.3g} below the median)", gap))
    return found


def inspect_state(state: Mapping[str, Tensor], num_classes: int | None = None,
                  thresholds: Thresholds | None = None) -> Findings:
    """Run every check on a state dict (weights only; no architecture needed)."""
    limits = thresholds or Thresholds()
    weights = weight_matrices(state)
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
    from fedleak.data import load_dataset
    from fedleak.device import resolve_device
    from fedleak.fl.server import apply_server
    from fedleak.pipeline import build_target, resolve_checkpoint

    load = loader or load_dataset
    device = resolve_device(config.device)
    config, info = resolve_checkpoint(config)
    d = config.data
    dataset = load(d.name, d.root, split=d.split, image_size=d.image_size, channels=d.channels, **d.options)
    target = build_target(config, dataset, info)
    target.model.to(device)
    target = apply_server(config, target, dataset, load)
    return target.model, dataset.num_classes
