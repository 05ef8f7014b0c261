"""Scoring recovered token sequences against the client's batch — the text modality's :func:`evaluate`.

Text-only: imports ``rouge-score`` (the ``text`` extra) at module top, so it is not imported by
``fedleak.metrics``; import ``fedleak.metrics.text`` directly.

What is computed, per original sequence ``i`` of the batch (B×T token ids, right-padded with ``pad_id``;
the *real* tokens of a row are those ``!= pad_id``):

- **matching**: a gradient does not reveal the order of a batch, so reconstructions are first paired
  with originals by a Hungarian assignment (scipy's ``linear_sum_assignment``) minimising
  ``1 − ROUGE-L F`` of the decoded strings, ties broken by token overlap (the share of the original's
  real positions holding the same token id, weighted :data:`TIE_WEIGHT`, too small to override any
  ROUGE difference). With fewer reconstructions than originals the rest stay unmatched
  (``matched = -1``, recovered text ``""``, every score 0); surplus reconstructions are left out and counted.
- **ROUGE-1/2/L F-measure** (``rouge_score.RougeScorer``, no stemming) of the matched reconstruction's
  decoded text against the original's decoded text (the tokenizer's round trip: what the client had in
  its batch, after truncation). Words are :class:`RougeWords` — rouge-score's default tokenisation on
  ASCII text, but Unicode-aware (see there for why digits, ``@`` and ``.`` are treated as they are).
- **exact**: the reconstruction's token ids equal the original's at every real position of the original
  (its pad positions are ignored: there a reconstruction may hold anything, which ROUGE still sees).
- **token accuracy**: the share of the original's real positions at which the reconstruction (right-padded
  or cut to T) holds the same token id.
- **PII recovered**: a recorded span (:class:`Span`, e.g. ``fedleak.data.text.PIISpan``) is recovered
  when its text appears verbatim in the matched reconstruction's decoded text, whitespace ignored
  (tokenizers' ``decode`` re-spaces punctuation: WordPiece turns ``a.b@c.com`` into ``a. b @ c. com``;
  case and every other character must agree, and the span must stand as whole words as it does in the
  original, so a span recovered in part, or inside a longer word or number, is not recovered). A span
  that does not appear in the decoded *original* (cut by ``seq_len``, or changed by the tokenizer, e.g.
  an uncased one) never reached the client's batch: it is marked ``in_batch = False`` and left out of
  the shares, counted as ``pii_unreachable``.
- **label accuracy** (classifiers only): the share of the batch's class labels recovered, as multisets
  (:func:`fedleak.metrics.matching.label_accuracy`); ``None`` for a language model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

import numpy as np
import torch
from rouge_score import rouge_scorer  # type: ignore[import-untyped]  # optional: the text extra
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from fedleak.errors import FedleakError
from fedleak.metrics.matching import label_accuracy

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TIE_WEIGHT = 1e-9  # token overlap's weight in the matching cost: it only orders pairs ROUGE-L ties
_WORD = re.compile(r"[^\W_]+")  # a run of Unicode letters and digits


class Span(Protocol):
    """A recorded PII span: its kind (``name``, ``email``, …), char offsets into the dataset's text, its text."""

    @property
    def kind(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def text(self) -> str: ...


class SpanRecord(TypedDict):
    kind: str
    text: str
    start: int
    end: int
    in_batch: bool  # the span is in the decoded original (not cut by truncation or the tokenizer)
    recovered: bool  # verbatim (whitespace ignored) in the matched reconstruction's decoded text
    at_original: list[int] | None  # [start, end) of the span in the decoded original (the report marks it)
    at_recovered: list[int] | None  # [start, end) in the decoded reconstruction; None: not recovered


class SequenceRecord(TypedDict):
    position: int  # place of the original in the client batch
    dataset_index: int | None
    matched: int  # row of the reconstruction paired with it; -1: none
    original: str  # decoded original
    recovered: str  # decoded matched reconstruction ("" when unmatched)
    rouge1: float
    rouge2: float
    rougeL: float
    exact: bool
    token_accuracy: float
    tokens: int  # the original's real tokens
    label: int | None  # class of the original (classifiers; None for a language model)
    recovered_label: int | None
    pii: list[SpanRecord]


class RougeWords:
    """The words ROUGE counts: the lower-cased text's runs of letters and digits.

    On ASCII text this is exactly rouge-score's default tokeniser (lower-case, split at anything but
    ``[a-z0-9]``), so scores stay comparable with the published ones (DAGER, LAMP and TAG report
    rouge-score's defaults). It is Unicode-aware where the default is not: the default drops every
    non-ASCII letter (``Müller`` → ``m``, ``ller``; a Japanese sentence → no words, ROUGE 0 whatever was
    recovered), which would mis-score faker's non-English locales. Digits already count in the default.
    ``@`` and ``.`` stay separators on purpose: an e-mail address or a phone number is scored piece by
    piece like any other words (``anna.berg@example.com`` → ``anna``, ``berg``, ``example``, ``com``), so
    that part of one earns part of the credit; whether it was recovered whole is the PII measure's job.
    """

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


_SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False, tokenizer=RougeWords())


