"""What the server saw, as audit jobs: the global state it sent and each reply it received, turned
into the :class:`~fedleak.fl.Payload` an attack gets, with everything else the worker needs
(:class:`~fedleak.integrations.flower.worker.AuditJob`). Built on the round thread: cheap, and a
reply the audit cannot read fails here, before anything is handed to a worker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from torch import Tensor

from fedleak.attacks.base import AttackerKnowledge
from fedleak.audit import IMAGES, AuditAttack, Scoring
from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload, PublicHyperparameters
from fedleak.integrations.flower.records import (
    TrainKeys,
    build_payload,
    mean_update,
    num_examples,
    only,
    read_training,
    state_dict,
)
from fedleak.integrations.flower.worker import AuditJob, EvaluationHook, HookTruth

Sent = Mapping[int, tuple[dict[str, Tensor], dict[str, Any]]]
"""node id → (the global state sent to it, its train config), for one round."""


@dataclass(frozen=True)
class Jobs:
    """How one audit reads what its server saw (the settings of its :class:`LeakageAudit`)."""

    knowledge: AttackerKnowledge
    attack: AuditAttack
    keys: TrainKeys
    known: Mapping[str, Any]
    weighted_by_key: str
    max_steps: int | None
    max_examples: int | None
    seed: int = 0
    device: torch.device = torch.device("cpu")
    evaluation: EvaluationHook | None = None
    lpips: tuple[str, ...] = ()
    lpips_weights: str | None = None
    run_config: Mapping[str, Any] | None = None  # the app's run config: settings the train config does not send
    public: Tensor | None = None  # images the server holds, in [0, 1] (the check and the label counts use them)
    public_labels: Tensor | None = None
    scoring: Scoring = IMAGES  # the inputs' modality: how the worker checks, scores and shows them

    def view(self, reply: Message, sent: Sent) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any], int]:
        """(state sent, state returned, train config, number of examples) of one reply."""
        node = reply.metadata.src_node_id
        if node not in sent:
            raise FedleakError(f"node {node} replied but was sent no train message this round")
        global_state, config = sent[node]
        model = self.knowledge.architecture
        returned = state_dict(only(reply.content, ArrayRecord, f"node {node}'s reply"), model, f"node {node}'s reply")
        examples = num_examples(only(reply.content, MetricRecord, f"node {node}'s reply"), self.weighted_by_key,
                                f"node {node}'s reply", self.max_examples)
        return global_state, returned, config, examples

    def _job(self, server_round: int, client: str, payload: Payload, assumptions: list[str], view: str,
             run_id: int, nodes: list[int], sources: Mapping[str, str]) -> AuditJob:
        truth = None if self.evaluation is None else HookTruth(self.evaluation, run_id, server_round, tuple(nodes),
                                                               str(self.device))
        return AuditJob(payload=payload, knowledge=self.knowledge, attack=self.attack, round=server_round,
                        client=client, view=view, seed=self.seed, assumptions=tuple(assumptions), truth=truth,
                        lpips=self.lpips, lpips_weights=self.lpips_weights, sources=tuple(sources.items()),
                        public=self.public, public_labels=self.public_labels, scoring=self.scoring)

    def client(self, server_round: int, reply: Message, sent: Sent) -> AuditJob:
        """The audit of one client's update, as the server received it."""
        node = reply.metadata.src_node_id
        global_state, returned, config, examples = self.view(reply, sent)
        model = self.knowledge.architecture
        reading = read_training(config, examples, model, self.keys, self.known, self.max_steps, self.run_config)
        payload, more = build_payload(global_state, returned, reading.hyper, model)
        return self._job(server_round, str(node), payload, reading.assumptions + more, "clients", reply.metadata.run_id,
                         [node], reading.sources)

    def aggregate(self, server_round: int, valid: list[Message], sent: Sent) -> AuditJob:
        """The audit of the round's example-weighted mean update (what secure aggregation reveals)."""
        if not valid:
            raise FedleakError("no client replied: there is no aggregate to audit")
        views = [self.view(r, sent) for r in valid]
        global_state, _, config, examples = views[0]
        if any(v[3] != examples for v in views) or any(v[2] != config for v in views):
            raise FedleakError("the aggregate is audited when every client trained alike: the same train config and "
                               "the same number of examples")
        if any(v[0] is not global_state for v in views):
            raise FedleakError("the clients were sent different global models: their mean is no FedAvg aggregate")
        model = self.knowledge.architecture
        returned = mean_update([v[1] for v in views], [float(v[3]) for v in views], global_state, model)
        reading = read_training(config, examples, model, self.keys, self.known, self.max_steps, self.run_config)
        hyper, assumptions = reading.hyper, reading.assumptions
        spec = "+".join(filter(None, [hyper.defense, f"aggregate:clients={len(views)}"]))
        hyper = PublicHyperparameters(**{**vars(hyper), "clients": len(views), "defense": spec})
        payload, more = build_payload(global_state, returned, hyper, model)
        nodes = [r.metadata.src_node_id for r in valid]
        return self._job(server_round, "aggregate", payload, assumptions + more, "aggregate", valid[0].metadata.run_id,
                         nodes, reading.sources)
