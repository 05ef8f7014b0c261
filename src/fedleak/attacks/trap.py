"""Trap weights' recovery (Boenisch et al., EuroS&P 2023): images read off the rows of the first
fully connected layer that fired for one image alone.

A row i of the first layer (``z = W·x + b`` on the flattened normalised input) gets, from the mean
loss over N images, ∂L/∂b_i = (1/N) Σ_{j active} δ_ij and ∂L/∂W_i = (1/N) Σ_{j active} δ_ij·x_j
(δ_ij = ∂ℓ_j/∂z_i): for a row active for one image alone their ratio is that image, exactly, and for a
row active for several a weighted mix of them. A trap server (:mod:`fedleak.fl.trap`) makes rows fire
rarely, so many rows hold one image. The recovery:

1. every row whose bias gradient is nonzero (above ``empty`` × the largest) gives the candidate
   x_i = ∂L/∂W_i / ∂L/∂b_i; a candidate that does not re-activate its own row (W_i·x_i + b_i ≤ 0) is
   no image that fired it and is dropped;
2. candidates within ``tolerance`` of each other (largest pixel difference, in normalised units,
   relative to the larger of 1 and the candidate's largest value) are one image: every row isolating
   the same image gives it again, while mixes differ from row to row;
3. each distinct image x is **verified** against the model the attacker knows: for some label y, its
   own gradient δ(x, y) = ∂ℓ(f(x), y)/∂z, scaled as the update is (1/N, times the local lr of a
   one-step FedAvg Δ), must equal the bias gradient of every row that gave x (to ``agreement``,
   relative) — which a row's mix of several images does not (its bias gradient is a sum of several
   images' δ). This holds for FedSGD and for FedAvg's single full-batch SGD step without weight
   decay (Δ = lr·∇: the ratio is the same); after several local steps the first layer moves between
   steps, rows mix an image's inputs across steps, and nothing is verified (said in the notes), as
   when a defense rescales or perturbs the update.

The reconstructions are the verified images (those seen by most rows first), then the unverified
distinct candidates, then the mean colour, up to the observed image count; the notes say how many
rows were active and how many distinct and verified images were found. No optimisation.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor, nn

from fedleak.attacks.base import (
    Attack,
    AttackConfig,
    AttackerKnowledge,
    Reconstruction,
    check_update,
    register_attack,
    target_model,
)
from fedleak.attacks.labels import LABEL_METHODS, recover_labels
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.modifications import exact_dtype
from fedleak.fl.payload import Payload, PublicHyperparameters
from fedleak.fl.server import modification_of
from fedleak.fl.trap import Trap, first_linear


class TrapAttackConfig(AttackConfig):
    labels: str = Field("auto", description="label recovery when labels are not known: auto | idlg | yin | wainakh | ilrg")
    empty: float = Field(1e-9, ge=0, lt=1, description="a row whose bias gradient is at most this share of the "
                         "largest is inactive")
    tolerance: float = Field(1e-3, gt=0, lt=1, description="candidates closer than this (largest pixel difference, "
                             "normalised units, relative) are one image")
    agreement: float = Field(1e-3, gt=0, lt=1, description="relative error within which a candidate's own gradient "
                             "must reproduce its rows' bias gradients to be verified")

    _labels = field_validator("labels")(lambda v: LABEL_METHODS.check(v))


def update_scale(hyper: PublicHyperparameters) -> float | None:
    """The factor between one image's loss gradient and its share of the update, when the update is
    one gradient step: 1/N for FedSGD (N observed images), lr/N for a one-step full-batch SGD FedAvg Δ
    (1/N sent as Δ/lr); ``None`` (no verification) for anything else."""
    n = hyper.observed_images
    if hyper.protocol == "fedsgd":
        return 1.0 / n
    one_step = hyper.local_steps == 1 and (hyper.local_batch_size or hyper.batch_size) >= hyper.batch_size
    if one_step and hyper.optimizer == "sgd" and hyper.weight_decay == 0 and hyper.lr:
        return (hyper.lr if hyper.update_scale == "delta" else 1.0) / n
    return None


def candidates(gw: Tensor, gb: Tensor, weight: Tensor, bias: Tensor, empty: float) -> tuple[Tensor, Tensor]:
    """The rows whose bias gradient is nonzero and whose ratio x_i = ∂W_i/∂b_i re-activates row i
    (their indices), and those x_i (flattened, normalised), in ``gw``'s dtype."""
    strength = gb.abs()
    active = (strength > empty * strength.max()) & (strength > 0)
    rows = torch.nonzero(active).flatten()
    x = gw[rows] / gb[rows].unsqueeze(1)
    fires = (x * weight[rows]).sum(1) + bias[rows] > 0
    return rows[fires], x[fires]


