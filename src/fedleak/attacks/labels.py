"""Label recovery from the observed update (a lookup table of methods)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload
from fedleak.registry import Registry

if TYPE_CHECKING:
    from fedleak.attacks.base import AttackerKnowledge

LabelRecovery = Callable[[Payload, int], Tensor]

LABEL_METHODS: Registry[LabelRecovery] = Registry("label recovery method")


def last_layer_weight_grad(payload: Payload, num_classes: int) -> Tensor:
    """The update of the classifier's weight: the last 2-D tensor with one row per class."""
    for name in reversed(list(payload.update)):
        t = payload.update[name]
        if t.ndim == 2 and t.shape[0] == num_classes:
            return t
    raise FedleakError("label recovery needs a final linear layer with one row per class")


@LABEL_METHODS.register("idlg")
def idlg(payload: Payload, num_classes: int) -> Tensor:
    """iDLG (Zhao et al. 2020), one image: with cross-entropy, only the true class's row of the last
    weight gradient is (p_c − 1)·h ≤ 0 for non-negative features h, so its sum is the smallest."""
    if payload.hyper.observed_images != 1:
        raise FedleakError(
            f"iDLG label recovery works for one image, the batch has {payload.hyper.observed_images}: "
            "set attack.labels=auto|yin|wainakh, or declare the labels known (knowledge.labels=true)"
        )
    grad = last_layer_weight_grad(payload, num_classes)
    return torch.argmin(grad.sum(dim=1)).view(1)


@LABEL_METHODS.register("yin")
def yin(payload: Payload, num_classes: int) -> Tensor:
    """Yin et al. (GradInversion, CVPR 2021): the B classes whose row of the last weight gradient has
    the most negative minimum. Assumes no class repeats in the batch (B ≤ number of classes)."""
    b = payload.hyper.observed_images
    if b > num_classes:
        raise FedleakError(f"Yin et al.'s label recovery needs batch ≤ classes ({b} > {num_classes})")
    row_min = last_layer_weight_grad(payload, num_classes).min(dim=1).values
    return torch.sort(torch.argsort(row_min)[:b]).values


@LABEL_METHODS.register("wainakh")
def wainakh(payload: Payload, num_classes: int) -> Tensor:
    """Wainakh et al. (LLG, PETS 2022), the simple variant: every class whose row sum of the last
    weight gradient is negative is present (the B most negative when more than B are); then, until B
    labels are found, take the class with the most negative remaining sum. Each pick removes one
    sample's estimated impact from that row, so repeated labels are found too."""
    b = payload.hyper.observed_images
    sums = last_layer_weight_grad(payload, num_classes).sum(dim=1).double()
    negative = sums < 0
    if not negative.any():
        raise FedleakError("no class has a negative last-layer gradient; cannot recover labels")
    impact = sums[negative].sum() / b * (1 + 1 / num_classes)  # one sample's (negative) share
    labels: list[int] = []
    present = torch.nonzero(negative).flatten()
    for c in present[torch.argsort(sums[present], stable=True)][:b].tolist():
        labels.append(c)
        sums[c] -= impact
    while len(labels) < b:
        c = int(torch.argmin(sums))
        labels.append(c)
        sums[c] -= impact
    return torch.tensor(sorted(labels), dtype=torch.long, device=sums.device)


@LABEL_METHODS.register("auto")
def auto(payload: Payload, num_classes: int) -> Tensor:
    """iDLG when the update stands for one image (exact there), else Wainakh et al.'s batch method,
    which also finds repeated labels."""
    method = "idlg" if payload.hyper.observed_images == 1 else "wainakh"
    return LABEL_METHODS.get(method)(payload, num_classes)


def recover_labels(payload: Payload, knowledge: AttackerKnowledge, method: str) -> Tensor:
    """The labels an attack uses: the true ones when the run declares them known, else ``method``."""
    if knowledge.labels is not None:
        return knowledge.labels
    return LABEL_METHODS.get(method)(payload, knowledge.num_classes)
