"""Auditing a Flower text app: the text entry of :data:`~fedleak.integrations.flower.inputs.INPUTS`.

The model is a fedleak :class:`~fedleak.models.text.TextModel`: one built by fedleak
(``create_model("gpt2-tiny", …)``, LoRA through its ``lora`` option) or the user's own transformers
model wrapped, ``CausalLM(hf_model, pad_id, vocab_size, max_length)`` (a language model: logits
B×V×(T−1), trained on :func:`~fedleak.models.text.lm_targets`) or ``SequenceClassifier(…)``
(B×C logits); any other module is audited as an image model. The clients' batches are token ids,
int64 B×T right-padded with the model's pad id (what :func:`record_batch` records).

What the attacker is told (as in :mod:`fedleak.modalities.text`): the architecture, the padded
length T (``input_shape=(T,)``, default the model's context), the output size (a language model's
vocabulary; a classifier's classes, to be given), no normalisation. The tokenizer is public (the
federation ships it to every client): it decodes what the audit recovered for the log and report.

:class:`TextScoring` is the audit's text side (:class:`~fedleak.audit.Scoring`):

- the model's inputs are the token ids as they are; a language model's labels are their next tokens;
- the mis-specification check simulates the declared training on public token sequences (``public=``:
  N×T ids, e.g. held-out sentences of the same kind) or, without them, on uniform random tokens
  (whose updates may be larger than real text's: then the check says mis-specified, and the verdict
  stays inconclusive), and compares norms as :func:`fedleak.specification.compare` does;
- scores against a shared batch come from the text modality's evaluate
  (``MODALITIES["text"].evaluate``: ROUGE, exact sequences, token accuracy, PII recovered) with its
  no-leak baseline; the verdict's rule is :func:`fedleak.verdicts.text_evidence` (a sequence
  recovered exactly, or a recorded PII span verbatim). PII spans are those the
  :class:`~fedleak.data.text.TextDataset` given as ``tokenizer=`` records for the batch's indices
  (:func:`record_batch`'s ``indices``); without it, or without indices, no PII is scored;
- no label-histogram or imprint what-if (they are image and classifier measures);
- an attack that recovered no sequence did not apply (its note says why, e.g. DAGER when the
  batch's tokens fill the span): the verdict is then inconclusive, never "no leak found".
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fedleak.attacks.base import AttackerKnowledge, Reconstruction
from fedleak.audit import AuditRecord, Score
from fedleak.config import RunConfig
from fedleak.defenses import parse_defense
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.payload import ClientData, Payload
from fedleak.integrations.flower.inputs import INPUTS, AuditInputs, Declared
from fedleak.integrations.flower.log import FILES
from fedleak.modalities import MODALITIES
from fedleak.models.text import CausalLM, TextModel, lm_targets
from fedleak.specification import SAMPLES, Reference, SpecificationCheck, bare_simulation, compare
from fedleak.verdicts import EVIDENCE

PREVIEW_TEXTS = 16  # recovered sequences shown in a record's preview


@dataclass(frozen=True)
class Decoding:
    """A tokenizer seen as the dataset the text modality's evaluate reads: no PII recorded."""

    tokenizer: Any

    def pii_in(self, indices: Any) -> list[list[Any]]:
        return [[] for _ in indices]


def _decode(tokenizer: Any, rows: Tensor, pad_id: int) -> list[str]:
    rows = rows.detach().cpu().long()
    return [tokenizer.decode(row[row != pad_id].tolist()) if tokenizer is not None else " ".join(map(str, row.tolist()))
            for row in rows]


