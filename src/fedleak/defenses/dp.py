"""DP-SGD (Abadi et al. 2016) with Opacus: per-sample gradients, clipping to C, Gaussian noise σ·C,
and ε from Opacus's RDP accountant.

Opacus computes per-sample gradients with hooks on supported layers; batch norm mixes the samples of
a batch, so a model with batch norm is refused (use ``norm=group``, as Opacus's validator suggests).
Unlike the ROG authors' release, every sample — the first included — is clipped and noised.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fedleak.defenses.base import DefenseConfig, Gradient, GradientDefense, Update, register
from fedleak.errors import ConfigError
from fedleak.parameters import trainable


class DPSGDConfig(DefenseConfig):
    clip: float = Field(1.0, gt=0, description="per-sample L2 clipping norm C")
    noise_multiplier: float = Field(1.1, ge=0, description="noise standard deviation in units of C")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ at which ε is reported")
    sample_rate: float | None = Field(None, gt=0, le=1, description="sampling rate for ε (default: this round's)")
    steps: int | None = Field(None, ge=1, description="steps for ε (default: this round's local steps)")


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε of ``steps`` DP-SGD steps with Poisson sampling rate ``sample_rate`` (Opacus RDP accountant)."""
    from opacus.accountants import RDPAccountant

    if noise_multiplier == 0:
        return float("inf")
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def check_per_sample(model: nn.Module) -> None:
    """Opacus must be able to take per-sample gradients of ``model`` (no batch norm)."""
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        first = str(problems[0]).strip().splitlines()[0]
        raise ConfigError(
            f"dpsgd needs per-sample gradients, which Opacus cannot take for this model ({first}); "
            "use a model without batch norm, e.g. --set model.options.norm=group"
        )


@register("dpsgd")
class DPSGD(GradientDefense):
    """Each gradient the client trains on is Opacus's DP-SGD gradient:
    (Σᵢ gᵢ·min(1, C/‖gᵢ‖) + N(0, σ²C²)) / B."""

    Config = DPSGDConfig
    config: DPSGDConfig

    def gradient(self, generator: torch.Generator) -> Gradient:
        cfg = self.config

        def dp_gradient(model: nn.Module, inputs: Tensor, labels: Tensor) -> Update:
            from opacus import GradSampleModule
            from opacus.optimizers import DPOptimizer

            mode = model.training
            check_per_sample(model.train())  # Opacus records activations in training mode only
            named = trainable(model)
            wrapped = GradSampleModule(model, loss_reduction="mean")
            optimizer = DPOptimizer(  # clipping, noise and the 1/B scaling, exactly as Opacus trains
                torch.optim.SGD([p for _, p in named], lr=0.0),
                noise_multiplier=cfg.noise_multiplier,
                max_grad_norm=cfg.clip,
                expected_batch_size=inputs.shape[0],
                loss_reduction="mean",
                generator=generator,
            )
            try:
                optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # inputs never need gradients here; Opacus's hooks say so
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    F.cross_entropy(wrapped(inputs), labels).backward()
                optimizer.pre_step()
                return {n: cast(Tensor, p.grad).detach().clone() for n, p in named}  # pre_step filled them
            finally:
                optimizer.zero_grad(set_to_none=True)
                wrapped.remove_hooks()
                model.train(mode)

        return dp_gradient

    def summary(self, **round_facts: Any) -> dict[str, Any]:
        """ε (at δ) for the given or this round's sampling rate and number of steps, and the
        assumption it rests on. Opacus's RDP accountant assumes each step's batch is a Poisson sample
        (rate q); the client instead walks its batch in fixed or shuffled chunks (round fact
        ``sampling``), so for q < 1 the ε is the Poisson-sampling estimate, not a guarantee for the
        client's real schedule. With q = 1 every step uses the whole batch: there is no sampling to
        assume, and ε is the accountant's bound for the composition of full-batch Gaussian mechanisms."""
        cfg = self.config
        q = cfg.sample_rate if cfg.sample_rate is not None else round_facts.get("sample_rate", 1.0)
        steps = cfg.steps if cfg.steps is not None else round_facts.get("steps", 1)
        eps = dp_epsilon(cfg.noise_multiplier, q, steps, cfg.delta)
        holds = q == 1
        if cfg.sample_rate is not None:
            sampling = f"sample_rate set in the spec: ε assumes Poisson sampling at q={q:g}"
            holds = False
        elif holds:
            sampling = "the whole batch at every step (no sampling): ε composes full-batch Gaussian mechanisms"
        else:
            sampling = (f"{round_facts.get('sampling', 'fixed')} chunks, not Poisson sampling: ε is the "
                        f"Poisson-sampling estimate for q={q:g}, not a guarantee for this schedule")
        return {"epsilon": eps, "delta": cfg.delta, "sample_rate": q, "steps": steps,
                "accounting": f"RDP (Opacus), Poisson sampling q={q:g}, {steps} steps",
                "sampling": sampling, "assumption_holds": holds}
