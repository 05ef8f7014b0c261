"""The text section of a run report (fedleak.report.text): escaped client text, marked PII and diffs."""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser

import pytest
import torch

pytest.importorskip("rouge_score")

from jinja2 import Environment  # noqa: E402
from markupsafe import Markup  # noqa: E402

from fedleak.errors import ConfigError  # noqa: E402
from fedleak.metrics.text import evaluate_text  # noqa: E402
from fedleak.report.sections import SECTIONS, reconstruction_section  # noqa: E402
from fedleak.report.text import changed_words, segments, text_section  # noqa: E402

PAD = 0


@dataclass(frozen=True)
class Span:
    kind: str
    start: int
    end: int
    text: str


class Marks(HTMLParser):
    """(tag, class, data-kind, text) of every <span> and the text of each original/recovered column."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[str, str, str]] = []
        self.columns: dict[str, list[str]] = {"original": [], "recovered": []}
        self._open: list[dict[str, str]] = []
        self._column: str | None = None
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        if tag == "div" and "text" in attributes.get("class", "").split():
            self._column = attributes["class"].split()[-1]
        if tag == "span":
            self._open.append({**attributes, "data": ""})

    def handle_endtag(self, tag):
        if tag == "span":
            s = self._open.pop()
            self.spans.append((s.get("class", ""), s.get("data-kind", ""), s["data"]))
        if tag == "div" and self._column and not self._open:
            self._column = None

    def handle_data(self, data):
        for s in self._open:
            s["data"] += data
        if self._column:
            self.columns[self._column].append(data)


def words_tokenizer(sentences: list[str], length: int = 12):
    vocab = ["<pad>"]
    rows = []
    for sentence in sentences:
        ids = [vocab.index(w) if w in vocab else vocab.append(w) or len(vocab) - 1 for w in sentence.split()]
        rows.append(ids + [PAD] * (length - len(ids)))
    return torch.tensor(rows), vocab


def evaluation(original: list[str], recovered: list[str], pii):
    tokens, vocab = words_tokenizer(original + recovered)
    decode = lambda ids: " ".join(vocab[i] for i in ids if i != PAD)  # noqa: E731
    return evaluate_text(tokens[len(original):], tokens[:len(original)], decode, pii, pad_id=PAD)


def test_changed_words_on_a_hand_example():
    lost, added = changed_words("the cat sat on the mat", "the dog sat on a red mat")
    assert lost == [(4, 7), (15, 18)]  # "cat", "the"
    assert added == [(4, 7), (15, 20)]  # "dog", "a red"


def test_segments_carry_both_marks():
    parts = segments("call anna now", [(10, 13)], [(5, 9, "name", True)])
    assert [(p["text"], p["changed"], p["pii"], p["recovered"]) for p in parts] == [
        ("call ", False, None, False), ("anna", False, "name", True), (" ", False, None, False),
        ("now", True, None, False)]


def test_client_text_is_escaped():
    text = "<script>alert(1)</script> & <b>bold</b> reply"
    html = text_section(evaluation([text], [text], [[]]))
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&amp;" in html
    page = Marks()
    page.feed(str(html))
    assert page.scripts == 0
    assert "".join(page.columns["original"]) == text == "".join(page.columns["recovered"])


def test_pii_and_differences_are_marked():
    original = "Mail Anna Berg at anna.berg@example.com or call 555-0142"
    recovered = "Mail Anna Bergh at anna.berg@example.com or call 555-0142"
    pii = [[Span("name", 5, 14, "Anna Berg"), Span("email", 18, 39, "anna.berg@example.com"),
            Span("phone", 48, 56, "555-0142")]]
    ev = evaluation([original], [recovered], pii)
    assert [s["recovered"] for s in ev.sequences[0]["pii"]] == [False, True, True]
    page = Marks()
    page.feed(str(text_section(ev)))
    assert "".join(page.columns["original"]) == original and "".join(page.columns["recovered"]) == recovered
    spans = set(page.spans)
    assert ("lost pii missed", "name", "Berg") in spans  # the changed word inside the missed name
    assert ("pii missed", "name", "Anna ") in spans
    assert ("pii recovered", "email", "anna.berg@example.com") in spans
    assert ("pii recovered", "phone", "555-0142") in spans
    assert ("added", "", "Bergh") in spans  # the recovered side marks the word that differs
    assert not any(c == "pii missed" and text == "anna.berg@example.com" for c, _, text in spans)
    html = str(text_section(ev))
    assert "name: <q>Anna Berg</q> — not recovered" in html and "email: <q>anna.berg@example.com</q> — recovered" in html
    assert "PII recovered: name" in html and "2/3 spans" in html


def test_the_registry_keys_sections_by_modality():
    ev = evaluation(["hello there"], ["hello there"], [[]])
    section = reconstruction_section("text", ev)
    assert isinstance(section, Markup) and 'id="text-reconstruction"' in section
    assert reconstruction_section("image", ev) is None  # the page draws images itself
    assert "text" in SECTIONS
    with pytest.raises(ConfigError, match="unknown report section"):
        SECTIONS.get("audio")
    # Included in an autoescaping page it is markup, not escaped a second time.
    page = Environment(autoescape=True).from_string("<body>{{ section }}</body>").render(section=section)
    assert '<section id="text-reconstruction">' in page


def test_a_text_table_explains_its_own_no_leak_baseline():
    """Regression: the study page explained a text table's no-leak ROUGE with the image baselines
    (mean colour, another image)."""
    from fedleak.report.study import NO_LEAK_NOTE, TEXT_NO_LEAK_NOTE, table_notes

    text = table_notes([{"rouge1": 0.5, "rouge1_no_leak": 0.1}])
    assert TEXT_NO_LEAK_NOTE in text and NO_LEAK_NOTE not in text
    images = table_notes([{"psnr": 20.0, "psnr_no_leak": 12.0}])
    assert NO_LEAK_NOTE in images and TEXT_NO_LEAK_NOTE not in images
