"""How a server combines the model buffers clients send (batch-norm running statistics).

FedAvg averages every array of the model (Flower's strategy does the same): floating-point buffers
such as ``running_mean`` / ``running_var`` become the mean over clients weighted by their data
size. Integer counters (``num_batches_tracked``) are not averaged: the global counter advances by the
sum of the clients' increments, i.e. it counts every batch the federation has normalised — what a
single model trained on all those batches would hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor


def aggregate_buffers(start: dict[str, Tensor], clients: Sequence[dict[str, Tensor]],
                      weights: Sequence[float]) -> dict[str, Tensor]:
    """The global buffers after a round: ``start`` (the buffers the server sent) combined with each
    client's buffers after its local training (each holding every name of ``start``), float buffers
    by weighted mean and counters by summed increments."""
    total = float(sum(weights))
    out: dict[str, Tensor] = {}
    for name, b0 in start.items():
        values = [c[name] for c in clients]
        if torch.is_floating_point(b0):
            out[name] = cast(Tensor, sum(w * v for w, v in zip(weights, values))) / total
        else:
            out[name] = b0 + cast(Tensor, sum(v - b0 for v in values))
    return out
