"""The text modality's section of a run report: each original beside its matched reconstruction.

Per sequence (in batch order): the decoded original and the decoded reconstruction side by side, the
words that differ marked on both sides (``difflib.SequenceMatcher`` over whitespace-separated words:
in the original what was lost or changed, in the reconstruction what was inserted or changed), each
recorded PII span marked where it stands — recovered or not — in the original and, when recovered, in
the reconstruction, the span list with its verdict, and the scores; above them the batch's aggregates.

It renders from what :func:`fedleak.metrics.text.evaluate_text` records (``sequences``, ``summary()``:
plain JSON-safe data, the same a stored run keeps), so it imports no text-only package. The template is
autoescaped: the texts are the client's, untrusted, and come out as text, never as markup.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from markupsafe import Markup

from fedleak.report.html import render

_WORD = re.compile(r"\S+")


class TextScores(Protocol):
    """What the section reads: :class:`fedleak.metrics.text.TextEvaluation` is one."""

    @property
    def sequences(self) -> Sequence[Mapping[str, Any]]: ...

    def summary(self) -> Mapping[str, Any]: ...


def changed_words(original: str, recovered: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Char ranges ``[start, end)`` of the words that differ: in ``original`` (deleted or replaced) and
    in ``recovered`` (inserted or replaced); a run of changed words is one range."""
    a, b = list(_WORD.finditer(original)), list(_WORD.finditer(recovered))
    matcher = difflib.SequenceMatcher(None, [m.group() for m in a], [m.group() for m in b], autojunk=False)
    lost: list[tuple[int, int]] = []
    added: list[tuple[int, int]] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if i2 > i1:
            lost.append((a[i1].start(), a[i2 - 1].end()))
        if j2 > j1:
            added.append((b[j1].start(), b[j2 - 1].end()))
    return lost, added


def segments(text: str, changed: Sequence[tuple[int, int]],
             pii: Sequence[tuple[int, int, str, bool]]) -> list[dict[str, Any]]:
    """``text`` cut into runs of characters that carry the same marks: ``changed`` (a differing word),
    ``pii`` (the kind of the span covering it, or ``None``) and ``recovered`` (that span's verdict)."""
    diff = [False] * len(text)
    span: list[tuple[str, bool] | None] = [None] * len(text)
    for start, end in changed:
        diff[start:end] = [True] * (end - start)
    for start, end, kind, recovered in pii:
        span[start:end] = [(kind, recovered)] * (end - start)
    runs: list[dict[str, Any]] = []
    for i, char in enumerate(text):
        marks = (diff[i], span[i])
        if runs and runs[-1]["marks"] == marks:
            runs[-1]["text"] += char
        else:
            runs.append({"text": char, "marks": marks})
    return [{"text": r["text"], "changed": r["marks"][0], "pii": r["marks"][1][0] if r["marks"][1] else None,
             "recovered": bool(r["marks"][1] and r["marks"][1][1])} for r in runs]


def _number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """(measure, value) rows of the batch's aggregates."""
    rows = [["ROUGE-1 F", _number(summary["rouge1"])], ["ROUGE-2 F", _number(summary["rouge2"])],
            ["ROUGE-L F", _number(summary["rougeL"])],
            ["exact sequences", f"{summary['exact_sequences']}/{summary['sequences']}"],
            ["token accuracy", _number(summary["token_accuracy"])],
            ["PII recovered", f"{summary['pii_recovered_spans']}/{summary['pii_spans']} spans"
             + (f" ({_number(summary['pii_recovered'], 2)})" if summary["pii_spans"] else "")]]
    rows += [[f"PII recovered: {kind}", _number(share, 2)] for kind, share in summary["pii_recovered_by_kind"].items()]
    if summary["pii_unreachable"]:
        rows.append(["PII not in the batch (truncated or changed by the tokenizer)", str(summary["pii_unreachable"])])
    if summary["label_accuracy"] is not None:
        rows.append(["label accuracy", _number(summary["label_accuracy"], 2)])
    if summary["unmatched_reconstructions"]:
        rows.append(["reconstructions left unmatched", str(summary["unmatched_reconstructions"])])
    return rows


def sequence_view(seq: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """One sequence as the template draws it: both texts cut into marked runs, its PII list, a caption."""
    lost, added = changed_words(seq["original"], seq["recovered"])
    spans = seq["pii"]
    in_original = [(*s["at_original"], s["kind"], s["recovered"]) for s in spans if s["at_original"]]
    in_recovered = [(*s["at_recovered"], s["kind"], True) for s in spans if s["at_recovered"]]

    def name(label: int | None) -> str:
        return "" if label is None else classes[label] if 0 <= label < len(classes) else "?"

    where = f"index {seq['dataset_index']}" if seq["dataset_index"] is not None else f"#{seq['position']}"
    caption = [where, "exact" if seq["exact"] else "not exact",
               f"ROUGE-1 {seq['rouge1']:.2f}", f"ROUGE-2 {seq['rouge2']:.2f}", f"ROUGE-L {seq['rougeL']:.2f}",
               f"token accuracy {seq['token_accuracy']:.2f} of {seq['tokens']}"]
    if seq["label"] is not None:
        caption.insert(1, f"class {name(seq['label'])}, recovered {name(seq['recovered_label']) or 'none'}")
    if seq["matched"] < 0:
        caption.insert(1, "no reconstruction matched")
    return {"position": seq["position"], "caption": " · ".join(caption), "exact": seq["exact"],
            "original": segments(seq["original"], lost, in_original),
            "recovered": segments(seq["recovered"], added, in_recovered),
            "pii": [{"kind": s["kind"], "text": s["text"],
                     "verdict": "recovered" if s["recovered"] else "not recovered" if s["in_batch"] else "not in the batch"}
                    for s in spans]}


def text_section(evaluation: TextScores, classes: Sequence[str] = ()) -> Markup:
    """The HTML fragment (``<section id="text-reconstruction">``) for a run report's page: the
    aggregates and, per sequence, :func:`sequence_view`. ``classes``: class names of a classifier's
    labels (unused for a language model)."""
    return Markup(render("text_section.html.j2", rows=summary_rows(evaluation.summary()),
                         sequences=[sequence_view(s, classes) for s in evaluation.sequences]))
