"""SPEAR (Dimitrov et al., NeurIPS 2024): exact recovery of a whole batch through one fully connected
layer with bias that is followed by a ReLU (the linear algebra: :mod:`fedleak.attacks.spear_factor`).

On the layer the image enters (after a flatten: the model's first layer) SPEAR's inputs are the
client's normalised images, returned as [0, 1] pixels. On a later layer (``layer``: a module or
parameter name, or an index among the model's ``nn.Linear`` layers in forward order) they are that
layer's input features; :func:`~fedleak.attacks.feature_inversion.invert_features` then optimises
images whose features match them (with TV by default). The attacker checks its own result: an input
is *certified* when the zero pattern of its column of ∂L/∂Z equals where ``W x + b ≤ 0``
(``Reconstruction.notes``). Labels (``labels=forward``, the default): the recovered features are fed
through the rest of the network (a pre-hook replaces the layer's input), and with the classifier's
inputs H (B×h) and its weight gradient ``G_c = Σᵢ gᵢ hᵢᵀ`` up to a positive factor, ``G_c H⁺`` gives
each image's ``gᵢ = pᵢ − e_yᵢ`` (cross-entropy), whose one negative entry is the label; a classifier
narrower than the batch falls back to Wainakh et al.'s method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

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
from fedleak.attacks.feature_inversion import invert_features
from fedleak.attacks.labels import LABEL_METHODS, recover_labels
from fedleak.attacks.regularizers import REGULARIZERS
from fedleak.attacks.spear_factor import recover
from fedleak.errors import FedleakError
from fedleak.fl.modifications import exact_dtype
from fedleak.fl.payload import Payload


class SpearConfig(AttackConfig):
    layer: int | str | None = Field(None, description="the fully connected layer to attack: a module or parameter "
                                    "name, or an index among the Linear layers (default: the first Linear with "
                                    "bias followed by a ReLU)")
    samples: int = Field(2_000_000, ge=1, description="most (B−1)-row subsets to sample for candidate directions")
    chunk: int = Field(8192, ge=1, description="row subsets sampled at a time (the search stops once B certified "
                                               "directions are found)")
    sparsity: float = Field(0.3, gt=0, lt=1, description="share of a layer's rows that must be zero in a candidate "
                                                         "column of ∂L/∂Z (rows dead for every image count)")
    zero_tol: float = Field(1e-4, gt=0, lt=1, description="|entry| ≤ zero_tol × the column's rms counts as zero "
                                                          "(raised with the update's noise level)")
    labels: str = Field("forward", description="label recovery when labels are not known: forward (the recovered "
                        "features through the rest of the network and the classifier's gradient) | auto | idlg | "
                        "yin | wainakh")
    iterations: int = Field(400, ge=0, description="feature-inversion steps (a later layer only)")
    lr: float = Field(0.1, gt=0, description="feature-inversion learning rate")
    regularizers: dict[str, float] = Field(default_factory=lambda: {"tv": 1e-3},
                                           description="feature-inversion image regularisers: name → weight")

    _labels = field_validator("labels")(lambda v: v if v == "forward" else LABEL_METHODS.check(v))

    @field_validator("regularizers")
    @classmethod
    def _regularizers(cls, v: dict[str, float]) -> dict[str, float]:
        for name, weight in v.items():
            REGULARIZERS.check(name)
            if weight < 0:
                raise ValueError(f"regulariser weight {name}={weight} must be ≥ 0")
        return v


@dataclass
class Step:
    """One module call in a traced forward pass."""

    name: str
    module: nn.Module
    input: Tensor
    output: Tensor


def trace(model: nn.Module, x: Tensor) -> list[Step]:
    """The leaf modules ``model`` calls on ``x``, in order, with their first input and output."""
    steps: list[Step] = []
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: steps.append(Step(n, mod, args[0], out)))
             for n, m in model.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return steps


def problem(steps: list[Step], k: int, batch: int) -> str | None:
    """Why SPEAR cannot attack traced step ``k`` with a batch of ``batch`` (None: it can)."""
    step = steps[k]
    if not isinstance(step.module, nn.Linear):
        return f"layer {step.name!r} is {type(step.module).__name__}, not a fully connected layer (nn.Linear)"
    if step.module.bias is None:
        return f"layer {step.name!r} has no bias (SPEAR fixes each image's scale from the bias gradient)"
    after = steps[k + 1] if k + 1 < len(steps) else None
    if after is None or not isinstance(after.module, nn.ReLU) or after.input is not step.output:
        what = "nothing" if after is None else type(after.module).__name__
        return f"layer {step.name!r} is followed by {what}, not a ReLU (SPEAR needs ReLU's zeros)"
    m, n = step.module.out_features, step.module.in_features
    if batch > min(m, n):
        return f"a batch of {batch} needs a layer at least that wide; {step.name!r} is {m}×{n}"
    return None


def choose_layer(steps: list[Step], wanted: int | str | None, batch: int) -> int:
    """The traced step SPEAR attacks (see :class:`SpearConfig`'s ``layer``)."""
    linear = [k for k, s in enumerate(steps) if isinstance(s.module, nn.Linear)]
    if wanted is None:
        if not linear:
            raise FedleakError("SPEAR needs a fully connected layer (nn.Linear); the model has none")
        for k in linear:
            if problem(steps, k, batch) is None:
                return k
        raise FedleakError(f"SPEAR finds no layer to attack: {problem(steps, linear[0], batch)}")
    if isinstance(wanted, int):
        if not 0 <= wanted < len(linear):
            raise FedleakError(f"attack.layer={wanted}: the model has {len(linear)} fully connected layers")
        k = linear[wanted]
    else:
        name = wanted.removesuffix(".weight").removesuffix(".bias")
        found = [j for j, s in enumerate(steps) if s.name == name]
        if not found:
            names = ", ".join(repr(steps[j].name) for j in linear) or "none"
            raise FedleakError(f"attack.layer={wanted!r} names no layer of the model; fully connected: {names}")
        k = found[0]
    why = problem(steps, k, batch)
    if why is not None:
        raise FedleakError(f"SPEAR cannot attack it: {why}")
    return k


def forward_labels(model: nn.Module, layer: nn.Module, features: Tensor, payload: Payload,
                   knowledge: AttackerKnowledge) -> Tensor | None:
    """Labels from recovered features (see the module docstring); None when the classifier's
    inputs cannot separate the batch or the update holds no classifier gradient."""
    classifiers = [(n, m) for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and m.out_features == knowledge.num_classes]
    if not classifiers:
        return None
    name, head = classifiers[-1]
    grad = payload.update.get(f"{name}.weight" if name else "weight")
    if grad is None or head.in_features < features.shape[0]:
        return None
    seen: list[Tensor] = []
    swap = layer.register_forward_pre_hook(lambda mod, args: (features.to(args[0].dtype).view_as(args[0]),))
    grab = head.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(torch.zeros(features.shape[0], *knowledge.input_shape, device=features.device))
    finally:
        swap.remove()
        grab.remove()
    h = seen[-1].reshape(features.shape[0], -1).to(features.dtype)
    per_image = grad.to(features.dtype) @ torch.linalg.pinv(h)  # C×B: column i ∝ pᵢ − e_yᵢ
    return per_image.argmin(dim=0)


@register_attack("spear")
class Spear(Attack):
    """SPEAR: a batch read exactly off a fully connected layer with bias and ReLU."""

    Config = SpearConfig
    config: SpearConfig

    def run(self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False) -> Reconstruction:
        start = time.perf_counter()
        cfg = self.config
        batch = payload.hyper.observed_images
        model = target_model(payload, knowledge)
        check_update(payload, dict(model.named_parameters()))
        device = next(model.parameters()).device
        probe = torch.randn(batch, *knowledge.input_shape, generator=torch.Generator().manual_seed(seed)).to(device)
        steps = trace(model, probe)
        k = choose_layer(steps, cfg.layer, batch)
        name, layer = steps[k].name, steps[k].module
        assert isinstance(layer, nn.Linear) and layer.bias is not None
        first = steps[k].input.shape == (batch, probe[0].numel()) and torch.equal(steps[k].input, probe.flatten(1))
        prefix = f"{name}." if name else ""
        gw, gb = payload.update.get(prefix + "weight"), payload.update.get(prefix + "bias")
        if gw is None or gb is None:
            raise FedleakError(f"the update does not hold layer {name!r}'s weight and bias gradients")
        wide = exact_dtype(gw.device)
        found = recover(gw.to(wide), gb.to(wide), layer.weight.detach().to(wide), layer.bias.detach().to(wide),
                        batch, cfg.samples, cfg.chunk, cfg.sparsity, cfg.zero_tol,
                        torch.Generator().manual_seed(seed))
        certified = found.certified.tolist()
        f = found.factors
        notes = [f"spear: layer {name!r} ({'the image itself' if first else 'hidden features'}); "
                 f"{sum(certified)} of {batch} directions certified (sparsity pattern matches W x + b); "
                 f"{found.found} independent directions found from {found.sampled} sampled row subsets"]
        notes.append("spear: certified images (in reconstruction order): "
                     + (", ".join(str(i) for i, ok in enumerate(certified) if ok) or "none"))
        if f.rank != batch:
            notes.append(f"spear: the weight gradient's numerical rank is {f.rank}, not the batch's {batch} "
                         f"(noise, repeated or inactive images, or several local steps); top-{batch} subspace used")
        features = found.inputs
        if knowledge.labels is not None or cfg.labels != "forward":
            labels = recover_labels(payload, knowledge, "auto" if cfg.labels == "forward" else cfg.labels)
        else:
            read = forward_labels(model, layer, features, payload, knowledge)
            if read is None:
                notes.append("spear: the classifier is narrower than the batch; labels by Wainakh et al.")
            labels = recover_labels(payload, knowledge, "auto") if read is None else read
        iterations, loss, trace_rows = 0, f.residual, []
        if first:
            x = features.float().view(batch, *knowledge.input_shape)
        else:
            inv = invert_features(model, layer, features, knowledge.input_shape, knowledge.normalization,
                                  cfg.regularizers, cfg.iterations, cfg.lr, torch.Generator().manual_seed(seed))
            x, iterations, loss = inv.inputs, inv.iterations, inv.final_loss
            trace_rows.append({"feature_loss_start": inv.start_loss, "feature_loss": inv.final_loss})
            notes.append(f"spear: images by feature inversion ({inv.iterations} steps, relative feature loss "
                         f"{inv.start_loss:.3g} → {inv.final_loss:.3g}); the features are exact, the images are not")
        trace_rows.insert(0, {"sampled": float(found.sampled), "directions": float(found.found),
                              "certified": float(sum(certified)), "rank": float(f.rank), "noise": f.noise,
                              "residual": f.residual})
        return Reconstruction(
            images=knowledge.normalization.to_pixels(x), labels=labels.to(torch.long), matching_loss=loss,
            restart_losses=[loss], iterations=iterations, seconds=time.perf_counter() - start, trace=trace_rows,
            notes=notes,
        )
