"""Aggregation: the server sees the mean of several clients' updates (secure aggregation's effect)."""

from __future__ import annotations

from pydantic import Field

from fedleak.defenses.base import Aggregation, DefenseConfig, register


class AggregateConfig(DefenseConfig):
    clients: int = Field(2, ge=1, description="clients whose updates the server averages")


@register("aggregate")
class Aggregate(Aggregation):
    """Secure aggregation's effect: the server sees only the mean of ``clients`` updates. Stages
    before it in a spec run on every client; stages after it on the mean."""

    Config = AggregateConfig
    config: AggregateConfig

    @property
    def clients(self) -> int:
        return self.config.clients
