"""``leakage_gate``: a client mod that checks its own update before it leaves.

After the ClientApp trained, the gate rebuilds what the server will see — the global arrays and
train config it received, the arrays it is about to send — runs a short attack on it within a time
budget, and scores the reconstruction against the client's own batch (which never leaves the
node). The scores go into the reply's metrics (``fedleak-psnr``, ``fedleak-psnr-gain``,
``fedleak-ssim``, ``fedleak-label-accuracy``, ``fedleak-risk``, ``fedleak-attack-seconds``), with the
audit's verdict (:mod:`fedleak.verdicts`) as three indicators — ``fedleak-leaks``,
``fedleak-no-leak-found``, ``fedleak-inconclusive``, one of them 1 (their aggregate is the share of
clients) — and how many iterations the attack ran (``fedleak-iterations``) of the least it needs
(``fedleak-min-iterations``), so the server's aggregated train metrics show them. The gate's
verdict rests on the client's own batch: the simulation is verified by how well that batch explains
the update, and ``no leak found`` needs at least the attack's minimum of iterations — a budget that
fits fewer gives ``inconclusive``, never a pass. With a ``threshold`` the gate refuses to send an
update whose chosen score is above it, and (unless ``send_inconclusive``) one whose verdict is
``inconclusive``: the reply becomes an error (``MOD_FAILED_PRECONDITION``), which
Flower's strategies count as a failure and leave out of the aggregate. A gate that cannot score
(no recorded batch, arrays that do not fit the model) refuses too: it fails closed — and so does a
gate whose audit cannot run within its bounds (a train config asking for more than ``max_steps``
local steps, a time budget spent before the audit is done).

Mods run outermost first: list the gate first (``ClientApp(mods=[gate, obfuscation])``) so that it
scores the update as it finally leaves, after any defense mod. Give every client the gate: FedAvg
requires all replies' metrics to hold the same keys.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from logging import INFO
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore import log
from torch import nn

from fedleak.attacks.base import AttackerKnowledge
from fedleak.audit import AuditAttack, AuditRecord, audit_attack, audit_update
from fedleak.errors import ConfigError
from fedleak.fl.payload import ClientData
from fedleak.integrations.flower import text as _text  # noqa: F401  (registers the text audit's inputs)
from fedleak.integrations.flower.batches import is_train, recorded_batch
from fedleak.integrations.flower.inputs import INPUTS, Declared, modality_of_model
from fedleak.integrations.flower.records import (
    MAX_LOCAL_STEPS,
    OutOfBounds,
    TrainKeys,
    build_payload,
    only,
    public_hyperparameters,
    refusal,
    state_dict,
)
from fedleak.metrics.evaluate import Evaluation
from fedleak.registry import Registry
from fedleak.verdicts import INCONCLUSIVE, VERDICTS

BatchSource = Callable[[Message, Context], ClientData]
PROBE_ITERATIONS = 5  # a first short run measures the time per iteration for the budget
PREFIX = "fedleak-"

GATE_SCORES: Registry[Callable[[AuditRecord], float]] = Registry("gate score")
"""An image update's scores (the first is the default ``score``)."""
TEXT_GATE_SCORES: Registry[Callable[[AuditRecord], float]] = Registry("text gate score")
"""A text update's scores: the share of sequences recovered exactly (the default), of PII spans
recovered verbatim, mean ROUGE-1 and token accuracy (:mod:`fedleak.metrics.text`)."""
SCORE_SETS: Registry[Registry[Callable[[AuditRecord], float]]] = Registry("gate scores of a modality")


def _scored(r: AuditRecord) -> Evaluation:
    """The evaluation of a record the gate scores (one evaluated against the client's own batch)."""
    return cast(Evaluation, r.evaluation)


GATE_SCORES.register("psnr")(lambda r: _scored(r).psnr)
GATE_SCORES.register("psnr-gain")(lambda r: cast(dict[str, float], r.scored)["psnr_gain"])
GATE_SCORES.register("ssim")(lambda r: _scored(r).ssim)
GATE_SCORES.register("label-accuracy")(lambda r: _scored(r).label_accuracy)
GATE_SCORES.register("risk")(lambda r: r.risk)


def _summary_score(key: str) -> Callable[[AuditRecord], float]:
    """The text evaluation's summary value ``key`` (0 where it has nothing to count)."""
    return lambda r: float(cast(dict[str, Any], r.scored).get(key) or 0.0)


for _name, _key in (("exact-rate", "exact_rate"), ("pii-recovered", "pii_recovered"), ("rouge1", "rouge1"),
                    ("token-accuracy", "token_accuracy")):
    TEXT_GATE_SCORES.register(_name)(_summary_score(_key))
SCORE_SETS.register("image")(GATE_SCORES)
SCORE_SETS.register("text")(TEXT_GATE_SCORES)


