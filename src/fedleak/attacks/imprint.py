"""Robbing the Fed's recovery (Fowl et al., ICLR 2022): images read off an imprint block's row gradients.

Row i of the block fires for inputs whose measurement exceeds threshold t_i, so with rows ordered by
threshold the difference of adjacent rows' gradients keeps only the images in bin [t_i, t_{i+1}):
(∇W_i − ∇W_{i+1}) / (∇b_i − ∇b_{i+1}) is the one image of a bin that holds one — exactly, up to float
rounding — and a weighted mean of the images of a bin that holds several (see
:mod:`fedleak.fl.modifications`). The attacker knows the block: the server built it. Of the non-empty
bins, the ones with the largest bias-gradient difference (the best conditioned) give the
reconstructions, one per observed image; images no bin isolates come back as the mean colour. No
optimisation: it costs one division per row. It reads the same from FedSGD, from FedAvg's one-step
update (θ₀ − θ₁ = lr·∇, the lr cancels) and from the mean over K clients (secure aggregation).
"""

from __future__ import annotations

import time

import torch
from pydantic import Field, field_validator
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
from fedleak.errors import FedleakError
from fedleak.fl.modifications import ImprintBlock, exact_dtype
from fedleak.fl.payload import Payload


class ImprintAttackConfig(AttackConfig):
    labels: str = Field("auto", description="label recovery when labels are not known: auto | idlg | yin | wainakh | ilrg")
    empty: float = Field(1e-9, ge=0, lt=1, description="a bin whose bias-gradient difference is at most this "
                         "share of the largest is empty")

    _labels = field_validator("labels")(lambda v: LABEL_METHODS.check(v))


def imprint_block(model: nn.Module) -> tuple[str, ImprintBlock]:
    """The (first) imprint block of the model the server sent, with its name."""
    for name, module in model.named_modules():
        if isinstance(module, ImprintBlock):
            return name, module
    raise FedleakError("the imprint attack needs a model with an imprint block: run it against a malicious "
                       "server, e.g. --server imprint:bins=128")


def bin_images(weight_grad: Tensor, bias_grad: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor]:
    """Per bin (rows in ascending threshold order): the image a bin's gradient difference stands for
    (``ΔW_i / Δb_i``, flattened) and ``Δb_i``, both in float64 (float32 on MPS), on the update's device."""
    wide = exact_dtype(weight_grad.device)
    order = torch.argsort(thresholds.to(weight_grad.device))
    gw, gb = weight_grad.to(wide)[order], bias_grad.to(wide)[order]
    dw = gw - torch.cat([gw[1:], torch.zeros_like(gw[:1])])
    db = gb - torch.cat([gb[1:], torch.zeros_like(gb[:1])])
    safe = torch.where(db == 0, torch.ones_like(db), db)
    return dw / safe.unsqueeze(1), db


def pick_bins(candidates: Tensor, db: Tensor, wanted: int, empty: float) -> tuple[Tensor, Tensor, Tensor]:
    """The ``wanted`` reconstructions (flattened, normalised): the candidates of the non-empty bins
    with the largest ``|Δb|``, best first, then zeros (the mean colour) where too few bins are
    filled; with the mask of filled bins and, per reconstruction, whether a bin gave it. Shapes do
    not depend on values: no host read, so it runs as it is on any device."""
    strength = db.abs()
    filled = (strength > empty * strength.max()) & (strength > 0)
    score = torch.where(filled, strength, torch.full_like(strength, -1.0))  # empty bins sort last
    top = torch.argsort(score, descending=True, stable=True)[:wanted]
    found, chosen = filled[top], candidates[top]
    x = torch.zeros(wanted, candidates.shape[1], dtype=candidates.dtype, device=candidates.device)
    x[: top.numel()] = torch.where(found.unsqueeze(1), chosen, torch.zeros_like(chosen))
    return x, filled, found


@register_attack("imprint")
class ImprintRecovery(Attack[ImprintAttackConfig]):
    """Robbing the Fed: exact recovery from a malicious server's imprint block."""


    def run(self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False) -> Reconstruction:
        start = time.perf_counter()
        model = target_model(payload, knowledge)
        check_update(payload, dict(model.named_parameters()))
        name, block = imprint_block(model)
        keys = [f"{name}.encoder.weight", f"{name}.encoder.bias"]
        missing = [k for k in keys if k not in payload.update]
        if missing:
            raise FedleakError(f"the update holds no gradient of the imprint layer ({missing[0]!r})")
        candidates, db = bin_images(payload.update[keys[0]], payload.update[keys[1]], -block.encoder.bias.detach())
        x, filled, found = pick_bins(candidates, db, payload.hyper.observed_images, self.config.empty)
        images = knowledge.normalization.to_pixels(x.view(-1, *knowledge.input_shape).float())
        labels = recover_labels(payload, knowledge, self.config.labels)
        return Reconstruction(
            images=images, labels=labels, matching_loss=0.0, restart_losses=[0.0], iterations=0,
            seconds=time.perf_counter() - start,
            trace=[{"bins": int(db.numel()), "filled_bins": int(filled.sum()), "recovered": int(found.sum())}],
        )
