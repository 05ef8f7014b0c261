"""Where DAGER reads a transformers model: its blocks, the projections that read a block's input,
and the first block's input for every vocabulary token at a position.

A :class:`Layout` per model family (``config.model_type``), registered in :data:`LAYOUTS`:

- ``gpt2`` (decoder, causal): blocks ``transformer.h``; block l's input to its attention is
  ``ln_1(h)`` and feeds ``attn.c_attn`` (Q, K, V in one ``Conv1D``); the first block's is
  ``ln_1(wte[v] + wpe[p])`` — learned absolute positions, so the token check is per position.
- ``llama`` (decoder, causal; LLaMA, Mistral-style): blocks ``model.layers``; block l's input to its
  attention is ``input_layernorm(h)`` (RMSNorm) and feeds ``self_attn.q_proj``/``k_proj``/``v_proj``;
  positions are rotary, applied *after* the projections, so the first block's input
  ``input_layernorm(embed_tokens[v])`` is the same at every position (``positional=False``: step 1
  runs once) and only the second block's check sees the order.
- ``bert`` (encoder, no causal mask): blocks ``bert.encoder.layer``; block l's input (already
  layer-normed) feeds ``attention.self.query/key/value``; the first block's is
  ``LayerNorm(word[v] + position[p] + token_type[0])`` (single-segment inputs, as the wrappers send).

:func:`layer_inputs` captures what a block's first projection receives on a token batch by a
forward hook, stopping the forward there (later blocks are never run). :func:`next_inputs` does the
same for a causal model's prefixes each grown by one token, running only the new position against
the prefixes' cached keys and values (a transformers ``DynamicCache``): the decoder search's inner
loop, about p times cheaper than :func:`layer_inputs` on the grown sequences at prefix length p.
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
    positional: bool = True  # whether the first block's input depends on the position


LAYOUTS: Registry[Layout] = Registry("DAGER model family")


def _gpt2_first(base: Any, position: int) -> Tensor:
    t = base.transformer
    return cast(Tensor, t.h[0].ln_1(t.wte.weight + t.wpe.weight[position]))


def _bert_first(base: Any, position: int) -> Tensor:
    e = base.bert.embeddings
    return cast(Tensor, e.LayerNorm(e.word_embeddings.weight + e.position_embeddings.weight[position]
                                    + e.token_type_embeddings.weight[0]))


LAYOUTS.register("gpt2")(Layout(True, lambda b: b.transformer.h, lambda blk: [blk.attn.c_attn], _gpt2_first))
def _llama_first(base: Any, position: int) -> Tensor:
    m = base.model
    return cast(Tensor, m.layers[0].input_layernorm(m.embed_tokens.weight))


LAYOUTS.register("llama")(Layout(
    True, lambda b: b.model.layers,
    lambda blk: [blk.self_attn.q_proj, blk.self_attn.k_proj, blk.self_attn.v_proj], _llama_first, positional=False))
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


def _capture(probe: nn.Module) -> tuple[list[Tensor], Any]:
    seen: list[Tensor] = []

    def grab(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        seen.append(args[0].detach())
        raise _Stop

    return seen, probe.register_forward_pre_hook(grab)


def _run(hf: nn.Module, **inputs: Any) -> None:
    try:
        hf(**inputs)
    except _Stop:
        pass


def next_inputs(model: nn.Module, probe: nn.Module, prefixes: Tensor, nxt: Tensor, chunk: int = 256) -> Tensor:
    """What ``probe`` receives at the new last position when each of ``prefixes`` (n×p token ids, no
    padding; a causal fedleak text wrapper ``model``) is followed by each of ``nxt`` (c ids):
    (n·c)×d, prefix-major (the order of ``prefixes.repeat_interleave(c, 0)``)."""
    from transformers import DynamicCache

    n, p = prefixes.shape
    if p == 0:
        return layer_inputs(model, probe, nxt.view(-1, 1), chunk)[:, -1]
    hf = cast(Any, model).hf
    seen, hook = _capture(probe)
    out: list[Tensor] = []
    try:
        with torch.no_grad():
            cache = DynamicCache()
            _run(hf, input_ids=prefixes, position_ids=torch.arange(p, device=prefixes.device).expand(n, p),
                 cache=cache, use_cache=True)
            seen.clear()
            layers: list[tuple[int, Tensor, Tensor]] = []
            for i, layer in enumerate(cache.layers):
                keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
                if isinstance(keys, Tensor) and isinstance(values, Tensor) and keys.numel():
                    layers.append((i, keys, values))
            rows = torch.arange(n, device=prefixes.device).repeat_interleave(len(nxt))
            tokens = nxt.repeat(n)
            for r, t in zip(rows.split(chunk), tokens.split(chunk)):
                grown = DynamicCache()
                for i, keys, values in layers:
                    grown.update(keys[r], values[r], i)
                _run(hf, input_ids=t.view(-1, 1), position_ids=torch.full((len(t), 1), p, device=t.device),
                     cache=grown, use_cache=True)
                out.append(seen.pop()[:, -1])
    finally:
        hook.remove()
    return torch.cat(out) if out else torch.zeros(0, 0)
