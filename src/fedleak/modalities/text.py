"""The text modality (the ``text`` extra): a batch of token ids, a transformers language model or
classifier (:mod:`fedleak.models.text`) that takes them as they are, and ROUGE, exact sequences,
token accuracy and PII recovered after matching (:mod:`fedleak.metrics.text`).

What the attacker is told: the architecture with the global weights (as for images), the padded
sequence length T of the round (``input_shape = (T,)``, the federation's public maximum length), the
output size (a language model: its vocabulary; a classifier: its classes), no normalisation, and
the labels of a classifier's batch only where the run declares them known. Never the tokenizer's
corpus nor the client's texts; decoding ids to text is the auditor's side (evaluation, report).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedleak.attacks import AttackerKnowledge, Reconstruction
from fedleak.config import RunConfig
from fedleak.data.text import TextDataset
from fedleak.data.tokens import TokenEncoding
from fedleak.errors import ConfigError, DataError
from fedleak.fl import Client, ClientData
from fedleak.metrics.baselines import other_index
from fedleak.metrics.text import TextEvaluation, evaluate_text
from fedleak.modalities.base import MODALITIES, Modality, Target, check_model_takes
from fedleak.models import create_model
from fedleak.models.checkpoint import CheckpointInfo, load_into
from fedleak.models.text import CausalLM, TextModel, lm_targets
from fedleak.training import tokenizer_facts


def text_target(config: RunConfig, dataset: TextDataset, info: CheckpointInfo | None = None,
                model: nn.Module | None = None) -> Target:
    """The global text model: a given :class:`~fedleak.models.text.TextModel`, or the configured
    one built for the dataset's tokenizer (its vocabulary and pad id; a classifier gets the
    dataset's classes), with checkpoint weights; refused with one line where the dataset's
    sequences are longer than the model's context or its tokenizer's ids exceed the vocabulary."""
    tok = dataset.tokenizer
    if model is not None:
        target = copy.deepcopy(model)
    else:
        check_model_takes(config.model.name, "text", dataset.name)
        seed = config.model.seed if config.model.seed is not None else config.seed
        options = {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id, **config.model.options}
        target = create_model(config.model.name, dataset.num_classes, 1, dataset.seq_len,
                              width=config.model.width, seed=seed, **options)
    if not isinstance(target, TextModel):
        raise ConfigError(f"model {config.model.name} is not a text model: a text dataset needs one "
                          "(gpt2-tiny, gpt2-small-shape, bert-tiny, …; fedleak config models)")
    if config.model.checkpoint:
        load_into(target, config.model.checkpoint, config.model.name)
    trained = (info.tokenizer or {}).get("sha256") if info is not None else None
    if info is not None and trained and trained != tokenizer_facts(tok, dataset.seq_len)["sha256"]:
        raise ConfigError("the dataset's tokenizer is not the one the checkpoint was trained with: keep the "
                          f"checkpoint's data options {info.data_options} (they are the defaults) or its tokenizer")
    if dataset.seq_len > target.max_length:
        raise DataError(f"sequences of {dataset.seq_len} tokens are longer than the model's context of "
                        f"{target.max_length}: set data.options.seq_len ≤ {target.max_length}")
    if tok.vocab_size > target.vocab_size:
        raise DataError(f"the tokenizer has {tok.vocab_size} tokens, the model's vocabulary only {target.vocab_size}")
    if info is not None and not isinstance(target, CausalLM) and info.num_classes != dataset.num_classes:
        raise ConfigError(f"the checkpoint's model has {info.num_classes} classes, dataset {dataset.name} "
                          f"has {dataset.num_classes}")
    return Target(target, (), (), "tokens", TokenEncoding(target.vocab_size, target.pad_id, target.max_length))


def text_batch(dataset: TextDataset, indices: Sequence[int], target: Target, device: torch.device) -> ClientData:
    """The token ids at ``indices`` (B×T) and what the model trains on: a language model's next
    tokens (:func:`~fedleak.models.text.lm_targets`), a classifier's class per sequence."""
    tokens = dataset.tokens(indices)
    model = target.model
    labels = (lm_targets(tokens, dataset.tokenizer.pad_id) if isinstance(model, CausalLM)
              else dataset.label_of(indices))
    return ClientData(tokens.to(device), labels.to(device), tuple(indices))


