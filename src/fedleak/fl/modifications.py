"""The model modifications fedleak's malicious server can make (registered in :mod:`fedleak.fl.server`).

**Imprint** (Fowl et al., "Robbing the Fed", ICLR 2022). An :class:`ImprintBlock` goes in front of the
model, on the normalised input x (flattened to n values): ``x + D·ReLU(W·x + b)``, reshaped back, so
the rest of the model runs unchanged on an almost unchanged input. Every row of W is the same
measurement vector w (the mean brightness, or a random direction) and the biases are −t_i for
thresholds t_0 < t_1 < … set at quantiles of w·x over the server's public images, so row i fires for
an input whose measurement exceeds t_i. Every column of D is the same small vector d, so an image j
sends the same signal s_j = dᵀ∂L/∂(block output) into every row it fires. With the mean loss over N
images, ∂L/∂b_i = (1/N) Σ_{j: w·x_j > t_i} s_j and ∂L/∂W_i = (1/N) Σ_{j: w·x_j > t_i} s_j·x_j: the
difference of adjacent rows keeps only the images whose measurement lies in [t_i, t_{i+1}), and an
image alone in its bin is their ratio, exactly (:mod:`fedleak.attacks.imprint`). The mean over K
clients (secure aggregation) has the same form with N = K·B: bins separate images across clients.

**Fishing** (Wen et al., "Fishing for User Data in Large-Batch FL", ICML 2022), class fishing: the
classifier's rows of every class but the target are set to zero weight and one large bias β, β a
margin above the largest target logit the server sees on public images. Every image then predicts
"not the target" with p_target ≈ 0, so the signal into the rest of the network, Σ_k W_k(p_k − y_k),
is ≈ 0 for every image of another class and ≈ −W_target for an image of the target class: the
update below the classifier is the gradient of the target-class images alone, whatever the batch
size or the number of aggregated clients. (Wen et al.'s further feature fishing, which splits the
target class by a feature threshold, relies on a trained model's confident predictions or on several
rounds with the same batch; fedleak's one-round runs model class fishing.)
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from fedleak.device import device_of, generator
from fedleak.errors import ConfigError
from fedleak.fl.server import Modification, ModificationConfig, ServerContext, register


def exact_dtype(device: torch.device) -> torch.dtype:
    """The dtype the imprint's thresholds and its recovery's divisions use on ``device``: float64
    (exact recovery survives float rounding), float32 on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


