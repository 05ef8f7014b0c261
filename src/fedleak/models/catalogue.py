"""The catalogue of registered models: their cards by name, listings, a model's config section, and
the card of the architecture a checkpoint file names — queries above the registry and the
checkpoint format (:mod:`fedleak.models.cards` holds the card itself)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import yaml

from fedleak.errors import FedleakError
from fedleak.models.cards import ModelCard
from fedleak.models.checkpoint import METADATA_KEY, read_metadata
from fedleak.models.registry import CARDS, MODELS


def card_of(name: str) -> ModelCard:
    """The card of registered model ``name`` (a one-line error for an unknown name)."""
    return CARDS.get(name)


def card_table() -> list[dict[str, Any]]:
    """Every registered model's card, by name: for listings (``fedleak config``) and the docs."""
    return [{"model": name, **CARDS.get(name).as_dict()} for name in CARDS]


def describe_model(name: str) -> str:
    """Registered model ``name`` as the ``model`` section of a run config (YAML), every builder option
    with its default, and its card as comments: the ``mean``/``std`` lines, uncommented, set the card's
    normalisation; ``data.image_size`` its input size (``fedleak config MODEL``)."""
    card = card_of(name)
    fixed = {"num_classes", "in_channels", "image_size", "width"}
    options = {p.name: p.default for p in inspect.signature(MODELS.get(name)).parameters.values()
               if p.name not in fixed and p.default is not inspect.Parameter.empty}
    lines = [f"# {name}: {card.summary()}",
             "# set these with --set model.KEY=VALUE (options: --set model.options.KEY=VALUE)",
             "model:", f"  name: {name}", "  width: 1.0  # channel multiplier (1: the real model)"]
    if options:
        lines.append("  options:")
        lines += [f"    {yaml.safe_dump({k: v}, sort_keys=False).strip()}" for k, v in options.items()]
    if card.modality == "text":
        return "\n".join([*lines, f"  # its card ({card.dataset}): token ids, at most {card.context_length} per sequence "
                                  "(data.options.seq_len ≤ that; model.options.max_length shortens it)"]) + "\n"
    _, h, w = card.input_size
    side = h if h == w else [h, w]
    lines += [f"  # its card ({card.dataset}): input {card.size_text()}, i.e. data.image_size={side};"
              " uncomment for its normalisation (a run uses the dataset's unless told: docs/models.md)",
              f"  # mean: {list(card.mean)}", f"  # std: {list(card.std)}"]
    return "\n".join(lines) + "\n"


def describe_models() -> str:
    """Every registered model's card, one line each (``fedleak config models``)."""
    rows = card_table()
    width = max(len(r["model"]) for r in rows)
    return "".join(f"{r['model']:<{width}}  {card_of(r['model']).summary()}\n" for r in rows)


def named_card(name: str | None) -> tuple[str, ModelCard] | None:
    """``(name, card)`` when ``name`` is a registered model, else ``None`` (an external factory, or
    no name): for commands that show a card where they know the architecture."""
    return (name, CARDS.get(name)) if name is not None and name in CARDS else None


def file_card(path: str | Path) -> tuple[str, ModelCard] | None:
    """The card of the architecture a fedleak checkpoint's metadata names (``None`` for other files,
    unreadable metadata or an unregistered name). Only a registry lookup: nothing the file names is
    imported or built, and the weights are not read."""
    if Path(path).suffix != ".safetensors":
        return None
    try:
        meta = json.loads(read_metadata(path).get(METADATA_KEY, "null"))
    except (FedleakError, ValueError, RecursionError):
        return None
    name = meta.get("architecture") if isinstance(meta, dict) else None
    return named_card(name) if isinstance(name, str) else None