def scores(record: AuditRecord) -> dict[str, float]:
    """Every gate score of ``record`` plus the attack's time, as reply metrics (finite floats)."""
    chosen = SCORE_SETS.get(record.scoring.name)
    out = {f"{PREFIX}{name}": float(chosen.get(name)(record)) for name in chosen}
    out[f"{PREFIX}attack-seconds"] = float(record.reconstruction.seconds)
    out[f"{PREFIX}iterations"] = float(record.iterations_run)
    out[f"{PREFIX}min-iterations"] = float(record.min_iterations)
    out |= {f"{PREFIX}{v.replace(' ', '-')}": float(record.verdict == v) for v in VERDICTS}
    return {k: (v if math.isfinite(v) else -1.0) for k, v in out.items()}


class OverBudget(Exception):
    """The gate's time budget ran out before its audit of an update was done (no FedleakError, so
    that nothing the audit calls takes it for a problem of its input and goes on)."""


class Clock:
    """The gate's time budget over everything it does with the model: :meth:`hook` goes on the
    model as a forward pre-hook (the copies the audit makes keep it), so every forward pass — each
    simulated local step, each attack iteration, the update fit — first checks the time and stops
    the audit with :class:`OverBudget` once the budget is spent. Per thread: gates of several nodes
    in one process keep their own."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __reduce__(self) -> tuple[type, tuple[()]]:  # a ClientApp travels pickled (Ray): a fresh, stopped clock
        return Clock, ()

    def start(self, budget_s: float | None) -> None:
        self._local.deadline = None if budget_s is None else time.monotonic() + budget_s
        self._local.budget, self._local.passes = budget_s, 0

    def stop(self) -> None:
        self._local.deadline = None

    @property
    def passes(self) -> int:
        """Forward passes of the model the current (or last) audit made."""
        return getattr(self._local, "passes", 0)

    def remaining(self) -> float | None:
        deadline = getattr(self._local, "deadline", None)
        return None if deadline is None else deadline - time.monotonic()

    def hook(self) -> Callable[..., None]:
        """The forward pre-hook (a plain function, so that ``copy.deepcopy`` of the model shares it)."""
        def check(module: nn.Module, args: Any) -> None:
            deadline = getattr(self._local, "deadline", None)
            if deadline is None:
                return
            self._local.passes += 1
            if time.monotonic() > deadline:  # and at every pass after: the gate's finally stops the clock
                raise OverBudget(f"its time budget of {self._local.budget:g} s ran out after "
                                 f"{self._local.passes - 1} forward passes of the model")
        return check


def within_budget(attack: AuditAttack, budget_s: float | None, run: Callable[[Any], AuditRecord],
                  clock: Clock | None = None) -> AuditRecord:
    """``run(attack instance)`` with as many iterations as fit in ``budget_s`` seconds (at most the
    configured number): a first run of :data:`PROBE_ITERATIONS` measures the pace. Attacks without an
    iteration count run as configured. With a started ``clock`` the seconds left are its own (the
    budget counts from the start of the gate's work) and a full run the clock stops falls back to the
    probe's record; a probe the clock stops is :class:`OverBudget`."""
    full = attack.build()
    iterations = getattr(full.config, "iterations", None)
    if budget_s is None or iterations is None or iterations <= PROBE_ITERATIONS:
        return run(full)
    began = time.monotonic()
    probe = run(attack.build(iterations=PROBE_ITERATIONS))
    spent = time.monotonic() - began
    attack_s = probe.reconstruction.seconds
    pace = attack_s / PROBE_ITERATIONS
    left = cast(float, clock.remaining()) if clock is not None and clock.remaining() is not None else budget_s - spent
    left -= max(spent - attack_s, 0.0)  # the next run's work besides the attack (simulation, update fit)
    fits = min(iterations, int(left / pace)) if pace > 0 else iterations
    if fits <= PROBE_ITERATIONS:
        return probe
    try:
        return run(attack.build(iterations=fits))
    except OverBudget:
        return probe


def leakage_gate(
    model: nn.Module | Callable[[], nn.Module],
    *,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    attack: str | Mapping[str, Any] | None = None,
    budget_s: float | None = 30.0,
    threshold: float | None = None,
    score: str | None = None,
    tokenizer: Any = None,
    batch: BatchSource | None = None,
    keys: TrainKeys = TrainKeys(),
    known: Mapping[str, Any] | None = None,
    seed: int = 0,
    max_steps: int = MAX_LOCAL_STEPS,
    send_inconclusive: bool = False,
) -> Mod:
    """A client mod that scores each outgoing train reply's leakage and, with ``threshold``,
    withholds a reply whose ``score`` (images: psnr (default), psnr-gain, ssim, label-accuracy, risk;
    text: exact-rate (default), pii-recovered, rouge1, token-accuracy) is above it. ``model``,
    ``num_classes`` and ``mean``/``std`` are the client's own model and normalisation; a text model
    (:mod:`~fedleak.integrations.flower.text`) needs neither normalisation nor, as a language model,
    ``num_classes``, and ``tokenizer`` (its tokenizer, or the TextDataset whose PII spans the batch's
    recorded indices look up) decodes what the attack recovered — ``threshold=0`` on ``exact-rate``
    withholds an update from which any sequence came back exactly;
    ``attack`` as for the audit (default IG at its stated minimum of 1000 iterations, cut to fit
    ``budget_s`` seconds — fewer than the minimum make the verdict ``inconclusive``);
    ``batch`` returns the examples this round trained on (default: what the train function gave
    :func:`~fedleak.integrations.flower.record_batch`). ``keys``/``known`` read the train config as
    the server's audit does.

    What the server sends is bounded: a train config asking for more than ``max_steps`` local steps
    is not emulated, and ``budget_s`` bounds all of the gate's work with the model (the simulated
    local steps, the attack, the update fit: the time is checked before every forward pass). An
    update the gate could not audit within these bounds is withheld, its reason saying so — it
    fails closed, as when it cannot score at all. With a ``threshold``, an ``inconclusive`` verdict
    (too few iterations, a simulation the client's batch does not confirm) is withheld as well unless
    ``send_inconclusive``; without one the gate only reports."""
    if threshold is not None and not math.isfinite(threshold):
        raise ConfigError("the gate's threshold must be a finite number")
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, (int, float))
                                 or not budget_s > 0 or not math.isfinite(budget_s)):
        raise ConfigError("the gate's time budget must be a positive number of seconds (or None)")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError("the gate's max_steps must be a whole number of at least 1")
    chosen = audit_attack(attack)  # default: the audit's, IG at its minimum of iterations
    architecture = model() if callable(model) and not isinstance(model, nn.Module) else copy.deepcopy(model)
    if not isinstance(architecture, nn.Module):
        raise ConfigError(f"model must be a torch module or build one, got {type(architecture).__name__}")
    inputs = INPUTS.get(modality_of_model(architecture))  # the model's modality: images, or token ids
    scoring = inputs.scoring(architecture, Declared(None, num_classes, mean, std, tokenizer))
    score = score or next(iter(SCORE_SETS.get(inputs.name)))
    SCORE_SETS.get(inputs.name).get(score)
    source = batch or recorded_batch
    checked: dict[tuple[int, ...], AttackerKnowledge] = {}
    clock = Clock()
    architecture.register_forward_pre_hook(clock.hook())

    def assess(message: Message, reply: Message, context: Context) -> AuditRecord:
        data = source(message, context)
        # What the server asked for first: a config beyond the gate's bounds is refused before any work.
        config = next(iter(message.content.config_records.values()), ConfigRecord())
        hyper, assumptions = public_hyperparameters(config, len(data.labels), architecture, keys, known, max_steps)
        shape = tuple(data.images.shape[1:])
        if shape not in checked:  # the model probed once per input shape
            checked[shape] = inputs.knowledge(architecture, Declared(shape, num_classes, mean, std, tokenizer))
        knowledge = checked[shape]
        sent = state_dict(only(message.content, ArrayRecord, "the train message"), architecture, "the global model")
        returned = state_dict(only(reply.content, ArrayRecord, "the reply"), architecture, "the reply")
        payload, more = build_payload(sent, returned, hyper, architecture)
        server_round = int(cast(int, config.get("server-round", 0)))  # the server sends an int
        # The gate verifies its simulation on the client's own batch (truth fit): no norm check needed.
        return within_budget(chosen, budget_s, lambda attack_: audit_update(
            payload, knowledge, attack_, round=server_round, client=str(context.node_id), seed=seed,
            assumptions=assumptions + more, truth=data, check=False, scoring=scoring), clock)

    def gate(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        if not is_train(message) or reply.has_error():
            return reply
        clock.start(budget_s)  # the budget counts from here: everything the gate does is within it
        try:
            record = assess(message, reply, context)
        except (OutOfBounds, OverBudget) as exc:  # what the server asked for, or its time, is beyond the bounds
            return refusal(message, f"fedleak leakage gate could not audit the update within its bounds, so it was "
                                    f"withheld (inconclusive): {exc}")
        except Exception as exc:  # fail closed: an update the gate could not check does not leave
            return refusal(message, f"fedleak leakage gate could not score the update, so it was withheld: {exc}")
        finally:
            clock.stop()
        values = scores(record)
        value = values[f"{PREFIX}{score}"]
        ran = f"{record.iterations_run} of the {record.min_iterations} iterations its verdict needs"
        if threshold is not None and value > threshold:
            return refusal(message, f"fedleak leakage gate withheld the update: {score} {value:.3g} > threshold "
                                    f"{threshold:g} (an attack reconstructed the batch in {record.reconstruction.seconds:.1f} s, "
                                    f"{record.iterations_run} iterations; verdict {record.verdict}: {record.verdict_reason})")
        if threshold is not None and record.verdict == INCONCLUSIVE and not send_inconclusive:
            return refusal(message, f"fedleak leakage gate withheld the update: its audit was inconclusive "
                                    f"({record.verdict_reason}; the attack ran {ran})")
        metrics = list(reply.content.metric_records.values())
        if metrics:
            for k, v in values.items():
                metrics[0][k] = v
        else:
            reply.content["metrics"] = MetricRecord(dict(values))
        log(INFO, "fedleak leakage gate: verdict %s (%s); %s %.3g, risk %.2f, %s (%.1f s)", record.verdict,
            record.verdict_reason, score, value, record.risk, ran, record.reconstruction.seconds)
        return reply

    return gate