def text_knowledge(config: RunConfig, target: Target, dataset: TextDataset, truth: ClientData,
                   client: Client) -> AttackerKnowledge:
    """The architecture, the round's padded length, the output size; a classifier's labels where
    declared known (a language model's targets are its inputs: never handed over)."""
    model = target.model
    assert isinstance(model, TextModel)  # text_target built it
    lm = isinstance(model, CausalLM)
    if config.knowledge.bn_stats:
        raise ConfigError("knowledge.bn_stats does not apply to a text model (no batch normalisation)")
    if lm and config.knowledge.labels:
        raise ConfigError("knowledge.labels does not apply to a language model: its targets are the client's text")
    return AttackerKnowledge(
        architecture=copy.deepcopy(model),
        input_shape=(int(truth.inputs.shape[1]),),
        num_classes=int(model.vocab_size) if lm else dataset.num_classes,
        mean=(), std=(),
        labels=truth.labels.clone() if config.knowledge.labels else None,
    )


@dataclass(frozen=True)
class TextRunEvaluation:
    """A text run's :class:`~fedleak.metrics.text.TextEvaluation` as a run records it: its summary
    and, as ``texts`` (the counterpart of an image run's ``images``), each original beside its
    matched reconstruction with their scores and PII."""

    scores: TextEvaluation

    @property
    def label_accuracy(self) -> float | None:
        return self.scores.label_accuracy

    @property
    def order(self) -> list[int]:
        return self.scores.order

    @property
    def sequences(self) -> list[Any]:
        return list(self.scores.sequences)

    def summary(self) -> dict[str, Any]:
        return {**self.scores.summary(), "texts": list(self.scores.sequences)}


def text_evaluate(config: RunConfig, reconstruction: Reconstruction, truth: ClientData,
                  dataset: TextDataset) -> tuple[TextRunEvaluation, list[str]]:
    """ROUGE-1/2/L, exact sequences, token accuracy and the PII the batch held that came back
    (:func:`~fedleak.metrics.text.evaluate_text`), matched by ROUGE-L; label accuracy for a classifier."""
    tok, lm = dataset.tokenizer, truth.labels.ndim == 2
    scores = evaluate_text(reconstruction.images, truth.inputs, tok.decode, dataset.pii_in(truth.indices),
                           pad_id=tok.pad_id, indices=truth.indices,
                           labels=None if lm else truth.labels, recovered_labels=None if lm else reconstruction.labels)
    return TextRunEvaluation(scores), []


def text_baselines(truth: ClientData, dataset: TextDataset) -> dict[str, Any]:
    """``{"other_text": {rouge1, rouge2, rougeL, token_accuracy, index} or None}``: every original
    against the first example of the set that is not in the batch (as the images' other-image guess)
    — what a plausible but unrelated sentence of the corpus scores (ROUGE counts the words that any
    two sentences of a templated corpus share)."""
    index = other_index(dataset, truth.indices)
    if index is None:
        return {"other_text": None}
    originals = truth.inputs.detach().cpu()
    tok = dataset.tokenizer
    keep = ("rouge1", "rouge2", "rougeL", "token_accuracy")
    scores = [evaluate_text(dataset.tokens([index]), row[None], tok.decode, pad_id=tok.pad_id).summary()
              for row in originals]
    return {"other_text": {**{k: sum(float(s[k] or 0.0) for s in scores) / len(scores) for k in keep}, "index": index}}


def text_files(truth: ClientData, reconstruction: Reconstruction, evaluation: TextRunEvaluation) -> dict[str, bytes]:
    """``sequences.json``: each original's text beside its matched reconstruction, scores and PII."""
    return {"sequences.json": json.dumps(list(evaluation.scores.sequences), indent=2, ensure_ascii=False).encode()}


TEXT = MODALITIES.register("text")(Modality("text", text_target, text_batch, text_knowledge, text_evaluate,
                                            text_baselines, text_files))
