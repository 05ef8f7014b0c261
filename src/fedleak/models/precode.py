"""PRECODE (Scheliga et al., WACV 2022): a variational bottleneck before the classifier.

Any model of the zoo gets it with the model option ``precode`` (``model.options.precode={}`` for
the paper's K = 256, β = 10⁻³, or ``{k: …, beta: …}``); :func:`fedleak.models.create_model` builds
the model, then :func:`add_precode` puts the bottleneck in front of its last ``nn.Linear`` (the
classifier). As in the authors' release, for the classifier's input h (B×d)

    (μ, s) = E h  (E: d → 2K, fully connected),  σ = softplus(s),  z = μ + σ·ε,  ε ~ N(0, I),
    the classifier sees D z  (D: K → d, fully connected),

with a fresh ε at every forward pass, in train and eval mode alike, drawn from torch's global
generator — on a client that is its private randomness (``fl.Client`` seeds it from its own seed),
so the attacker does not know it. The training loss adds β·KL(N(μ, σ²) ‖ N(0, I)), in bits as the
release computes it: β·mean_b Σ_k −½(1 + 2 log σ − μ² − σ²)/ln 2; a model exposes the term of its
last forward through :func:`extra_loss`, which the client adds to the cross-entropy.

The classifier keeps its tensor names (``fc.weight``, ``fc.bias``); the bottleneck's are
``fc.bottleneck.encoder.*`` and ``fc.bottleneck.decoder.*``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from fedleak.errors import ConfigError, FedleakError


class PrecodeConfig(BaseModel):
    """The bottleneck's settings (the ``precode`` model option)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    k: int = Field(256, ge=1, description="latent width K")
    beta: float = Field(1e-3, ge=0, description="weight β of the KL term in the training loss")


class VariationalBottleneck(nn.Module):
    """h ↦ D(μ + softplus(s)·ε) with (μ, s) = E h, keeping β·KL of the last forward (module docstring)."""

    def __init__(self, width: int, k: int = 256, beta: float = 1e-3) -> None:
        super().__init__()
        self.k, self.beta = k, beta
        self.encoder = nn.Linear(width, 2 * k)
        self.decoder = nn.Linear(k, width)
        self._loss: Tensor | None = None

    def forward(self, h: Tensor) -> Tensor:
        stats = self.encoder(h)
        mu, std = stats[..., : self.k], F.softplus(stats[..., self.k:])
        try:
            eps = torch.randn_like(std)
        except RuntimeError as exc:  # under torch.func.vmap, whose default refuses random draws
            if "randomness" not in str(exc):
                raise
            raise FedleakError("PRECODE's bottleneck draws fresh noise at every forward pass, which torch.func.vmap "
                               "refuses here (an attack with several restarts, Opacus's per-sample gradients): "
                               "attack it with one restart, and train it without dpsgd") from None
        z = mu + std * eps
        kl = -0.5 * (1 + 2 * std.log() - mu.pow(2) - std.pow(2))
        self._loss = self.beta * kl.sum(-1).mean() / math.log(2)
        return self.decoder(z)

    def take_loss(self) -> Tensor | None:
        """β·KL of the last forward pass, once (then forgotten)."""
        loss, self._loss = self._loss, None
        return loss

    def __getstate__(self) -> dict[str, Any]:
        # A copy never carries the graph of a past forward (a non-leaf tensor cannot be deep-copied).
        return {**super().__getstate__(), "_loss": None}


class PrecodeLinear(nn.Linear):
    """The classifier with the bottleneck in front: ``linear(bottleneck(h))``, its own weight and bias."""

    def __init__(self, classifier: nn.Linear, k: int, beta: float) -> None:
        super().__init__(classifier.in_features, classifier.out_features, bias=classifier.bias is not None,
                         device="meta")  # shapes only: the classifier's own tensors replace them
        self.weight = classifier.weight
        self.bias = classifier.bias
        self.bottleneck = VariationalBottleneck(classifier.in_features, k, beta).to(classifier.weight)

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(self.bottleneck(h), self.weight, self.bias)


def precode_config(value: Any) -> PrecodeConfig:
    """The ``precode`` option as settings: ``true`` or ``{}`` (the paper's), or ``{k, beta}``."""
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"model option precode must be true or a mapping of k and beta, got {value!r}")
    try:
        return PrecodeConfig(**value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"model option precode: {where}: {first['msg']}") from None


def add_precode(model: nn.Module, value: Any) -> nn.Module:
    """``model`` with its last ``nn.Linear`` (the classifier) preceded by a variational bottleneck
    (:class:`PrecodeLinear`, in place); ``value`` is the ``precode`` option (``None`` or ``false``:
    ``model`` as it is). The bottleneck's initial weights come from torch's global generator, after
    the model's."""
    if value is None or value is False:
        return model
    cfg = precode_config(value)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear or not linear[-1]:
        raise ConfigError("model option precode needs a model whose classifier is an nn.Linear submodule")
    parent_name, _, child = linear[-1].rpartition(".")
    parent = model.get_submodule(parent_name)
    classifier = getattr(parent, child)
    setattr(parent, child, PrecodeLinear(classifier, cfg.k, cfg.beta))
    return model


def extra_loss(model: nn.Module) -> Tensor | None:
    """The sum of the terms the model's last forward pass adds to its training loss (PRECODE's
    β·KL), each taken once; ``None`` for a model without any."""
    terms = [t for m in model.modules() if isinstance(m, VariationalBottleneck) if (t := m.take_loss()) is not None]
    return torch.stack(terms).sum() if terms else None


def has_extra_loss(model: nn.Module) -> bool:
    """Whether ``model`` adds a term to its training loss (it holds a PRECODE bottleneck)."""
    return any(isinstance(m, VariationalBottleneck) for m in model.modules())
