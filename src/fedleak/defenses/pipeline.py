"""Composite defenses from spec strings: ``"clip:c=1+noise:snr_db=0"``, ``"topk:sparsity=0.95,scope=global"``.

Stages are joined with ``+`` and run left to right; each is ``name`` or ``name:key=value,…`` with the
values validated by the defense's settings. Update stages before an ``aggregate`` stage run on every
client, those after it on the mean the server sees. A ``gradient`` stage (DP-SGD) changes how the
client trains, wherever it is written.

A spec is parsed once (:func:`parse_defense` keeps the pipelines it built, by spec string): configs
and payloads carry the string, and whoever needs the stages asks for the parsed pipeline again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedleak.defenses.base import DEFENSES, Aggregation, Defense, Gradient, GradientDefense, Update, UpdateDefense
from fedleak.errors import ConfigError
from fedleak.parameters import trainable
from fedleak.specs import parse_spec


def batch_gradient(model: nn.Module, inputs: Tensor, labels: Tensor) -> Update:
    """The plain gradient of the mean cross-entropy over the batch, per trainable parameter."""
    named = trainable(model)
    grads = torch.autograd.grad(F.cross_entropy(model(inputs), labels), [p for _, p in named])
    return {n: g.detach() for (n, _), g in zip(named, grads)}


def _parse_stage(text: str) -> Defense:
    if not text.strip():
        raise ConfigError(f"defense spec has an empty stage in {text!r}")
    return parse_spec(text, DEFENSES, "defense")


@dataclass(frozen=True)
class DefensePipeline:
    """A parsed defense spec: stages in order, and where the aggregation sits. Shared by every caller
    that parses the same spec, so never changed."""

    stages: tuple[Defense, ...] = ()

    @property
    def spec(self) -> str | None:
        """The canonical spec (every setting spelled out), or None without defense."""
        return "+".join(s.spec() for s in self.stages) or None

    @property
    def clients(self) -> int:
        """How many clients' updates the server averages (1 without ``aggregate``)."""
        agg = [s for s in self.stages if isinstance(s, Aggregation)]
        return agg[0].clients if agg else 1

    @property
    def gradient(self) -> Callable[[torch.Generator], Gradient] | None:
        """The gradient stage, if any, as a factory of the client's gradient function."""
        stage = next((s for s in self.stages if isinstance(s, GradientDefense)), None)
        return stage.gradient if stage is not None else None

    @property
    def matching(self) -> str | None:
        """The matching an attacker should use on updates this pipeline made, as its stages declare
        it (:attr:`Defense.matching`): the declaring stage of the highest priority decides, the first
        on a tie; ``None`` when no stage changes what the values mean."""
        declared = [s for s in self.stages if s.matching is not None]
        return max(declared, key=lambda s: s.matching_priority).matching if declared else None

    def _split(self) -> tuple[list[UpdateDefense], list[UpdateDefense]]:
        cut = next((i for i, s in enumerate(self.stages) if isinstance(s, Aggregation)), len(self.stages))
        upd = lambda part: [s for s in part if isinstance(s, UpdateDefense)]  # noqa: E731
        return upd(self.stages[:cut]), upd(self.stages[cut:])

    def on_client(self, update: Update, generator: torch.Generator) -> Update:
        """The update stages each client applies before aggregation."""
        for stage in self._split()[0]:
            update = stage.apply(update, generator)
        return update

    def on_server(self, update: Update, generator: torch.Generator) -> Update:
        """The update stages applied to the aggregate (after an ``aggregate`` stage)."""
        for stage in self._split()[1]:
            update = stage.apply(update, generator)
        return update

    def _simulable(self) -> tuple[list[UpdateDefense], list[UpdateDefense]]:
        """The leading simulable update stages, split at the aggregation: the attacker's re-run goes
        through the stages in order (client side, the mean, server side) until the first random or
        non-differentiable one."""
        client, server = self._split()
        stages, cut = client + server, len(client)
        stop = next((i for i, s in enumerate(stages) if not s.simulable), len(stages))
        return stages[:min(stop, cut)], stages[cut:stop]

    def simulate_client(self, update: Update) -> Update:
        """What the attacker can re-run of the client-side stages: the leading simulable ones (e.g.
        clipping); the first random or non-differentiable stage ends the re-run."""
        for stage in self._simulable()[0]:
            update = stage.simulate(update)
        return update

    def simulate_server(self, update: Update) -> Update:
        """What the attacker can re-run of the stages after ``aggregate`` on the (simulated) mean: the
        leading simulable ones, and none when the re-run already stopped on the client side."""
        for stage in self._simulable()[1]:
            update = stage.simulate(update)
        return update

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def summary(self, **round_facts: Any) -> dict[str, Any]:
        """Per-stage facts for reports (e.g. DP-SGD's ε), keyed by stage name."""
        return {s.name: info for s in self.stages if (info := s.summary(**round_facts))}


def parse_defense(spec: str | None) -> DefensePipeline:
    """Parse a spec string; ``None``, ``""`` and ``"none"`` mean no defense. Bad specs raise a
    one-line :class:`ConfigError`. A spec parsed before gives the same (immutable) pipeline again."""
    if spec is None or not spec.strip() or spec.strip() == "none":
        return DefensePipeline()
    return _parse(spec)


@functools.lru_cache(maxsize=256)
def _parse(spec: str) -> DefensePipeline:
    stages = tuple(_parse_stage(part) for part in spec.split("+"))
    for kind in (Aggregation, GradientDefense):
        if sum(isinstance(s, kind) for s in stages) > 1:
            raise ConfigError(f"defense spec {spec!r} has more than one {kind.stage} stage")
    return DefensePipeline(stages)


def check_spec(spec: str | None) -> str | None:
    """Validator form for configs: ``ValueError`` (pydantic) on a bad spec, the spec otherwise."""
    try:
        parse_defense(spec)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return spec
