"""What differs between modalities (DESIGN.md §7): how a run's batch is drawn, its target model built,
what the attacker is told, and how a reconstruction is scored. :data:`MODALITIES` maps a dataset's
``modality`` ("image", "text") to its :class:`Modality`; :mod:`fedleak.pipeline` wires one run the
same way for every entry, so text is one more entry, not ``if text:`` branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from fedleak.attacks import AttackerKnowledge, Reconstruction
from fedleak.config import RunConfig
from fedleak.data.tokens import InputEncoding
from fedleak.errors import ConfigError
from fedleak.fl import Client, ClientData
from fedleak.models.catalogue import card_of
from fedleak.models.checkpoint import CheckpointInfo
from fedleak.models.registry import MODELS
from fedleak.registry import Registry


@dataclass
class Target:
    """The model a run attacks and the normalisation its clients apply (``source``: where that came
    from, see :mod:`fedleak.models.normalization`); a text model has no normalisation (empty
    ``mean``/``std``) and its token ``encoding`` instead."""

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = "dataset"
    encoding: InputEncoding | None = None  # how the client's inputs reach the model (None: mean/std's)

    def normalization(self) -> dict[str, Any] | None:
        """``{mean, std, source}`` as recorded in ``metrics.json`` (None for token inputs)."""
        if not self.mean:
            return None
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}


class Scored(Protocol):
    """A modality's evaluation: ``summary()`` is what ``metrics.json`` and the results database hold
    of it (``label_accuracy`` among it), ``order[i]``: the reconstruction matched with input ``i``."""

    @property
    def label_accuracy(self) -> float | None: ...

    @property
    def order(self) -> list[int]: ...

    def summary(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Modality:
    """One modality's entries of a run (each takes what :func:`fedleak.pipeline.prepare` has then):

    - ``target(config, dataset, info, model)`` → :class:`Target`: the global model for the dataset;
    - ``batch(dataset, indices, target, device)`` → the client's private :class:`ClientData` (its
      labels are what the target model trains on);
    - ``knowledge(config, target, dataset, truth, client)`` → what the attacker is told;
    - ``evaluate(config, reconstruction, truth, dataset)`` → (a :class:`Scored` evaluation, hints);
    - ``baselines(truth, dataset)`` → what guesses that use nothing of the update score (the no-leak
      baselines, :mod:`fedleak.metrics.baselines` for images), as ``metrics.json`` holds them;
    - ``files(truth, reconstruction, evaluation)`` → a run's per-input artifacts (name → bytes).
    """

    name: str
    target: Callable[[RunConfig, Any, CheckpointInfo | None, nn.Module | None], Target]
    batch: Callable[[Any, Sequence[int], Target, torch.device], ClientData]
    knowledge: Callable[[RunConfig, Target, Any, ClientData, Client], AttackerKnowledge]
    evaluate: Callable[[RunConfig, Reconstruction, ClientData, Any], tuple[Scored, list[str]]]
    baselines: Callable[[ClientData, Any], dict[str, Any]]
    files: Callable[[ClientData, Reconstruction, Any], dict[str, bytes]]


MODALITIES: Registry[Modality] = Registry("modality")


def check_model_takes(name: str, modality: str, dataset: str) -> None:
    """One line unless the registered model ``name`` (its card's modality) takes this ``modality``'s
    inputs; a name that is no registered model (the user's own factory) is checked when built."""
    if name not in MODELS:
        return
    card = card_of(name)
    if card.modality != modality:
        takes = "token ids" if card.modality == "text" else "images"
        raise ConfigError(f"model {name} takes {takes}, dataset {dataset} holds {modality} inputs: choose a "
                          f"{modality} model (fedleak config models)")


def modality_of(dataset: Any) -> Modality:
    """The :class:`Modality` of ``dataset`` (its ``modality`` attribute; images where it has none)."""
    return MODALITIES.get(getattr(dataset, "modality", "image"))
