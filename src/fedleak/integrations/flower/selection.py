"""Which replies an audited round attacks: a stable, seeded choice of clients.

Flower's node ids are drawn anew each time a federation starts, so "the first N node ids" is
another set of clients every run. The audit names clients by the id that stays: the
``partition-id`` a reply reports in its metrics (the partition of the data set the node trains on,
as Flower's simulations number them) when every reply of the round reports one, else the node id.

``clients=N`` is a seeded sample of N of those ids: each id gets a priority, the first 8 bytes of
BLAKE2b over ``(seed, kind of id, id)``, and a round audits the N replies of lowest priority — a
uniform sample without replacement when every client replies (random keys), the same clients in
every round they take part in and in every run with the same seed and partitions. ``clients`` as a
collection names the ids themselves (partition ids where the replies report them, else node ids).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from flwr.app import Message, MetricRecord

PARTITION_KEY = "partition-id"


def priority(seed: int, kind: str, ident: int) -> int:
    """The seeded priority of client ``ident`` (a ``kind`` of id): lower is audited first."""
    digest = hashlib.blake2b(f"{seed}:{kind}:{ident}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def reported_partition(reply: Message, key: str = PARTITION_KEY) -> int | None:
    """The whole number a reply's metrics hold under ``key`` (``None`` where none does)."""
    for record in reply.content.values():
        if isinstance(record, MetricRecord) and key in record:
            value = record[key]
            if (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value == int(value)):
                return int(value)
    return None


@dataclass(frozen=True)
class Selection:
    """``clients``: ``None`` (every reply), a number (a seeded sample of that many) or ids."""

    clients: int | frozenset[int] | None
    seed: int = 0
    key: str = PARTITION_KEY

    @classmethod
    def of(cls, clients: int | Collection[int] | None, seed: int = 0, key: str = PARTITION_KEY) -> Selection:
        chosen = clients if clients is None or isinstance(clients, int) else frozenset(int(c) for c in clients)
        return cls(chosen, seed, key)

    def describe(self) -> dict[str, Any]:
        """The rule, as the audit folder records it."""
        if self.clients is None:
            rule = "every reply"
        elif isinstance(self.clients, int):
            rule = (f"a seeded sample of {self.clients} (seed {self.seed}) of the reported {self.key!r}, "
                    "else of the node ids")
        else:
            rule = f"the ids listed ({self.key!r} where reported, else node ids)"
        listed = sorted(self.clients) if isinstance(self.clients, frozenset) else self.clients
        return {"clients": listed, "seed": self.seed, "partition_key": self.key, "rule": rule}

    def choose(self, replies: list[Message]) -> tuple[list[Message], list[dict[str, Any]]]:
        """The replies to audit, in node-id order, and who they are (``node``, ``partition``)."""
        partitions = {id(r): reported_partition(r, self.key) for r in replies}
        by_partition = bool(replies) and all(p is not None for p in partitions.values())

        def ident(reply: Message) -> int:
            return partitions[id(reply)] if by_partition else reply.metadata.src_node_id  # type: ignore[return-value]

        if self.clients is None:
            chosen = list(replies)
        elif isinstance(self.clients, int):
            kind = self.key if by_partition else "node-id"
            chosen = sorted(replies, key=lambda r: priority(self.seed, kind, ident(r)))[:self.clients]
        else:
            chosen = [r for r in replies if ident(r) in self.clients]
        chosen.sort(key=lambda r: r.metadata.src_node_id)
        return chosen, [{"node": r.metadata.src_node_id, "partition": partitions[id(r)]} for r in chosen]
