"""``LeakageAudit``: a Flower strategy wrapper that audits what the server receives, round by round.

It follows the pattern of Flower's own differential-privacy wrappers: it holds the user's strategy,
keeps what ``configure_train`` sends (the global arrays and each node's train config), and in
``aggregate_train`` hands the chosen replies' payloads to an audit worker
(:mod:`~fedleak.integrations.flower.worker`) before handing every reply to the inner strategy as it
came — the audit reads the replies and never changes them, so the federation trains exactly as it
would without it, and the round does not wait for the attacks. Finished audits are collected at
each round; ``start`` waits for the rest when the last round is done and writes the report.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log
from torch import Tensor, nn

from fedleak.audit import AuditAttack, AuditRecord, audit_attack
from fedleak.device import resolve_device
from fedleak.errors import ConfigError, FedleakError
from fedleak.integrations.flower import text as _text  # noqa: F401  (registers the text audit's inputs)
from fedleak.integrations.flower.inputs import INPUTS, Declared, modality_of_model
from fedleak.integrations.flower.jobs import Jobs
from fedleak.integrations.flower.log import AuditLog
from fedleak.integrations.flower.records import MAX_EXAMPLES, MAX_LOCAL_STEPS, TrainKeys, config_dict, only, state_dict
from fedleak.integrations.flower.selection import PARTITION_KEY, Selection
from fedleak.integrations.flower.worker import AuditJob, EvaluationHook, Worker, make_worker, scorers
from fedleak.studies.flower_audit import histogram_text, label_histogram, verdict_text

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
    normalisation ``mean``/``std``. A text model (a fedleak :class:`~fedleak.models.text.TextModel`:
    fedleak's, or the user's transformers model wrapped in ``CausalLM``/``SequenceClassifier``) takes
    token ids instead: ``input_shape`` is ``(T,)`` (default its context), ``num_classes`` its
    vocabulary (a classifier's classes), no ``mean``/``std``; ``tokenizer`` (the tokenizer, or the
    :class:`~fedleak.data.text.TextDataset` whose PII spans score shared batches) decodes what the
    audit recovered (:mod:`~fedleak.integrations.flower.text`; the modality's entry in
    :data:`~fedleak.integrations.flower.inputs.INPUTS` builds the knowledge and the scoring). ``attack`` is as for :func:`fedleak.audit.audit_attack` (a YAML
    file with ``attack``/``knowledge`` sections, a mapping, or a name; default IG at its stated minimum, 1000 iterations).

    Which updates: ``rounds`` (round numbers) or ``every`` (rounds 1, 1 + every, …; default every
    round), and ``clients`` — ``None`` (all replies), a number (a seeded sample of that many clients,
    the same every round and every run: by the ``partition-id`` the replies report in their metrics
    where they do, else by node id; see :mod:`~fedleak.integrations.flower.selection`) or those ids.
    Which clients each round audited is recorded in the folder's ``study.json`` (``selection.chosen``).
    ``view="aggregate"`` audits what a server under secure aggregation sees instead: only
    the mean of the round's updates (weighted by the clients' example counts, as SecAgg+ computes
    it), whose every client's batch is at risk — the ``aggregate:clients=K`` case.

    The train config the server sent gives the public training settings (:class:`TrainKeys` names
    the entries read); ``known`` adds settings the server knows from elsewhere, under the same
    names; ``run_config`` (the ServerApp's ``context.run_config``) gives what the app configured only
    there, read under the same names after both. Anything none holds is assumed (PyTorch's defaults)
    and listed in the report; each setting's source (``train config 'lr'``, ``known``, ``run config``,
    ``reply``, ``assumed``) is kept in its record. ``public``: images the server holds (N×C×H×W in
    [0, 1], optionally with their labels as ``(images, labels)``; token ids N×T for text) — the
    mis-specification check and the label-count recovery simulate the client on them (default:
    smooth random images; uniform random tokens).
    ``evaluation`` (simulations only) gives the auditor each client's batch for scoring after the
    attack, e.g. a :class:`~fedleak.integrations.flower.SharedBatches`; its data never reaches the
    attack (a hook with a ``discard(run_id, server_round, node_id)`` method is told of the batches
    behind updates it does not audit).

    Where the attacks run: ``workers`` — a number of spawned local processes (default 1), ``"ray"``
    (Ray tasks reserving ``worker_resources``), 0 (on the round thread, as before workers) or a
    :class:`~fedleak.integrations.flower.worker.Worker` the caller made (several audits may share
    one; the caller closes it). The round hands each audit to the worker and goes on; finished
    audits are stored as each round starts and ends, and :meth:`start` waits for the rest after the last round (at most ``wait_s``
    seconds, if given) and writes the report — :meth:`finish` does so for a federation driven
    without ``start``. ``worker_threads`` sets the torch threads of each process worker. With a
    worker, the model and ``evaluation`` must pickle (a class importable by its module path). An
    audit that fails is logged, recorded (``fedleak runs list DIR --failed``) and skipped
    (``strict=True``: raised when collected), so a federation never stops for its audit.

    ``out`` is resolved to an absolute path here, against this process's working folder (a
    ServerApp's is its SuperLink's: give an absolute path to choose). A folder that holds anything
    already never stops the federation: an earlier audit is replaced with ``overwrite``, and
    otherwise the audit writes into a fresh numbered sub-folder ``out/audit-2`` (``audit-3``, …),
    said in the log; :attr:`out` is where it writes.

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
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        out: str | Path,
        tokenizer: Any = None,
        attack: str | Path | Mapping[str, Any] | None = None,
        rounds: Collection[int] | None = None,
        every: int | None = None,
        clients: int | Collection[int] | None = None,
        view: str = "clients",
        evaluation: EvaluationHook | None = None,
        keys: TrainKeys = TrainKeys(),
        known: Mapping[str, Any] | None = None,
        run_config: Mapping[str, Any] | None = None,
        public: Tensor | tuple[Tensor, Tensor] | None = None,
        seed: int = 0,
        lpips: Sequence[str] = ("alex",),
        lpips_weights: str | Path | None = None,
        overwrite: bool = False,
        strict: bool = False,
        device: str | torch.device = "auto",
        max_steps: int | None = MAX_LOCAL_STEPS,
        max_examples: int | None = MAX_EXAMPLES,
        workers: int | str | Worker = 1,
        worker_threads: int | None = None,
        worker_resources: Mapping[str, float] | None = None,
        wait_s: float | None = None,
        partition_key: str = PARTITION_KEY,
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
        if isinstance(clients, int) and (isinstance(clients, bool) or clients < 1):
            raise ConfigError("clients= must be a number of at least 1, client ids, or None (every reply)")
        if wait_s is not None and not wait_s >= 0:
            raise ConfigError("wait_s= must be a number of seconds ≥ 0 (or None: wait for every audit)")
        self.max_steps, self.max_examples, self.wait_s = max_steps, max_examples, wait_s
        if view == "aggregate" and clients is not None:
            raise ConfigError("view='aggregate' sees the mean of every reply: clients= does not apply")
        self.strategy = strategy
        architecture = model() if callable(model) and not isinstance(model, nn.Module) else copy.deepcopy(model)
        if not isinstance(architecture, nn.Module):
            raise ConfigError(f"model must be a torch module or build one, got {type(architecture).__name__}")
        architecture = architecture.to(self.device)  # the Flower records' tensors follow it (records.state_dict)
        inputs = INPUTS.get(modality_of_model(architecture))  # the model's modality: images, or token ids
        declared = Declared(input_shape, num_classes, mean, std, tokenizer)
        self.knowledge = inputs.knowledge(architecture, declared)
        self.attack: AuditAttack = audit_attack(attack)
        self.rounds = None if rounds is None else {int(r) for r in rounds}
        self.every, self.view, self.evaluation, self.keys, self.seed, self.strict = every, view, evaluation, keys, seed, strict
        self.selection = Selection.of(clients, seed, partition_key)
        self.clients = self.selection.clients
        self.known = dict(known or {})
        self.weighted_by_key = weighting_key(strategy)
        self.lpips = tuple(lpips) if evaluation and inputs.lpips else ()
        self.lpips_weights = None if lpips_weights is None else str(Path(lpips_weights).expanduser().resolve())
        for hint in scorers(self.lpips, self.lpips_weights)[1] if self.lpips else ():
            log(INFO, "fedleak audit: %s", hint)
        self.worker = make_worker(workers, worker_threads, worker_resources)
        self._owns_worker = not isinstance(workers, Worker)  # one the caller made is the caller's to close
        if self.worker.pickles:  # what each job carries must reach the worker: refused now, not every round
            for what, value in (("model", self.knowledge), ("evaluation", evaluation)):
                try:
                    pickle.dumps(value)
                except Exception as exc:  # any pickling failure: a lambda, a local class, a lock
                    raise ConfigError(f"{what}= must pickle to reach the audit's {self.worker.name} worker ({exc}); "
                                      "use a class or function importable by its module path, or workers=0 (audit "
                                      "in this process)") from None
        target = Path(out).expanduser().resolve()
        selection = {"rounds": sorted(self.rounds) if self.rounds is not None else None, "every": every,
                     **self.selection.describe(), "known": self.known, "keys": vars(keys),
                     "evaluation": evaluation is not None, "out": str(target)}
        self.jobs = Jobs(self.knowledge, self.attack, keys, self.known, self.weighted_by_key, max_steps, max_examples,
                         seed, self.device, evaluation, self.lpips, self.lpips_weights, dict(run_config or {}),
                         *inputs.public(public, self.knowledge), inputs.scoring(architecture, declared))
        self.log = AuditLog(target, self.attack, view, type(architecture).__name__, selection, overwrite)
        if self.log.out != target:
            log(WARNING, "fedleak audit: %s already holds files; this audit writes into %s", target, self.log.out)
        self._sent: dict[int, dict[int, tuple[dict[str, Tensor], dict[str, Any]]]] = {}
        self._pending: list[tuple[Future[AuditRecord], int, str]] = []
        self.records: list[AuditRecord] = []

    @property
    def out(self) -> Path:
        """The folder this audit writes (absolute; a numbered sub-folder of ``out`` when that held files)."""
        return self.log.out

    def __repr__(self) -> str:
        return f"LeakageAudit({self.strategy!r})"

    def audits(self, server_round: int) -> bool:
        if self.rounds is not None:
            return server_round in self.rounds
        return (server_round - 1) % (self.every or 1) == 0

    def summary(self) -> None:
        log(INFO, "\t├──> fedleak audit: %s, %s view, on %s, results in %s", self.attack.name, self.view,
            self.worker.describe(), self.log.out)
        self.strategy.summary()

    def start(self, *args: Any, **kwargs: Any) -> Result:
        """Flower's :meth:`Strategy.start`, then :meth:`finish`: the audits still running are waited
        for and the report written (a federation that raised is not kept waiting for its audits)."""
        try:
            result = super().start(*args, **kwargs)
        except BaseException:
            try:
                self.finish(wait=False)
            except Exception as exc:  # strict: the federation's own error is the one to see
                log(WARNING, "fedleak audit: %s", exc)
            raise
        self.finish()
        return result

    def finish(self, wait: bool = True) -> None:
        """Collect every audit (``wait``: waiting for those still running, at most ``wait_s`` seconds;
        one that does not finish is recorded as failed), write the report and release the worker."""
        self._collect(wait=wait, timeout=self.wait_s)
        left, self._pending = self._pending, []
        for future, server_round, client in left:
            future.cancel()
            waited = f" (waited {self.wait_s:g} s)" if wait and self.wait_s is not None else ""
            self._failed(server_round, client, FedleakError(f"the audit was still running when the federation ended{waited}"))
        if self._owns_worker:
            self.worker.close(wait=False)
        try:
            report = self.log.write_report()
            log(INFO, "fedleak audit: %d audited update(s), report at %s", len(self.records), report)
        except Exception as exc:  # the records are stored: `fedleak report DIR` writes it later
            self._failed(0, "report", exc, record=False)

    # --- training: keep what is sent, hand what comes back to the worker, aggregate unchanged ----------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._collect()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self.audits(server_round):
            self._guarded(server_round, "worker", self.worker.start)  # it gets ready while the clients train
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
                    self._failed(server_round, message.metadata.dst_node_id, exc, record=False)
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
                self._submit(server_round, "aggregate", lambda: self.jobs.aggregate(server_round, valid, sent))
            else:
                audited, chosen = self.selection.choose(valid)
                self._guarded(server_round, "selection", lambda: self.log.chose(server_round, chosen))
                for reply in audited:
                    node = reply.metadata.src_node_id
                    self._submit(server_round, str(node), lambda: self.jobs.client(server_round, reply, sent))  # noqa: B023  (called now)
        discard = getattr(self.evaluation, "discard", None)
        if discard is not None:
            for reply in valid:  # batches shared for updates nobody audits
                if reply not in audited:
                    discard(reply.metadata.run_id, server_round, reply.metadata.src_node_id)
        self._collect()
        return self.strategy.aggregate_train(server_round, replies)

    # --- the audits: submitted, collected, stored --------------------------------------------------------------

    def _submit(self, server_round: int, client: str, job: Callable[[], AuditJob]) -> None:
        """Build the job (on this thread: cheap, and what fails here fails now) and hand it to the worker."""
        try:
            future = self.worker.submit(job())
            self.log.started(server_round, client)
        except Exception as exc:  # an audit never stops the federation (unless strict)
            self._failed(server_round, client, exc)
            return
        self._pending.append((future, server_round, client))

    def _collect(self, wait: bool = False, timeout: float | None = None) -> None:
        """Store the audits that have finished (``wait``: once every one has, or ``timeout`` passed)."""
        if wait and self._pending:
            log(INFO, "fedleak audit: waiting for %d audit(s) still running", sum(not f.done() for f, _, _ in self._pending))
            wait_for([f for f, _, _ in self._pending], timeout=timeout)
        done = [p for p in self._pending if p[0].done() and not p[0].cancelled()]
        self._pending = [p for p in self._pending if p not in done]
        for future, server_round, client in done:
            try:
                record = future.result()
            except Exception as exc:  # the attack's error, or a worker that died
                self._failed(server_round, client, exc)
                continue
            self._guarded(server_round, client, lambda: self._store(record))  # noqa: B023  (called now)

    def _store(self, record: AuditRecord) -> None:
        self.records.append(record)
        key = self.log.add(record, self.seed)
        labels = histogram_text(label_histogram(record.reconstruction.labels.flatten().tolist()))
        log(INFO, "fedleak audit: round %d, client %s: risk %.2f (update fit %.3f), verdict %s, matching loss %.4g, "
            "labels (class: count) %s%s → %s", record.round, record.client, record.risk, record.update_fit,
            verdict_text(getattr(record, "verdict", None)), record.reconstruction.matching_loss, labels,
            record.headline, key)

    def _guarded(self, server_round: int, client: str, step: Callable[[], Any]) -> None:
        try:
            step()
        except Exception as exc:  # writing the folder failed: the federation goes on
            self._failed(server_round, client, exc, record=False)

    def _failed(self, server_round: int, client: Any, exc: BaseException, record: bool = True) -> None:
        if self.strict:
            raise exc
        log(WARNING, "fedleak audit: round %d, client %s skipped: %s", server_round, client, exc)
        if record:
            try:
                self.log.failed(server_round, str(client), f"{type(exc).__name__}: {exc}"[:2000])
            except Exception as again:  # the folder cannot even take the failure: the log line says it
                log(WARNING, "fedleak audit: could not record that failure: %s", again)

    # --- evaluation: the inner strategy's, untouched -------------------------------------------------------

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
