"""Which of a model's parameters an FL update holds: the trainable ones, in ``named_parameters`` order."""

from __future__ import annotations

from torch import nn


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every parameter that requires a gradient, in ``named_parameters``
    order: what a client trains and sends, and what the server's update names."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
