"""LoRA adapters (Hu et al. 2022) on a transformers model, through ``peft``: the client's update is the adapters'.

Each targeted linear map W (d_out×d_in) becomes W x + (α/r)·B A x with A (r×d_in) and B (d_out×r)
trainable and W frozen; peft initialises A Kaiming-uniform and B = 0, so the adapted model starts
equal to the base one. :func:`add_lora` freezes every base parameter, so
:func:`fedleak.parameters.trainable` — and hence a client's update — holds only the ``lora_A`` /
``lora_B`` tensors. GPT-2's ``Conv1D`` layers store W transposed; ``fan_in_fan_out`` is set for them.

The ``lora`` option is a mapping ``{r: 8, alpha: 16, targets: [c_attn], dropout: 0.0}`` or the same
as a spec string ``"r=8,alpha=16,targets=c_attn+c_proj"`` (targets joined with ``+``); ``targets``
unset means peft's default for the architecture (GPT-2: ``c_attn``; BERT: ``query``, ``value``).
``peft`` (the ``text`` extra) is imported when adapters are added, not with this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from fedleak.errors import ConfigError
from fedleak.specs import parse_settings

LoraSpec = Mapping[str, Any] | str | None


class LoraSettings(BaseModel):
    """The adapters: rank ``r``, scale ``alpha`` (the update is scaled by α/r), the names of the
    modules adapted (``targets``; None: peft's default for the architecture) and LoRA ``dropout``
    on the adapters' input (0: deterministic updates)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(8, ge=1, description="adapter rank")
    alpha: int = Field(16, ge=1, description="scale numerator: the adapter output is multiplied by alpha / r")
    targets: tuple[str, ...] | None = Field(None, description="module names to adapt (None: peft's default)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")

    @field_validator("targets", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [t.strip() for t in value.split("+") if t.strip()]
        if value is not None and not value:
            raise ValueError("name at least one target module")
        return value


def lora_settings(spec: LoraSpec) -> LoraSettings | None:
    """The settings a ``lora`` option gives (``None``, ``""``, ``"none"``, ``False``: no adapters);
    one-line :class:`ConfigError` on a bad value."""
    if spec is None or spec is False or (isinstance(spec, str) and spec.strip() in ("", "none")):
        return None
    raw: Any = parse_settings("lora", "lora", spec) if isinstance(spec, str) else spec
    if not isinstance(raw, Mapping):
        raise ConfigError(f"lora must be a mapping {{r, alpha, targets, dropout}} or a spec string, got {raw!r}")
    try:
        return LoraSettings.model_validate(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"lora has no setting {key!r} (settings: {', '.join(LoraSettings.model_fields)})") from None
        raise ConfigError(f"lora: {key}: {err['msg']} (got {err.get('input')!r})") from None


def add_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """``model`` wrapped in LoRA adapters as ``spec`` says (peft's ``get_peft_model``; only the
    adapters trainable), or ``model`` itself when ``spec`` asks for none."""
    settings = lora_settings(spec)
    if settings is None:
        return model
    try:
        import peft  # optional: the text extra, imported only when adapters are added
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS
        from transformers.pytorch_utils import Conv1D  # optional: the text extra
    except ImportError as exc:
        raise ConfigError(f"lora needs the text extra (pip install 'fedleak[text]'): {exc}") from None
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = list(settings.targets) if settings.targets else DEFAULT_TARGETS.get(model_type or "")
    if not targets:
        raise ConfigError(f"lora: no default target modules for {model_type!r}; set lora targets")
    adapted = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in targets]
    if not adapted:
        raise ConfigError(f"lora: no module named {', '.join(targets)} in the model")
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=list(targets), bias="none",
                             fan_in_fan_out=any(isinstance(m, Conv1D) for m in adapted))
    return peft.get_peft_model(model, config)
