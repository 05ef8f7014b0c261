"""Which layers' updates an attack matches: all, the k largest by observed norm, first-k, last-k.

A layer is a module's set of parameters (weight and bias together), in parameter order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fedleak.errors import ConfigError
from fedleak.registry import Registry

Selector = Callable[[list[list[str]], dict[str, Tensor], int], list[list[str]]]

LAYER_SELECTIONS: Registry[Selector] = Registry("layer selection")


def group_layers(names: list[str]) -> list[list[str]]:
    """Group parameter names by their module (``stem.0.weight`` and ``stem.0.bias`` together)."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
    return list(groups.values())


@LAYER_SELECTIONS.register("all")
def _all(layers, update, k):
    return layers


@LAYER_SELECTIONS.register("largest-norm")
def _largest(layers, update, k):
    norms = [torch.sqrt(sum(update[n].pow(2).sum() for n in layer)) for layer in layers]
    keep = sorted(sorted(range(len(layers)), key=lambda i: -float(norms[i]))[:k])
    return [layers[i] for i in keep]


@LAYER_SELECTIONS.register("first")
def _first(layers, update, k):
    return layers[:k]


@LAYER_SELECTIONS.register("last")
def _last(layers, update, k):
    return layers[-k:]


def select_layers(update: dict[str, Tensor], how: str, count: int | None) -> list[str]:
    """Parameter names whose update is matched, chosen from the observed update only."""
    layers = group_layers(list(update))
    if how != "all":
        if count is None or not 1 <= count <= len(layers):
            raise ConfigError(f"layer selection {how!r} needs 1 ≤ layer count ≤ {len(layers)}, got {count}")
    return [n for layer in LAYER_SELECTIONS.get(how)(layers, update, count or len(layers)) for n in layer]
