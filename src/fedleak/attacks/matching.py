"""The gradient-matching objective shared by the optimisation attacks, defined per trial so that
restarts can be ``vmap``-ed."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vmap

from pydantic import Field, field_validator

from fedleak.attacks.base import AttackerKnowledge, OptimizationConfig, check_update
from fedleak.attacks.labels import LABEL_METHODS
from fedleak.attacks.layers import LAYER_SELECTIONS, select_layers
from fedleak.attacks.objectives import COSTS, MATCHINGS, auto_matching, check_matching
from fedleak.attacks.regularizers import REGULARIZERS, PriorContext
from fedleak.errors import FedleakError
from fedleak.attacks.simulation import Simulation
from fedleak.fl.payload import Payload
from fedleak.models.batchnorm import batch_norm_layers


class MatchingConfig(OptimizationConfig):
    """Settings of the gradient-matching attacks (IG, ROG) beyond the optimiser's."""

    layers: str = Field("all", description="all | largest-norm | first | last")
    layer_count: int | None = Field(None, ge=1, description="k for largest-norm / first / last")
    labels: str = Field("auto", description="label recovery when labels are not known: auto (iDLG for one "
                        "image, wainakh for a batch) | idlg | yin | wainakh")
    matching: str = Field("plain", description="plain | masked | sign | auto (from the defense spec)")

    _labels = field_validator("labels")(lambda v: LABEL_METHODS.check(v))
    _layers = field_validator("layers")(lambda v: LAYER_SELECTIONS.check(v))
    _matching = field_validator("matching")(check_matching)


class GradientMatching:
    """cost(view(simulated update of the selected layers), observed update) + Σ weight·prior(x).

    ``matching`` picks the view (plain, masked, sign, or auto: chosen from the payload's public
    defense spec)."""

    def __init__(
        self,
        payload: Payload,
        knowledge: AttackerKnowledge,
        cost: str = "cosine",
        layers: str = "all",
        layer_count: int | None = None,
        priors: dict[str, float] | None = None,
        matching: str = "plain",
    ) -> None:
        self.simulation = Simulation(payload, knowledge)
        check_update(payload, dict(self.simulation.model.named_parameters()))
        self.names = select_layers(payload.update, layers, layer_count)
        if matching == "auto":
            matching = auto_matching(payload.hyper.defense)
        self.view, self.targets = MATCHINGS.get(matching)([payload.update[n] for n in self.names])
        self.cost = COSTS.get(cost)
        self.priors = [(REGULARIZERS.get(name), w) for name, w in (priors or {}).items() if w]
        sim = self.simulation
        self.context = PriorContext(sim.model, sim.params, sim.buffers, knowledge.bn_stats,
                                    batch_norm_layers(sim.model))
        if knowledge.bn_stats is not None and len(knowledge.bn_stats) != len(self.context.bn_layers):
            raise FedleakError(
                f"{len(knowledge.bn_stats)} batch-norm statistics given for {len(self.context.bn_layers)} layers"
            )

    def matching_loss(self, x: Tensor, labels: Tensor, batched: bool = False) -> Tensor:
        update = self.simulation.update(x, labels, batched)
        return self.cost(self.view([update[n] for n in self.names]), self.targets)

    def trial(self, x: Tensor, labels: Tensor, batched: bool = False) -> tuple[Tensor, Tensor]:
        """(total loss, matching loss) of one trial's candidate batch ``x``."""
        match = self.matching_loss(x, labels, batched)
        total = match
        for prior, weight in self.priors:
            total = total + weight * prior(x, self.context)
        return total, match.detach()

    def matching_losses(self, x: Tensor, labels: Tensor) -> Tensor:
        """Matching loss of every trial in ``x`` (R×B×C×H×W)."""
        return vmap(lambda xr: self.matching_loss(xr, labels, batched=True).detach())(x)

    def image_gradients(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """∂(total loss)/∂x and the matching loss for every trial of ``x`` (R×B×C×H×W).

        Several trials run as one ``vmap``-ed computation; a single trial takes plain autograd,
        which is faster on CPU."""
        if x.shape[0] == 1:
            xr = x[0].detach().requires_grad_(True)
            total, match = self.trial(xr, labels)
            (gx,) = torch.autograd.grad(total, xr)
            return gx.unsqueeze(0), match.unsqueeze(0)
        return self._batched(x.detach(), labels)

    def _batched(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        step = vmap(grad(lambda xr: self.trial(xr, labels, batched=True), has_aux=True))
        return step(x)
