"""Aggregation: the server sees the mean of several clients' updates (secure aggregation's effect)."""

from __future__ import annotations

import torch
from pydantic import Field

from fedleak.defenses.base import Defense, DefenseConfig, Update, register


class AggregateConfig(DefenseConfig):
    clients: int = Field(2, ge=1, description="clients whose updates the server averages")


@register("aggregate")
class Aggregate(Defense):
    """Secure aggregation's effect: the server sees only the mean of ``clients`` updates. Stages
    before it in a spec run on every client; stages after it on the mean."""

    Config = AggregateConfig
    config: AggregateConfig
    stage = "aggregate"

    def apply(self, update: Update, generator: torch.Generator) -> Update:
        return update