def rouge(original: str, recovered: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure of ``recovered`` against the reference ``original``."""
    scores = _SCORER.score(original, recovered)
    return {kind: float(scores[kind].fmeasure) for kind in ROUGE_TYPES}


def token_agreement(recovered: Tensor, original: Tensor, pad_id: int) -> Tensor:
    """B×B' share of each original's real positions at which each reconstruction holds the same id (the
    reconstructions right-padded with ``pad_id`` or cut to the originals' length T)."""
    t = original.shape[1]
    rec = recovered[:, :t]
    if rec.shape[1] < t:
        rec = torch.nn.functional.pad(rec, (0, t - rec.shape[1]), value=pad_id)
    real = original != pad_id  # B×T
    same = (original[:, None, :] == rec[None, :, :]) & real[:, None, :]  # B×B'×T
    return same.sum(-1).double() / real.sum(-1, keepdim=True).clamp(min=1).double()


def rouge_l_matrix(originals: Sequence[str], recovered: Sequence[str]) -> np.ndarray:
    """B×B' ROUGE-L F of every reconstruction against every original — rouge-score's value (LCS of the
    :class:`RougeWords` word sequences; F = 2PR/(P+R), 0 when either text has no word), computed for all
    pairs at once: the LCS recurrence runs over the originals' words, vectorised over pairs and the
    reconstructions' words (a row of the LCS table is a running maximum), instead of rouge-score's
    pure-Python table per pair (minutes for a batch of 128)."""
    words = RougeWords()
    a, b = [words.tokenize(t) for t in originals], [words.tokenize(t) for t in recovered]
    vocab: dict[str, int] = {}
    n, m = max(map(len, a), default=0), max(map(len, b), default=0)
    ids_a, ids_b = np.full((len(a), n), -1), np.full((len(b), m), -2)  # the pads never match
    for ids, seqs in ((ids_a, a), (ids_b, b)):
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = [vocab.setdefault(w, len(vocab)) for w in seq]
    prev = np.zeros((len(a), len(b), m + 1), dtype=np.int64)  # LCS of a[:i] with b[:j], all j
    lcs = np.zeros((len(a), len(b)), dtype=np.int64)
    len_a, len_b = (np.array([len(s) for s in seqs], dtype=np.int64) for seqs in (a, b))
    for i in range(n):
        same = ids_a[:, None, i, None] == ids_b[None, :, :]
        candidate = np.where(same, prev[:, :, :-1] + 1, prev[:, :, 1:])
        prev = np.zeros_like(prev)
        prev[:, :, 1:] = np.maximum.accumulate(candidate, axis=2)
        done = len_a == i + 1  # originals that end here: their LCS with each reconstruction is final
        lcs[done] = prev[done][:, np.arange(len(b)), len_b]
    ref, pred = len_a[:, None].astype(float), len_b[None, :].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p, r = lcs / pred, lcs / ref
        f = np.where(lcs > 0, 2 * p * r / (p + r), 0.0)
    return f


def match_texts(recovered: Sequence[str], originals: Sequence[str], agreement: Tensor) -> list[int]:
    """``order[i]``: the reconstruction paired with original ``i`` (-1: none left), by the Hungarian
    assignment minimising ``1 − ROUGE-L F`` (:func:`rouge_l_matrix`) plus :data:`TIE_WEIGHT` ×
    ``(1 − agreement)``."""
    cost = 1.0 - rouge_l_matrix(originals, recovered) + TIE_WEIGHT * (1.0 - agreement.cpu().numpy())
    order = [-1] * len(originals)
    for i, j in zip(*linear_sum_assignment(cost), strict=True):
        order[int(i)] = int(j)
    return order


def locate(needle: str, text: str, bounded: tuple[bool, bool] = (True, True)) -> list[int] | None:
    """``[start, end)``: the first occurrence of ``needle`` in ``text``, whitespace ignored on both sides
    (the range runs from its first to its last non-space character), that is a whole word on each side
    ``bounded`` names — no letter or digit right before (after) it; ``None`` when there is none or the
    needle is blank."""
    kept = [i for i, c in enumerate(text) if not c.isspace()]
    compact, target = "".join(text[i] for i in kept), "".join(c for c in needle if not c.isspace())
    at = compact.find(target) if target else -1
    while at >= 0:
        start, end = kept[at], kept[at + len(target) - 1] + 1
        if not (bounded[0] and start > 0 and text[start - 1].isalnum()
                or bounded[1] and end < len(text) and text[end].isalnum()):
            return [start, end]
        at = compact.find(target, at + 1)
    return None


def score_spans(spans: Sequence[Span], original: str, recovered: str) -> list[SpanRecord]:
    """Each span of one sequence: where it is in the decoded original (absent: not in the batch) and in
    the recovered text (present: recovered), whitespace ignored (:func:`locate`). In the recovered text a
    span must stand as whole words on each side where it does in the original (``Anna Berg`` is not
    recovered by ``Anna Bergh``, nor ``555-0142`` by ``555-01423``)."""
    records: list[SpanRecord] = []
    for span in spans:
        in_original = locate(span.text, original) or locate(span.text, original, (False, False))
        in_recovered = None
        if in_original is not None:
            start, end = in_original
            glued = (start > 0 and original[start - 1].isalnum(), end < len(original) and original[end].isalnum())
            in_recovered = locate(span.text, recovered, (not glued[0], not glued[1]))
        records.append(SpanRecord(kind=span.kind, text=span.text, start=int(span.start), end=int(span.end),
                                  in_batch=in_original is not None, recovered=in_recovered is not None,
                                  at_original=in_original, at_recovered=in_recovered))
    return records


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class TextEvaluation:
    """The scores of one text reconstruction: ``sequences`` (one :class:`SequenceRecord` per original,
    in batch order), ``order`` (``order[i]``: the reconstruction matched with original ``i``, -1: none),
    ``label_accuracy`` (``None`` for a language model) and ``unmatched_reconstructions`` (surplus rows)."""

    sequences: list[SequenceRecord]
    order: list[int]
    label_accuracy: float | None
    unmatched_reconstructions: int = 0

    def pii_counts(self) -> dict[str, tuple[int, int]]:
        """Per PII kind: (spans recovered, spans in the batch)."""
        counts: dict[str, tuple[int, int]] = {}
        for seq in self.sequences:
            for span in seq["pii"]:
                if span["in_batch"]:
                    hit, total = counts.get(span["kind"], (0, 0))
                    counts[span["kind"]] = (hit + span["recovered"], total + 1)
        return dict(sorted(counts.items()))

    def summary(self) -> dict[str, Any]:
        """JSON-safe aggregates for metrics.json (``None`` where a share has nothing to count): the means
        over the batch of ROUGE-1/2/L F and token accuracy, the exact-sequence rate, the share of the
        batch's PII spans recovered overall and per kind, label accuracy, and the counts behind them."""
        seqs, counts = self.sequences, self.pii_counts()
        spans = sum(total for _, total in counts.values())
        recovered = sum(hit for hit, _ in counts.values())
        all_spans = sum(len(s["pii"]) for s in seqs)
        acc = self.label_accuracy
        return {
            "rouge1": _mean([s["rouge1"] for s in seqs]),
            "rouge2": _mean([s["rouge2"] for s in seqs]),
            "rougeL": _mean([s["rougeL"] for s in seqs]),
            "exact_rate": _share(sum(s["exact"] for s in seqs), len(seqs)),
            "exact_sequences": sum(s["exact"] for s in seqs),
            "token_accuracy": _mean([s["token_accuracy"] for s in seqs]),
            "pii_recovered": _share(recovered, spans),
            "pii_recovered_by_kind": {kind: _share(hit, total) for kind, (hit, total) in counts.items()},
            "pii_spans": spans,
            "pii_recovered_spans": recovered,
            "pii_unreachable": all_spans - spans,
            "label_accuracy": None if acc is None or math.isnan(acc) else acc,
            "sequences": len(seqs),
            "matched_sequences": sum(s["matched"] >= 0 for s in seqs),
            "unmatched_reconstructions": self.unmatched_reconstructions,
        }


def _rows(tokens: Tensor, name: str) -> Tensor:
    if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype.is_complex:
        raise FedleakError(f"{name} must be integer token ids B×T, got {tuple(tokens.shape)} {tokens.dtype}")
    return tokens.detach().cpu().long()


def evaluate_text(reconstruction_tokens: Tensor, truth_tokens: Tensor, decode: Callable[[list[int]], str],
                  pii: Sequence[Sequence[Span]] | None = None, *, pad_id: int,
                  labels: Tensor | None = None, recovered_labels: Tensor | None = None,
                  indices: Sequence[int] | None = None) -> TextEvaluation:
    """Score recovered token sequences (B'×T', right-padded with ``pad_id``) against the client's batch
    (B×T) as the module docstring says. ``decode`` turns ids into text dropping pad/special tokens (the
    dataset's tokenizer); ``pii[i]`` holds the recorded spans of original ``i`` (``None``: no PII recorded);
    ``labels``/``recovered_labels``: class per sequence for a classifier (``None`` for a language model);
    ``indices``: dataset index per original, for the report. Raises :class:`FedleakError` on token
    tensors that are not B×T integers, an original without a real token, or ``pii``/``labels``/``indices``
    of another length than the batch."""
    rec, orig = _rows(reconstruction_tokens, "the recovered tokens"), _rows(truth_tokens, "the batch's tokens")
    b = len(orig)
    real = (orig != pad_id).sum(1)
    if b and int(real.min()) == 0:
        raise FedleakError(f"original sequence {int(torch.argmin(real))} has no token other than the pad id {pad_id}")
    spans: Sequence[Sequence[Span]] = pii if pii is not None else [[] for _ in range(b)]
    index_list: list[int | None] = list(indices) if indices is not None else [None] * b
    for name, value in (("pii", spans), ("labels", labels), ("indices", index_list)):
        if value is not None and len(value) != b:
            raise FedleakError(f"{name} has {len(value)} entries for a batch of {b} sequences")
    originals = [decode(row[row != pad_id].tolist()) for row in orig]
    recovered = [decode(row[row != pad_id].tolist()) for row in rec]
    agreement = token_agreement(rec, orig, pad_id) if len(rec) else torch.zeros(b, 0, dtype=torch.float64)
    order = match_texts(recovered, originals, agreement)
    true = labels.detach().cpu().long().tolist() if labels is not None else None
    guessed = (recovered_labels.detach().cpu().long().tolist()
               if recovered_labels is not None and len(recovered_labels) == len(rec) else None)
    sequences: list[SequenceRecord] = []
    for i, j in enumerate(order):
        text = recovered[j] if j >= 0 else ""
        scores = rouge(originals[i], text) if j >= 0 else dict.fromkeys(ROUGE_TYPES, 0.0)
        acc = float(agreement[i, j]) if j >= 0 else 0.0
        sequences.append(SequenceRecord(
            position=i, dataset_index=index_list[i], matched=j, original=originals[i], recovered=text,
            rouge1=scores["rouge1"], rouge2=scores["rouge2"], rougeL=scores["rougeL"],
            exact=j >= 0 and acc == 1.0, token_accuracy=acc, tokens=int(real[i]),
            label=int(true[i]) if true is not None else None,
            recovered_label=int(guessed[j]) if guessed is not None and j >= 0 else None,
            pii=score_spans(spans[i], originals[i], text)))
    accuracy = None
    if labels is not None and recovered_labels is not None:  # a classifier's batch
        found = recovered_labels.detach().cpu().long()
        accuracy = label_accuracy(found, labels.detach().cpu().long()) if found.numel() else 0.0
    return TextEvaluation(sequences=sequences, order=order, label_accuracy=accuracy,
                          unmatched_reconstructions=len(rec) - sum(j >= 0 for j in order))
