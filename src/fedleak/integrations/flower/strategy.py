"""``LeakageAudit``: a Flower strategy wrapper that audits what the server receives, round by round.

It follows the pattern of Flower's own differential-privacy wrappers: it holds the user's strategy,
keeps what ``configure_train`` sends (the global arrays and each node's train config), and in
``aggregate_train`` attacks the chosen replies before handing every reply to the inner strategy as
it came — the audit reads the replies and never changes them, so the federation trains exactly as
it would without it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log
from torch import Tensor, nn

from fedleak.attacks.base import AttackerKnowledge
from fedleak.audit import AuditAttack, AuditRecord, audit_attack, audit_update
from fedleak.device import resolve_device
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.payload import ClientData, PublicHyperparameters
from fedleak.integrations.flower.log import AuditLog
from fedleak.integrations.flower.records import (
    MAX_EXAMPLES,
    MAX_LOCAL_STEPS,
    TrainKeys,
    build_payload,
    config_dict,
    mean_update,
    num_examples,
    only,
    public_hyperparameters,
    state_dict,
)
from fedleak.metrics.lpips import lpips_scorers
from fedleak.models.external import check_attackable

EvaluationHook = Callable[[int, int, int], ClientData | None]
"""``(run_id, server_round, node_id) → the batch that node trained on, or None`` — simulations only."""

VIEWS = ("clients", "aggregate")


def weighting_key(strategy: Strategy) -> str:
    """The metric FedAvg-style strategies weight replies by, looked up through wrapper strategies."""
    node: Any = strategy  # a strategy, then the one it wraps, if any
    while node is not None:
        if isinstance(getattr(node, "weighted_by_key", None), str):
            return node.weighted_by_key
        node = getattr(node, "strategy", None)
    return "num-examples"


class LeakageAudit(Strategy):
    """Wrap ``strategy``; attack the updates of the audited rounds and clients; write the results
    to ``out`` (a results folder that ``fedleak runs`` and ``fedleak report`` read).

    The server knows its model: ``model`` (a module or a function building one; its weights are
    replaced by what the server sends), the clients' ``input_shape`` (C, H, W), ``num_classes`` and
    normalisation ``mean``/``std``. ``attack`` is as for :func:`fedleak.audit.audit_attack` (a YAML
    file with ``attack``/``knowledge`` sections, a mapping, or a name; default IG, 300 iterations).

    Which updates: ``rounds`` (round numbers) or ``every`` (rounds 1, 1 + every, …; default every
    round), and ``clients`` — ``None`` (all replies), a number (the first that many by node id) or
    node ids. ``view="aggregate"`` audits what a server under secure aggregation sees instead: only
    the mean of the round's updates (weighted by the clients' example counts, as SecAgg+ computes
    it), whose every client's batch is at risk — the ``aggregate:clients=K`` case.

    The train config the server sent gives the public training settings (:class:`TrainKeys` names
    the entries read); ``known`` adds settings the server knows from elsewhere, under the same
    names. Anything neither holds is assumed (PyTorch's defaults) and listed in the report.
    ``evaluation`` (simulations only) gives the auditor each client's batch for scoring after the
    attack, e.g. a :class:`~fedleak.integrations.flower.SharedBatches`; its data never reaches the
    attack (a hook with a ``discard(run_id, server_round, node_id)`` method is told of the batches
    behind updates it does not audit). An audit that fails is logged and skipped (``strict=True``: raised), so a federation
    never stops for its audit.

    ``device`` (``auto | cpu | cuda | cuda:N | mps``, or a :class:`torch.device`; default ``auto``:
    CUDA when present, else MPS, else the CPU) is where the audit computes: the model, the payloads
    built from the Flower records and the attack live there; a device this machine lacks is a
    :class:`~fedleak.errors.ConfigError` when the strategy is built. The clients train wherever their
    ClientApp puts them.

    ``max_steps`` and ``max_examples`` bound what the audit emulates and attacks: an update whose train
    config asks for more local steps, or whose reply reports more examples, is skipped with a note
    (``None``: no bound).
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        model: nn.Module | Callable[[], nn.Module],
        input_shape: Sequence[int],
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        out: str | Path,
        attack: str | Path | Mapping[str, Any] | None = None,
        rounds: Collection[int] | None = None,
        every: int | None = None,
        clients: int | Collection[int] | None = None,
        view: str = "clients",
        evaluation: EvaluationHook | None = None,
        keys: TrainKeys = TrainKeys(),
        known: Mapping[str, Any] | None = None,
        seed: int = 0,
        lpips: Sequence[str] = ("alex",),
        lpips_weights: str | Path | None = None,
        overwrite: bool = False,
        strict: bool = False,
        device: str | torch.device = "auto",
        max_steps: int | None = MAX_LOCAL_STEPS,
        max_examples: int | None = MAX_EXAMPLES,
    ) -> None:
        super().__init__()
        self.device = resolve_device(device)
        if rounds is not None and every is not None:
            raise ConfigError("give the audited rounds as rounds= or every=, not both")
        if every is not None and every < 1:
            raise ConfigError("every= must be at least 1")
        if view not in VIEWS:
            raise ConfigError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        for name, bound in (("max_steps", max_steps), ("max_examples", max_examples)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 1):
                raise ConfigError(f"{name}= must be a whole number of at least 1 (or None: no bound)")
        self.max_steps, self.max_examples = max_steps, max_examples
        if view == "aggregate" and clients is not None:
            raise ConfigError("view='aggregate' sees the mean of every reply: clients= does not apply")
        self.strategy = strategy
        architecture = model() if callable(model) and not isinstance(model, nn.Module) else copy.deepcopy(model)
        if not isinstance(architecture, nn.Module):
            raise ConfigError(f"model must be a torch module or build one, got {type(architecture).__name__}")
        architecture = architecture.to(self.device)  # the Flower records' tensors follow it (records.state_dict)
        shape = tuple(int(v) for v in input_shape)
        if len(shape) != 3 or len(tuple(mean)) != shape[0] or len(tuple(std)) != shape[0]:
            raise ConfigError("input_shape is (channels, height, width), with one mean and std per channel")
        check_attackable(copy.deepcopy(architecture), shape, num_classes)
        self.knowledge = AttackerKnowledge(architecture=architecture, input_shape=shape,
                                           num_classes=num_classes, mean=tuple(mean), std=tuple(std))
        self.attack: AuditAttack = audit_attack(attack)
        self.rounds = None if rounds is None else {int(r) for r in rounds}
        self.every, self.view, self.evaluation, self.keys, self.seed, self.strict = every, view, evaluation, keys, seed, strict
        self.clients = clients if clients is None or isinstance(clients, int) else {int(c) for c in clients}
        self.known = dict(known or {})
        self.weighted_by_key = weighting_key(strategy)
        self.lpips, hints = lpips_scorers(list(lpips), lpips_weights) if evaluation else ({}, [])
        for hint in hints:
            log(INFO, "fedleak audit: %s", hint)
        selection = {"rounds": sorted(self.rounds) if self.rounds is not None else None, "every": every,
                     "clients": sorted(self.clients) if isinstance(self.clients, set) else self.clients,
                     "known": self.known, "keys": vars(keys), "evaluation": evaluation is not None}
        self.log = AuditLog(out, self.attack, view, type(architecture).__name__, selection, overwrite)
        self._sent: dict[int, dict[int, tuple[dict[str, Tensor], dict[str, Any]]]] = {}
        self.records: list[AuditRecord] = []

    def __repr__(self) -> str:
        return f"LeakageAudit({self.strategy!r})"

    def audits(self, server_round: int) -> bool:
        if self.rounds is not None:
            return server_round in self.rounds
        return (server_round - 1) % (self.every or 1) == 0

    def summary(self) -> None:
        log(INFO, "\t├──> fedleak audit: %s, %s view, results in %s", self.attack.name, self.view, self.log.out)
        self.strategy.summary()

    # --- training: keep what is sent, audit what comes back, aggregate unchanged ---------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self.audits(server_round):
            converted: dict[int, dict[str, Tensor]] = {}
            sent = {}
            for message in messages:
                try:
                    record = only(message.content, ArrayRecord, "a train message")
                    if id(record) not in converted:
                        converted[id(record)] = state_dict(record, self.knowledge.architecture, "the global model")
                    settings = config_dict(next(iter(message.content.config_records.values()), None))
                    sent[message.metadata.dst_node_id] = (converted[id(record)], settings)
                except FedleakError as exc:
                    self._failed(server_round, message.metadata.dst_node_id, exc)
            self._sent[server_round] = sent
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = sorted((r for r in replies if not r.has_error() and r.has_content()),
                       key=lambda r: r.metadata.src_node_id)
        audited: list[Message] = []
        if server_round in self._sent:
            sent = self._sent.pop(server_round)
            if self.view == "aggregate":
                audited = valid
                self._guarded(server_round, "aggregate", lambda: self._audit_aggregate(server_round, valid, sent))
            else:
                audited = self._chosen(valid)
                for reply in audited:
                    node = reply.metadata.src_node_id
                    self._guarded(server_round, str(node), lambda: self._audit_client(server_round, reply, sent))  # noqa: B023  (called now)
            try:
                self.log.write_report()
            except FedleakError as exc:
                self._failed(server_round, "report", exc)
        discard = getattr(self.evaluation, "discard", None)
        if discard is not None:
            for reply in valid:  # batches shared for updates nobody audits
                if reply not in audited:
                    discard(reply.metadata.run_id, server_round, reply.metadata.src_node_id)
        return self.strategy.aggregate_train(server_round, replies)

    def _chosen(self, valid: list[Message]) -> list[Message]:
        if self.clients is None:
            return valid
        if isinstance(self.clients, int):
            return valid[:self.clients]
        return [r for r in valid if r.metadata.src_node_id in self.clients]

    def _guarded(self, server_round: int, client: str, audit: Callable[[], AuditRecord]) -> None:
        try:
            record = audit()
        except Exception as exc:  # an audit never stops the federation (unless strict)
            if self.strict:
                raise
            self._failed(server_round, client, exc)
            return
        self.records.append(record)
        key = self.log.add(record, self.seed)
        log(INFO, "fedleak audit: round %d, client %s: risk %.2f (update fit %.3f), matching loss %.4g, labels %s%s "
            "→ %s", record.round, record.client, record.risk, record.update_fit, record.reconstruction.matching_loss,
            record.metrics()["labels"], f", PSNR {record.evaluation.psnr:.1f} dB" if record.evaluation else "", key)

    def _failed(self, server_round: int, client: Any, exc: BaseException) -> None:
        if self.strict:
            raise exc
        log(WARNING, "fedleak audit: round %d, client %s skipped: %s", server_round, client, exc)

    def _client_view(self, server_round: int, reply: Message,
                     sent: Mapping[int, tuple[dict[str, Tensor], dict[str, Any]]]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any], int]:
        node = reply.metadata.src_node_id
        if node not in sent:
            raise FedleakError(f"node {node} replied but was sent no train message this round")
        global_state, config = sent[node]
        model = self.knowledge.architecture
        returned = state_dict(only(reply.content, ArrayRecord, f"node {node}'s reply"), model, f"node {node}'s reply")
        examples = num_examples(only(reply.content, MetricRecord, f"node {node}'s reply"), self.weighted_by_key,
                                f"node {node}'s reply", self.max_examples)
        return global_state, returned, config, examples

    def _truth(self, run_id: int, server_round: int, nodes: list[int]) -> Callable[[], ClientData | None]:
        """What the evaluation hook gives for ``nodes`` (all of them, one after another), asked only
        when called — after the attack."""
        def fetch() -> ClientData | None:
            if self.evaluation is None:
                return None
            parts = [self.evaluation(run_id, server_round, node) for node in nodes]
            found = [p for p in parts if p is not None]
            if len(found) < len(parts):
                return None
            return ClientData(torch.cat([p.images.to(self.device) for p in found]),
                              torch.cat([p.labels.to(self.device) for p in found]))
        return fetch

    def _audit_client(self, server_round: int, reply: Message,
                      sent: Mapping[int, tuple[dict[str, Tensor], dict[str, Any]]]) -> AuditRecord:
        node = reply.metadata.src_node_id
        global_state, returned, config, examples = self._client_view(server_round, reply, sent)
        model = self.knowledge.architecture
        hyper, assumptions = public_hyperparameters(config, examples, model, self.keys, self.known, self.max_steps)
        payload, more = build_payload(global_state, returned, hyper, model)
        return audit_update(payload, self.knowledge, self.attack.build(), round=server_round, client=str(node),
                            seed=self.seed, assumptions=assumptions + more, view="clients",
                            truth=self._truth(reply.metadata.run_id, server_round, [node]), lpips=self.lpips)

    def _audit_aggregate(self, server_round: int, valid: list[Message],
                         sent: Mapping[int, tuple[dict[str, Tensor], dict[str, Any]]]) -> AuditRecord:
        if not valid:
            raise FedleakError("no client replied: there is no aggregate to audit")
        views = [self._client_view(server_round, r, sent) for r in valid]
        global_state, _, config, examples = views[0]
        if any(v[3] != examples for v in views) or any(v[2] != config for v in views):
            raise FedleakError("the aggregate is audited when every client trained alike: the same train config and "
                               "the same number of examples")
        if any(v[0] is not global_state for v in views):
            raise FedleakError("the clients were sent different global models: their mean is no FedAvg aggregate")
        model = self.knowledge.architecture
        returned = mean_update([v[1] for v in views], [float(v[3]) for v in views], global_state, model)
        hyper, assumptions = public_hyperparameters(config, examples, model, self.keys, self.known, self.max_steps)
        spec = "+".join(filter(None, [hyper.defense, f"aggregate:clients={len(views)}"]))
        hyper = PublicHyperparameters(**{**vars(hyper), "clients": len(views), "defense": spec})
        payload, more = build_payload(global_state, returned, hyper, model)
        nodes = [r.metadata.src_node_id for r in valid]
        return audit_update(payload, self.knowledge, self.attack.build(), round=server_round, client="aggregate",
                            seed=self.seed, assumptions=assumptions + more, view="aggregate",
                            truth=self._truth(valid[0].metadata.run_id, server_round, nodes), lpips=self.lpips)

    # --- evaluation: the inner strategy's, untouched -------------------------------------------------------

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
