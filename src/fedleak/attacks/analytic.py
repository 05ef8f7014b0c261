"""Analytic recovery through a fully connected first layer with bias (Phong et al. 2017).

For one input x and a first layer z = Wx + b, ∂L/∂W_i = (∂L/∂z_i)·xᵀ and ∂L/∂b_i = ∂L/∂z_i, so any
row with ∂L/∂b_i ≠ 0 gives x = ∂L/∂W_i / ∂L/∂b_i exactly. fedleak uses the row with the largest
|∂L/∂b_i| (the best conditioned). It is an upper bound on leakage and a correctness check of the
pipeline. For FedAvg with one local step the ratio is still exact; with more it is approximate.
"""

from __future__ import annotations

import time

import torch
from pydantic import Field, field_validator
from torch import nn

from fedleak.attacks.base import Attack, AttackConfig, AttackerKnowledge, Reconstruction, register_attack, target_model
from fedleak.attacks.labels import LABEL_METHODS, recover_labels
from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload


class AnalyticConfig(AttackConfig):
    labels: str = Field("idlg", description="label recovery when labels are not known")

    _labels = field_validator("labels")(lambda v: LABEL_METHODS.check(v))


def first_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The first module that holds parameters, in registration order."""
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            return name, module
    raise FedleakError("the model has no parameters")


@register_attack("analytic")
class Analytic(Attack[AnalyticConfig]):
    """Phong et al.'s analytic recovery of one image from a first linear layer with bias."""

    def run(self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False) -> Reconstruction:
        start = time.perf_counter()
        if payload.hyper.observed_images != 1:
            raise FedleakError(f"analytic recovery needs a batch of one image, got {payload.hyper.observed_images}")
        name, layer = first_layer(target_model(payload, knowledge))
        if not isinstance(layer, nn.Linear) or layer.bias is None:
            raise FedleakError(
                f"analytic recovery needs a fully connected first layer with bias; the first layer "
                f"{name!r} is {type(layer).__name__}"
            )
        prefix = f"{name}." if name else ""
        gw, gb = payload.update.get(prefix + "weight"), payload.update.get(prefix + "bias")
        if gw is None or gb is None:
            raise FedleakError(f"the update does not hold the first layer's weight and bias ({name!r})")
        row = int(torch.argmax(gb.abs()))
        if gb[row].abs() == 0:
            raise FedleakError("every bias gradient of the first layer is zero; nothing to divide by")
        x = (gw[row] / gb[row]).view(1, *knowledge.input_shape)
        labels = recover_labels(payload, knowledge, self.config.labels)
        return Reconstruction(
            images=knowledge.normalization.to_pixels(x),
            labels=labels,
            matching_loss=0.0,
            restart_losses=[0.0],
            iterations=0,
            seconds=time.perf_counter() - start,
        )
