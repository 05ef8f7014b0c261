"""The text run's page: ROUGE, exact sequences and PII recovered beside what another sentence of the
corpus scores, and each original beside its reconstruction (:mod:`fedleak.report.text`).

Imports no text package (it renders what :mod:`fedleak.metrics.text` computed), so it registers
whether or not the text extra is installed."""

from __future__ import annotations

import json
from typing import Any

from fedleak.pipeline import RunResult
from fedleak.report.pages import PAGES, Page, Parts
from fedleak.report.text import text_section


def _number(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def text_summary(result: RunResult, base: dict[str, Any]) -> dict[str, str]:
    """A text run's scores, the other-sentence baseline's ROUGE-1 beside its own, and the attack's cost."""
    m = result.metrics()
    other = base.get("other_text") or {}
    return {
        "ROUGE-1": _number(m["rouge1"]),
        "no-leak ROUGE-1": _number(other.get("rouge1")),
        "ROUGE-L": _number(m["rougeL"]),
        "exact": f"{m['exact_sequences']}/{m['sequences']}",
        "token accuracy": _number(m["token_accuracy"]),
        "PII recovered": f"{m['pii_recovered_spans']}/{m['pii_spans']}",
        **({"label accuracy": _number(m["label_accuracy"], 2)} if m.get("label_accuracy") is not None else {}),
        "attack s": f"{m['attack_seconds']:.1f}",
        "seed": str(m["seed"]),
    }


def text_parts(result: RunResult, base: dict[str, Any]) -> Parts:
    """``sequences.json`` (each original, its reconstruction, their scores and PII) and the page's section."""
    sequences = result.evaluation.sequences
    return Parts(files={"sequences.json": json.dumps(sequences, indent=2, ensure_ascii=False).encode()},
                 page={"section": text_section(result.evaluation, result.dataset.classes),
                       "display": {"width": 0, "height": 0}})


PAGES.register("text")(Page(text_summary, text_parts))