def distinct(x: Tensor, tolerance: float) -> np.ndarray:
    """A cluster label per candidate: candidates within ``tolerance`` (largest difference, relative to
    max(1, the larger candidate's largest |value|)) are connected, clusters are the connected parts."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    size = x.abs().amax(1).clamp_min(1.0)
    near = torch.cdist(x, x, p=float("inf")) <= tolerance * torch.maximum(size.unsqueeze(0), size.unsqueeze(1))
    _, labels = connected_components(csr_matrix(near.cpu().numpy()), directed=False)
    return labels


def own_gradients(model: nn.Module, layer: nn.Linear, x: Tensor, input_shape: tuple[int, ...],
                  classes: int) -> Tensor:
    """δ(x_d, y) = ∂ℓ(f(x_d), y)/∂z for every image x_d (flattened, normalised) and every label y:
    classes × images × rows, z the first layer's output, ℓ the cross-entropy."""
    seen: list[Tensor] = []
    hook = layer.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        param = layer.weight
        logits = model(x.to(param.dtype).view(-1, *input_shape))
    finally:
        hook.remove()
    z = seen[0]
    out = []
    for y in range(classes):
        target = torch.full((len(x),), y, dtype=torch.long, device=x.device)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), z, retain_graph=y + 1 < classes)
        out.append(g.detach())
    return torch.stack(out)


@register_attack("trap")
class TrapRecovery(Attack[TrapAttackConfig]):
    """Boenisch et al.'s trap weights: exact recovery from rows active for one image alone."""

    def run(self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False) -> Reconstruction:
        start = time.perf_counter()
        cfg, hyper = self.config, payload.hyper
        model = target_model(payload, knowledge)
        check_update(payload, dict(model.named_parameters()))
        try:
            name, layer = first_linear(model, knowledge.input_shape)
        except ConfigError as exc:
            raise FedleakError(f"the trap attack reads a first fully connected layer: {exc}") from None
        prefix = f"{name}." if name else ""
        keys = [prefix + "weight", prefix + "bias"]
        missing = [k for k in keys if k not in payload.update]
        if missing:
            raise FedleakError(f"the update holds no gradient of the first layer ({missing[0]!r})")
        wide = exact_dtype(payload.update[keys[0]].device)
        assert layer.bias is not None  # first_linear checked it
        gw, gb = payload.update[keys[0]].to(wide), payload.update[keys[1]].to(wide)
        rows, x = candidates(gw, gb, layer.weight.detach().to(wide), layer.bias.detach().to(wide), cfg.empty)
        active = int(((gb.abs() > cfg.empty * gb.abs().max()) & (gb != 0)).sum())
        labels_of = distinct(x, cfg.tolerance)
        clusters = [np.flatnonzero(labels_of == c) for c in range(int(labels_of.max()) + 1)] if len(x) else []
        # each cluster's representative: the candidate of its row with the largest bias gradient
        reps = [int(m[int(torch.argmax(gb[rows[m]].abs()))]) for m in clusters]
        scale = update_scale(hyper)
        verified = [False] * len(clusters)
        if scale is not None and reps:
            with torch.enable_grad():
                delta = own_gradients(model, layer, x[reps], knowledge.input_shape, knowledge.num_classes).to(wide)
            for c, m in enumerate(clusters):
                observed = gb[rows[m]]
                error = (delta[:, c, rows[m]] * scale - observed).abs().amax(1)
                verified[c] = bool(error.min() <= cfg.agreement * observed.abs().max())
        order = sorted(range(len(clusters)), key=lambda c: (not verified[c], -len(clusters[c]),
                                                            -float(gb[rows[clusters[c]]].abs().max())))
        wanted = hyper.observed_images
        chosen = [reps[c] for c in order[:wanted]]
        flat = torch.zeros(wanted, gw.shape[1], dtype=wide, device=gw.device)
        if chosen:
            flat[: len(chosen)] = x[chosen]
        images = knowledge.normalization.to_pixels(flat.view(-1, *knowledge.input_shape).float())
        found = sum(verified)
        notes = [f"{active} of {gb.numel()} first-layer rows were active (nonzero bias gradient); {len(x)} "
                 f"re-activate their row; {len(clusters)} distinct images among them, {found} verified as one "
                 f"image's own gradient; {min(len(chosen), wanted)} returned of {wanted}"]
        if scale is None:
            notes.append("no image can be verified: the update is not one gradient step (FedAvg with several local "
                         "steps, minibatches, weight decay or Adam moves the first layer between steps and mixes "
                         "each row's images), so the distinct candidates are unchecked")
        elif hyper.defense and found == 0:
            notes.append(f"no image verified: the defense {hyper.defense} changes the update's scale or values")
        if not isinstance(modification_of(hyper.server), Trap):
            notes.append(f"the server sent no trap weights ({hyper.server}): its rows fire for many images, "
                         "and few rows isolate one")
        return Reconstruction(
            images=images, labels=recover_labels(payload, knowledge, cfg.labels), matching_loss=0.0,
            restart_losses=[0.0], iterations=0, seconds=time.perf_counter() - start,
            trace=[{"rows": int(gb.numel()), "active_rows": active, "candidates": len(x),
                    "distinct": len(clusters), "verified": found, "recovered": min(len(chosen), wanted)}],
            notes=notes,
        )
