"""Where DAGER reads a transformers model: its blocks, the projections that read a block's input,
and the first block's input for every vocabulary token at a position.

A :class:`Layout` per model family (``config.model_type``), registered in :data:`LAYOUTS`:

- ``gpt2`` (decoder, causal): blocks ``transformer.h``; block l's input to its attention is
  ``ln_1(h)`` and feeds ``attn.c_attn`` (Q, K, V in one ``Conv1D``); the first block's is
  ``ln_1(wte[v] + wpe[p])`` — learned absolute positions, so the token check is per position.
- ``bert`` (encoder, no causal mask): blocks ``bert.encoder.layer``; block l's input (already
  layer-normed) feeds ``attention.self.query/key/value``; the first block's is
  ``LayerNorm(word[v] + position[p] + token_type[0])`` (single-segment inputs, as the wrappers send).

:func:`layer_inputs` captures what a block's first projection receives on a token batch by a
forward hook, stopping the forward there (later blocks are never run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from fedleak.errors import FedleakError
from fedleak.registry import Registry


@dataclass(frozen=True)
class Layout:
    """A family's access paths (functions of the transformers base model) and whether it is causal."""

    causal: bool
    blocks: Callable[[Any], nn.ModuleList]
    probes: Callable[[Any], list[nn.Module]]
    first_inputs: Callable[[Any, int], Tensor]


LAYOUTS: Registry[Layout] = Registry("DAGER model family")


def _gpt2_first(base: Any, position: int) -> Tensor:
    t = base.transformer
    return cast(Tensor, t.h[0].ln_1(t.wte.weight + t.wpe.weight[position]))


def _bert_first(base: Any, position: int) -> Tensor:
    e = base.bert.embeddings
    return cast(Tensor, e.LayerNorm(e.word_embeddings.weight + e.position_embeddings.weight[position]
                                    + e.token_type_embeddings.weight[0]))


LAYOUTS.register("gpt2")(Layout(True, lambda b: b.transformer.h, lambda blk: [blk.attn.c_attn], _gpt2_first))
LAYOUTS.register("bert")(Layout(
    False, lambda b: b.bert.encoder.layer,
    lambda blk: [blk.attention.self.query, blk.attention.self.key, blk.attention.self.value], _bert_first))


def base_model(hf: nn.Module) -> Any:
    """The transformers model inside ``hf`` (peft's wrapper unwrapped)."""
    get = getattr(hf, "get_base_model", None)
    return get() if callable(get) else hf


def layout_of(hf: nn.Module) -> Layout:
    """The layout of ``hf``'s family; one line when DAGER knows none."""
    kind = str(getattr(getattr(base_model(hf), "config", None), "model_type", None))
    if kind not in LAYOUTS:
        raise FedleakError(f"DAGER knows no layout for model type {kind!r} (known: {', '.join(LAYOUTS)})")
    return LAYOUTS.get(kind)


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass once the wanted input is seen."""


def layer_inputs(model: nn.Module, probe: nn.Module, tokens: Tensor, chunk: int = 256) -> Tensor:
    """What ``probe`` receives (B×T×d) when ``model`` (a fedleak text wrapper) runs on ``tokens``,
    ``chunk`` sequences at a time."""
    seen: list[Tensor] = []

    def grab(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        seen.append(args[0].detach())
        raise _Stop

    hook = probe.register_forward_pre_hook(grab)
    out: list[Tensor] = []
    try:
        with torch.no_grad():
            for part in tokens.split(chunk):
                try:
                    model(part)
                except _Stop:
                    pass
                out.append(seen.pop())
    finally:
        hook.remove()
    return torch.cat(out)