@dataclass(frozen=True)
class TextScoring:
    """The audit's text side (see the module doc): ``pad_id`` of the model, ``source`` the
    :class:`~fedleak.data.text.TextDataset` or tokenizer given (``None``: token ids shown as numbers,
    nothing scored)."""

    pad_id: int
    source: Any = None
    name: str = "text"
    leaks: bool = False

    @property
    def tokenizer(self) -> Any:
        return getattr(self.source, "tokenizer", self.source)

    def model_inputs(self, knowledge: AttackerKnowledge, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        tokens = inputs.long()
        if labels.ndim == 2 or not isinstance(knowledge.architecture, CausalLM):
            return tokens, labels  # a batch's own next-token targets, or a classifier's classes
        return tokens, lm_targets(tokens, self.pad_id)

    def check(self, payload: Payload, knowledge: AttackerKnowledge, public: Tensor | None,
              public_labels: Tensor | None, seed: int) -> SpecificationCheck:
        return compare(payload, text_reference(payload, knowledge, self, public, public_labels, seed=seed))

    def score(self, reconstruction: Reconstruction, truth: ClientData, lpips: Any) -> Score:
        dataset, data = self.source, truth
        if dataset is None:
            raise FedleakError("a text audit scores a shared batch only with its tokenizer: give tokenizer= (the "
                               "tokenizer, or the TextDataset whose PII spans to score)")
        if not hasattr(dataset, "pii_in") or len(truth.indices) != len(truth.images):
            dataset = Decoding(self.tokenizer)
            data = ClientData(truth.images, truth.labels, tuple(range(len(truth.images))))
        modality = MODALITIES.get("text")
        evaluation, _ = modality.evaluate(RunConfig(), reconstruction, data, dataset)
        summary = evaluation.summary()
        baselines = modality.baselines(data, dataset) if dataset is self.source else {}  # needs the corpus
        evidence, searched = EVIDENCE.get("text")({**summary, **baselines})
        headline = (f", {summary['exact_sequences']}/{summary['sequences']} sequences exact, ROUGE-1 "
                    f"{summary['rouge1'] or 0:.2f}, PII {summary['pii_recovered_spans']}/{summary['pii_spans']}")
        return Score(evaluation, {**summary, **baselines}, {"evidence": tuple(evidence), "searched": searched},
                     headline)

    def not_applicable(self, reconstruction: Reconstruction) -> str | None:
        if bool((reconstruction.images != self.pad_id).any()):
            return None
        said = [n for n in reconstruction.notes if "cannot" in n]
        return said[0] if said else "it recovered no sequence"

    def preview(self, record: AuditRecord) -> dict[str, Any]:
        shown = record.images[:PREVIEW_TEXTS]
        out: dict[str, Any] = {"reconstruction": None, "original": None, "labels": record.labels_shown()[:PREVIEW_TEXTS],
                               "texts": _decode(self.tokenizer, shown, self.pad_id)}
        if record.truth_images is not None:
            out["original_texts"] = _decode(self.tokenizer, record.truth_images[:PREVIEW_TEXTS], self.pad_id)
        return out


def text_reference(payload: Payload, knowledge: AttackerKnowledge, scoring: TextScoring, public: Tensor | None,
                   public_labels: Tensor | None, *, samples: int = SAMPLES, seed: int = 0) -> Reference:
    """Per-tensor norms of ``samples`` updates the declared training makes on batches of the
    update's size drawn from ``public`` token sequences (N×T), else of uniform random tokens of the
    model's padded length (each followed by the declared defense's update stages, as
    :func:`fedleak.specification.reference_updates` does for images)."""
    hyper = payload.hyper
    simulation = bare_simulation(payload, knowledge)
    pipeline = parse_defense(hyper.defense)
    model = knowledge.architecture
    generator = torch.Generator().manual_seed(seed)
    b, k = hyper.batch_size, hyper.clients
    vocab = int(getattr(model, "vocab_size", 2))
    names = list(payload.update)
    rows = []
    for _ in range(samples):
        clients = []
        for _ in range(k):
            if public is not None:
                index = torch.randint(len(public), (b,), generator=generator)
                tokens = public[index]
                labels = public_labels[index] if public_labels is not None else torch.zeros(b, dtype=torch.long)
            else:
                tokens = torch.randint(0, vocab, (b, int(knowledge.input_shape[0])), generator=generator)
                tokens[tokens == scoring.pad_id] = (scoring.pad_id + 1) % vocab
                labels = torch.randint(max(1, knowledge.num_classes), (b,), generator=generator)
            device = next(iter(simulation.params.values())).device
            x, y = scoring.model_inputs(knowledge, tokens.to(device), labels.to(device))
            with torch.enable_grad():
                update = {n: t.detach() for n, t in simulation.update(x, y).items()}
            clients.append(pipeline.on_client(update, generator))
        mean = {n: torch.stack([c[n] for c in clients]).mean(0) for n in clients[0]}
        done = pipeline.on_server(mean, generator)
        rows.append(torch.stack([done[n].detach().double().norm() for n in names]).cpu())
    source = f"{len(public)} public token sequences" if public is not None else "uniform random tokens"
    return Reference(tuple(names), torch.stack(rows), source)


def text_knowledge(model: nn.Module, declared: Declared) -> AttackerKnowledge:
    """A fedleak text model, the padded length ``(T,)`` (default its context), its output size (a
    language model's vocabulary; a classifier's ``num_classes``, required), no normalisation; the model
    is probed once on a 2×T batch of token ids."""
    if not isinstance(model, TextModel):
        raise ConfigError("a text audit needs a fedleak text model: fedleak's (create_model) or your transformers "
                          "model wrapped, fedleak.models.text.CausalLM(hf_model, pad_id, vocab_size, max_length)")
    if declared.mean or declared.std:
        raise ConfigError("mean/std do not apply to a text model (token ids are not normalised)")
    shape = tuple(int(v) for v in declared.input_shape or (model.max_length,))
    if len(shape) != 1 or not 2 <= shape[0] <= model.max_length:
        raise ConfigError(f"a text model's input_shape is (T,): the padded length, 2 … {model.max_length}")
    lm = isinstance(model, CausalLM)
    classes = int(model.vocab_size) if lm and declared.num_classes is None else declared.num_classes
    if classes is None:
        raise ConfigError("a text classifier's audit needs num_classes")
    probe = torch.full((2, shape[0]), (model.pad_id + 1) % model.vocab_size, dtype=torch.long,
                       device=next(model.parameters()).device)
    with torch.no_grad():
        out = copy_eval(model)(probe)
    want = (2, classes, shape[0] - 1) if lm else (2, classes)
    if tuple(out.shape) != want:
        raise ConfigError(f"the text model returns logits of shape {tuple(out.shape)} on 2×{shape[0]} tokens, "
                          f"expected {want} (num_classes {classes})")
    return AttackerKnowledge(architecture=model, input_shape=shape, num_classes=classes, mean=(), std=())


def copy_eval(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode (the probe leaves the model as it was)."""
    return copy.deepcopy(model).eval()


def text_public(public: Any, knowledge: AttackerKnowledge) -> tuple[Tensor | None, Tensor | None]:
    """``public=`` as (token ids N×T int64 within the vocabulary, labels or None)."""
    if public is None:
        return None, None
    tokens, labels = public if isinstance(public, tuple) else (public, None)
    model = knowledge.architecture
    vocab = int(getattr(model, "vocab_size", 0))
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype != torch.long or not len(tokens) \
            or int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise ConfigError(f"public= must be N×T token ids (int64, below the vocabulary of {vocab}) for a text model")
    if labels is not None and (not isinstance(labels, Tensor) or labels.shape != (len(tokens),)):
        raise ConfigError(f"public= labels must be one class index per sequence ({len(tokens)})")
    return tokens.detach().cpu().clone(), None if labels is None else labels.detach().cpu().long().clone()


def text_scoring(model: nn.Module, declared: Declared) -> TextScoring:
    return TextScoring(int(getattr(model, "pad_id", 0)), declared.tokenizer)


def text_files(record: AuditRecord) -> dict[str, bytes]:
    """``sequences.json`` (each original beside its matched reconstruction, scores and PII, where a
    batch was shared; else the recovered texts) and ``recovered.txt`` (one recovered sequence a line)."""
    scoring = record.scoring
    assert isinstance(scoring, TextScoring)
    recovered = _decode(scoring.tokenizer, record.reconstruction.images, scoring.pad_id)
    sequences = (list(record.evaluation.sequences) if record.evaluation is not None
                 else [{"recovered": t} for t in recovered])
    return {"sequences.json": json.dumps(sequences, indent=2, ensure_ascii=False).encode(),
            "recovered.txt": "".join(t + "\n" for t in recovered).encode()}


INPUTS.register("text")(AuditInputs("text", text_knowledge, text_public, text_scoring))
FILES.register("text")(text_files)
