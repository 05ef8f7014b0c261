"""Label recovery from the observed update (a lookup table of methods)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload
from fedleak.registry import Registry

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
    if payload.hyper.batch_size != 1:
        raise FedleakError(
            f"iDLG label recovery works for one image, the batch has {payload.hyper.batch_size}; "
            "declare the labels known (knowledge.labels=true)"
        )
    grad = last_layer_weight_grad(payload, num_classes)
    return torch.argmin(grad.sum(dim=1)).view(1)