class ImprintBlock(nn.Module):
    """``x + D·ReLU(W·flatten(x) + b)``, reshaped to the input's shape (see the module docstring)."""

    def __init__(self, input_shape: tuple[int, ...], bins: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        n = math.prod(self.input_shape)
        self.encoder = nn.Linear(n, bins, device=device, dtype=dtype)
        self.decoder = nn.Linear(bins, n, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.decoder(torch.relu(self.encoder(x.flatten(1)))).view(-1, *self.input_shape)


class Imprinted(nn.Module):
    """The server's model: the imprint block, then the original model (``body``)."""

    def __init__(self, imprint: ImprintBlock, body: nn.Module) -> None:
        super().__init__()
        self.imprint = imprint
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.imprint(x))


def public_split() -> Any:
    return Field("train", description="split of the run's dataset the server holds as public data (clients "
                 "draw from data.split, test by default)")


def public_count(default: int) -> Any:
    return Field(default, ge=2, le=100_000, description="public images the server's statistics are computed on")


class ImprintConfig(ModificationConfig):
    bins: int = Field(128, ge=1, le=65_536, description="rows of the imprint layer (one bin each)")
    measure: Literal["brightness", "random"] = Field("brightness", description="the linear measurement: the "
                                                     "mean normalised pixel, or a random direction")
    fit: Literal["empirical", "gaussian"] = Field("empirical", description="thresholds at the public "
                                                  "measurement's quantiles, or at a fitted Gaussian's")
    gain: float = Field(0.1, gt=0, le=10, description="size of the block's perturbation of the input (norm, in "
                        "normalised units)")
    scale: float = Field(1e-5, gt=0, le=1, description="magnitude of the imprint rows; small rows get large "
                         "gradients, so a FedAvg client's θ₀ − θ₁ stays exact in float32")
    split: Literal["train", "test"] = public_split()
    public: int = public_count(1000)


@register("imprint")
class Imprint(Modification):
    """Robbing the Fed's imprint block in front of the model."""

    Config = ImprintConfig
    config: ImprintConfig
    attack = "imprint"
    requires = {"surrogate_data": "its bin thresholds are quantiles of public images"}

    def modify(self, model: nn.Module, context: ServerContext) -> nn.Module:
        cfg = self.config
        n = math.prod(context.input_shape)
        device = device_of(model)  # the block, its measurement and the public images all live there
        wide = exact_dtype(device)
        if cfg.measure == "brightness":
            w = torch.full((n,), 1.0 / n, dtype=wide, device=device)
        else:
            w = torch.randn(n, generator=generator(context.seed, device), dtype=wide, device=device) / math.sqrt(n)
        measured = context.public_images(cfg.split, cfg.public, device).flatten(1).to(wide) @ w
        thresholds = bin_thresholds(measured, cfg.bins, cfg.fit)
        dtype = next(iter(model.parameters())).dtype
        # Made without initialising (every weight is set below), straight on the model's device.
        block = ImprintBlock(context.input_shape, cfg.bins, device="meta", dtype=dtype).to_empty(device=device)
        # Rows α·w with biases −α·t fire where w·x > t; the decoder's 1/α keeps the block's output
        # perturbation at gain · (mean over rows of ReLU(w·x − t)) along w, whatever α.
        a = cfg.scale
        with torch.no_grad():
            block.encoder.weight.copy_((a * w).expand(cfg.bins, n).to(dtype))
            block.encoder.bias.copy_((-a * thresholds).to(dtype))
            block.decoder.weight.copy_((cfg.gain / (a * cfg.bins) * w / w.norm()).unsqueeze(1)
                                       .expand(n, cfg.bins).to(dtype))
        return Imprinted(block, copy.deepcopy(model))


def bin_thresholds(measured: Tensor, bins: int, fit: str) -> Tensor:
    """``bins`` ascending thresholds splitting the distribution of ``measured`` into bins + 1 equally
    likely parts: its quantiles (``empirical``) or those of a Gaussian with its mean and std; in
    ``measured``'s dtype, on its device."""
    q = torch.arange(1, bins + 1, dtype=measured.dtype, device=measured.device) / (bins + 1)
    if fit == "gaussian":
        # validate_args=False: the check would read values on the host (the std is clamped positive)
        normal = torch.distributions.Normal(measured.mean(), measured.std().clamp_min(1e-12), validate_args=False)
        return normal.icdf(q)
    return torch.quantile(measured, q)


def classifier_of(model: nn.Module, num_classes: int) -> tuple[str, nn.Linear]:
    """The classifier: the last ``nn.Linear`` with one output per class, in module order."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not found:
        raise ConfigError(f"fishing needs a final linear classifier with {num_classes} outputs; the model has none")
    name, layer = found[-1]
    if layer.bias is None:
        raise ConfigError(f"fishing needs a classifier with a bias; {name!r} has none")
    return name, layer


class FishingConfig(ModificationConfig):
    target: int = Field(0, ge=0, description="the class whose images the server isolates")
    margin: float = Field(20.0, gt=0, le=1000, description="logits by which every other class outranks the "
                          "target on public images (p_target ≈ e^-margin)")
    split: Literal["train", "test"] = public_split()
    public: int = public_count(256)


@register("fishing")
class Fishing(Modification):
    """Wen et al.'s class fishing: the classifier isolates one target class."""

    Config = FishingConfig
    config: FishingConfig
    attack = "fishing"
    requires = {"surrogate_data": "its classifier margins are set on public images"}

    def modify(self, model: nn.Module, context: ServerContext) -> nn.Module:
        cfg = self.config
        if cfg.target >= context.num_classes:
            raise ConfigError(f"fishing target class {cfg.target} is out of range ({context.num_classes} classes)")
        fished = copy.deepcopy(model)
        _, layer = classifier_of(fished, context.num_classes)
        device = layer.weight.device
        inputs: list[Tensor] = []
        hook = layer.register_forward_hook(lambda mod, args, out: inputs.append(args[0].detach()))
        try:
            with torch.no_grad():
                fished.eval()(context.public_images(cfg.split, cfg.public, device).to(layer.weight.dtype))
        finally:
            hook.remove()
        with torch.no_grad():  # the largest target logit stays on the device: no host read
            top = (inputs[0] @ layer.weight[cfg.target] + layer.bias[cfg.target]).max()
            others = torch.arange(context.num_classes, device=device) != cfg.target
            layer.weight[others] = 0.0
            layer.bias[others] = top + cfg.margin
        return fished
