"""Trap weights (Boenisch et al., "When the Curious Abandon Honesty: Federated Learning Is Not
Private", EuroS&P 2023): a malicious server's first fully connected layer whose neurons fire rarely.

The server rewrites rows of the model's first layer, a ``nn.Linear`` on the flattened input (n
values). Row i is made on raw pixels p ∈ [0, 1]: n magnitudes drawn uniformly from [0, 1/√n) (the
scale of PyTorch's default init), a random half of them made negative, and those negative weights
multiplied by the factor ``scale`` = s > 1 — the trap: the negative mass outweighs the positive by s,
so the pre-activation v_i·p is negative for most images and the neuron is active for few of them
(or, with ``rate``, each row gets its own s, set on the server's public images so that it fires for
that share of them: the (1 − rate) quantile of the ratio of its positive to its negative part).
The client normalises, x = (p − μ)/σ per channel, so the layer gets weights W_ij = v_ij·σ_c(j) and
bias b_i = Σ_j v_ij·μ_c(j): then W_i·x + b_i = v_i·p exactly, the paper's construction on pixels.

A row active for exactly one image j of the batch has gradients ∂L/∂b_i = (1/N)·δ_ij and
∂L/∂W_i = (1/N)·δ_ij·x_j (δ_ij = ∂ℓ_j/∂z_i, N the images averaged over): their ratio is x_j,
exactly (the analytic recovery of Phong et al.); :mod:`fedleak.attacks.trap` reads it off. How many
images a batch of B gives away depends on how often a row fires: with a firing rate q per row, a row
isolates one image with probability B·q·(1 − q)^(B−1), largest at q = 1/B; s sets q (s near 1:
about half the images, larger s: fewer), and the best s depends on the data and on n.

Supported: a model whose first parametrised layer, in forward order, is a ``nn.Linear`` with a bias
that reads the flattened input unchanged (fedleak's ``mlp``). A convolution first (or any other
layer) is refused: a filter's gradient sums over every position of every image, which no ratio
undoes — Robbing the Fed's imprint block (``--server imprint``) is the construction for those.

Registered under ``trap`` in :mod:`fedleak.fl.server`'s registry when this module is imported (by
:mod:`fedleak.attacks.trap`, which the attack registry loads).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from fedleak.data.normalization import Normalization
from fedleak.device import device_of, generator
from fedleak.errors import ConfigError
from fedleak.fl.server import Modification, ModificationConfig, ServerContext, register


def first_linear(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[str, nn.Linear]:
    """The model's first layer (the first module with parameters of its own that a forward pass
    calls), with its name, when it is a ``nn.Linear`` with a bias reading the flattened input
    unchanged; a :class:`ConfigError` naming what the model starts with otherwise. The probe pass runs
    in eval mode (no batch-norm statistics change) without gradients."""
    parameter = next(iter(model.parameters()), None)
    if parameter is None:
        raise ConfigError("trap weights need a model with parameters; this one has none")
    calls: list[tuple[str, nn.Module, Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: calls.append((name, mod, args[0])))
             for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    probe = torch.randn(2, *input_shape, generator=generator(0, parameter.device), device=parameter.device,
                        dtype=parameter.dtype)
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(probe)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    if not calls:
        raise ConfigError("trap weights need a model whose first layer is fully connected; this one calls no layer")
    name, layer, seen = calls[0]
    if not (isinstance(layer, nn.Linear) and layer.bias is not None and seen.shape == probe.flatten(1).shape
            and torch.equal(seen, probe.flatten(1))):
        raise ConfigError(f"trap weights need a model whose first layer is fully connected on the flattened input "
                          f"(e.g. --model mlp); this model starts with {type(layer).__name__} {name!r}")
    return name, layer


def channel_of_inputs(input_shape: tuple[int, ...]) -> Tensor:
    """The channel of each flattened input value (C×H×W flattened channel-major)."""
    channels = input_shape[0]
    return torch.arange(channels).repeat_interleave(math.prod(input_shape[1:]))


def trap_rows(rows: int, n: int, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``rows`` rows on pixels before the trap's factor: magnitudes uniform on [0, 1/√n), a random
    half (⌊n/2⌋) of each row negated."""
    magnitude = torch.rand(rows, n, generator=gen, device=device, dtype=dtype) / math.sqrt(n)
    order = torch.rand(rows, n, generator=gen, device=device, dtype=dtype).argsort(dim=1)
    negative = torch.zeros(rows, n, dtype=torch.bool, device=device)
    negative.scatter_(1, order[:, : n // 2], True)
    return torch.where(negative, -magnitude, magnitude)


def row_scales(v: Tensor, pixels: Tensor, rate: float) -> Tensor:
    """Per row of ``v`` (the unscaled rows), the factor s ≥ 1 on its negative weights with which it
    fires for a share ``rate`` of ``pixels`` (public images, one per row, in [0, 1]): row i fires
    for an image p where P_i(p) > s·N_i(p) (P, N: its positive and negative parts' products with p),
    so s_i is the (1 − rate) quantile of P_i/N_i over the images."""
    p = pixels.to(v.dtype)
    positive, negative = p @ v.clamp_min(0).T, p @ (-v).clamp_min(0).T  # images × rows
    ratio = positive / negative.clamp_min(torch.finfo(v.dtype).tiny)
    return torch.quantile(ratio, 1 - rate, dim=0).clamp_min(1.0)


class TrapConfig(ModificationConfig):
    scale: float = Field(1.1, gt=1, le=10, description="factor s on each trapped row's negative weights: the "
                         "negative mass outweighs the positive by s (larger: each neuron fires for fewer images)")
    rate: float | None = Field(None, gt=0, lt=1, description="instead of one scale: each row's own s, set so that "
                               "the row fires for this share of the server's public images (at least 1)")
    rows: int | None = Field(None, ge=1, le=1_000_000, description="rows of the first layer trapped, from the "
                             "first (default: every row); the others keep the model's weights")
    split: Literal["train", "test"] = Field("train", description="split of the run's dataset the server holds "
                                           "as public data, for ``rate`` (clients draw from data.split)")
    public: int = Field(256, ge=2, le=100_000, description="public images ``rate`` is set on")


@register("trap")
class Trap(Modification):
    """Boenisch et al.'s trap weights in the model's first fully connected layer."""

    Config = TrapConfig
    config: TrapConfig
    attack = "trap"

    @property
    def requires(self) -> dict[str, str]:  # type: ignore[override]
        """Public images only with ``rate`` (a fixed ``scale`` needs none)."""
        if self.config.rate is None:
            return {}
        return {"surrogate_data": "with rate, each row's factor is set on public images"}

    def modify(self, model: nn.Module, context: ServerContext) -> nn.Module:
        cfg = self.config
        trapped = copy.deepcopy(model)
        _, layer = first_linear(trapped, context.input_shape)
        rows = layer.out_features if cfg.rows is None else cfg.rows
        if rows > layer.out_features:
            raise ConfigError(f"trap rows={rows} exceeds the first layer's {layer.out_features} rows")
        device = device_of(trapped)
        wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        v = trap_rows(rows, layer.in_features, generator(context.seed, device), device, wide)
        if cfg.rate is None:
            v = torch.where(v < 0, cfg.scale * v, v)
        else:
            public = context.public_images(cfg.split, cfg.public, device)
            pixels = Normalization(context.mean, context.std).to_pixels(public).flatten(1)
            v = torch.where(v < 0, row_scales(v, pixels, cfg.rate).unsqueeze(1) * v, v)
        channel = channel_of_inputs(context.input_shape).to(device)
        mean = torch.tensor(context.mean, dtype=wide, device=device)[channel]
        std = torch.tensor(context.std, dtype=wide, device=device)[channel]
        assert layer.bias is not None  # first_linear checked it
        with torch.no_grad():
            layer.weight[:rows] = (v * std).to(layer.weight.dtype)
            layer.bias[:rows] = (v @ mean).to(layer.bias.dtype)
        return trapped
