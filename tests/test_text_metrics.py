"""Text scoring (fedleak.metrics.text): matching, ROUGE, exact sequences, token accuracy, PII recovered.

References are independent of the code under test: ROUGE values computed by hand (and rouge-score's own
scorer for the vectorised ROUGE-L), token counts and PII verdicts written out for hand-made batches.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

pytest.importorskip("rouge_score")

from rouge_score import rouge_scorer, tokenize  # noqa: E402

from fedleak.errors import FedleakError  # noqa: E402
from fedleak.metrics.text import RougeWords, evaluate_text, locate, rouge, rouge_l_matrix  # noqa: E402

PAD = 0


@dataclass(frozen=True)
class Span:  # the shape of fedleak.data.text.PIISpan
    kind: str
    start: int
    end: int
    text: str


class Words:
    """A word-level tokenizer for hand-made batches: one id per whitespace-separated word, 0 = pad."""

    def __init__(self) -> None:
        self.words = ["<pad>"]

    def encode(self, text: str, length: int) -> list[int]:
        ids = []
        for w in text.split():
            if w not in self.words:
                self.words.append(w)
            ids.append(self.words.index(w))
        return ids[:length] + [PAD] * (length - len(ids))

    def batch(self, texts: list[str], length: int = 12) -> torch.Tensor:
        return torch.tensor([self.encode(t, length) for t in texts])

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids if i != PAD)


def spans_of(text: str, **kinds: str) -> list[Span]:
    return [Span(kind, text.index(value), text.index(value) + len(value), value) for kind, value in kinds.items()]


def test_pii_spans_recovered_partial_and_per_kind():
    tok = Words()
    first = "Contact Anna Berg at anna.berg@example.com or 555-0142 today"
    second = "Ship to Jonas Weber , Hauptstrasse 5 , card 4111-1111-1111-1111"
    truth = tok.batch([first, second])
    recovered = tok.batch([
        "Contact Anna Berg at anna.berg@example.org or 555-0142 today",  # e-mail off by its domain
        "Ship to Jonas Webber , Hauptstrasse 5 , card 4111-1111-1111-1111",  # name off by one letter
    ])
    pii = [spans_of(first, name="Anna Berg", email="anna.berg@example.com", phone="555-0142"),
           spans_of(second, name="Jonas Weber", address="Hauptstrasse 5", card="4111-1111-1111-1111")]
    ev = evaluate_text(recovered, truth, tok.decode, pii, pad_id=PAD)
    verdicts = [[(s["kind"], s["recovered"]) for s in seq["pii"]] for seq in ev.sequences]
    assert verdicts == [[("name", True), ("email", False), ("phone", True)],
                        [("name", False), ("address", True), ("card", True)]]
    summary = ev.summary()
    assert summary["pii_spans"] == 6 and summary["pii_recovered_spans"] == 4
    assert summary["pii_recovered"] == pytest.approx(4 / 6)
    assert summary["pii_recovered_by_kind"] == {"address": 1.0, "card": 1.0, "email": 0.0, "name": 0.5, "phone": 1.0}
    # Where the span sits in each decoded text (the report marks these ranges).
    email = ev.sequences[0]["pii"][1]
    assert first[slice(*email["at_original"])] == "anna.berg@example.com" and email["at_recovered"] is None
    assert summary["pii_unreachable"] == 0


def test_pii_ignores_decode_spacing_but_not_case_and_skips_spans_outside_the_batch():
    tok = Words()
    text = "mail me : anna.berg@example.com thanks Anna"
    truth = tok.batch([text], length=5)  # "thanks Anna" is cut by the sequence length
    spaced = tok.batch(["mail me : anna . berg @ example . com"], length=10)  # WordPiece-style decode
    pii = [spans_of(text, email="anna.berg@example.com", name="Anna")]
    ev = evaluate_text(spaced, truth, tok.decode, pii, pad_id=PAD)
    email, name = ev.sequences[0]["pii"]
    assert email["recovered"] and email["in_batch"]
    assert not name["in_batch"] and not name["recovered"]
    assert ev.summary()["pii_unreachable"] == 1 and ev.summary()["pii_recovered"] == 1.0
    upper = tok.batch(["mail me : ANNA.BERG@EXAMPLE.COM"], length=5)
    assert ev.sequences[0]["pii"][0]["recovered"]
    assert not evaluate_text(upper, truth, tok.decode, pii, pad_id=PAD).sequences[0]["pii"][0]["recovered"]


def test_locate_maps_back_to_the_spaced_text_and_wants_whole_words():
    assert locate("a.b@c", "x a . b @ c y") == [2, 11]
    assert locate("a.b@d", "x a . b @ c y") is None
    assert locate("  ", "anything") is None
    assert locate("Ann", "Anna met Ann") == [9, 12]  # the first "Ann" is inside a longer word
    assert locate("Ann", "Annabel") is None and locate("Ann", "Annabel", (True, False)) == [0, 3]


def test_a_span_inside_a_longer_word_or_number_is_not_recovered():
    tok = Words()
    text = "call Ann on 555-0142 please"
    truth = tok.batch([text])
    pii = [spans_of(text, name="Ann", phone="555-0142")]
    longer = evaluate_text(tok.batch(["call Anna on 555-01423 please"]), truth, tok.decode, pii, pad_id=PAD)
    assert [s["recovered"] for s in longer.sequences[0]["pii"]] == [False, False]
    same = evaluate_text(tok.batch(["Anna : call Ann on 555-0142"]), truth, tok.decode, pii, pad_id=PAD)
    assert [s["recovered"] for s in same.sequences[0]["pii"]] == [True, True]
    # A span glued to a word in the original may be glued in the reconstruction too.
    glued = "refX7Q9 done"
    spans = [Span("code", 3, 7, "X7Q9")]
    ev = evaluate_text(tok.batch(["refX7Q9 done"]), tok.batch([glued]), tok.decode, [spans], pad_id=PAD)
    assert ev.sequences[0]["pii"][0]["recovered"] and ev.sequences[0]["pii"][0]["at_original"] == [3, 7]
    ev = evaluate_text(tok.batch(["refX7Q90 done"]), tok.batch([glued]), tok.decode, [spans], pad_id=PAD)
    assert not ev.sequences[0]["pii"][0]["recovered"]  # glued on the left only, as in the original


def test_rouge_against_hand_computed_values():
    # reference "the cat sat on the mat" (6 words), candidate "A cat sat on mat" (5 words):
    # unigrams shared: cat, sat, on, mat → P = 4/5, R = 4/6, F = 8/11;
    # bigrams shared: "cat sat", "sat on" → P = 2/4, R = 2/5, F = 4/9; LCS "cat sat on mat" = 4 → F = 8/11.
    scores = rouge("the cat sat on the mat", "A cat sat on mat")
    assert scores["rouge1"] == pytest.approx(8 / 11)
    assert scores["rouge2"] == pytest.approx(4 / 9)
    assert scores["rougeL"] == pytest.approx(8 / 11)
    # Lower-cased, punctuation separates words; Unicode letters stay inside their word.
    assert rouge("Frau Müller, Köln.", "frau müller köln") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge("Frau Müller", "Frau Muller")["rouge1"] == pytest.approx(0.5)


def test_rouge_words_are_rouge_scores_default_on_ascii():
    texts = ["Call 555-0142, or mail anna.berg@example.com!", "It's 9:30 a.m. -- OK?", "tabs\tand\nnew lines_x"]
    for text in texts:
        assert RougeWords().tokenize(text) == tokenize.tokenize(text, None)


def test_vectorised_rouge_l_equals_rouge_score():
    rng = random.Random(3)
    words = "a b c d e f".split()
    originals = [" ".join(rng.choices(words, k=rng.randint(0, 14))) for _ in range(12)]
    recovered = [" ".join(rng.choices(words, k=rng.randint(0, 14))) for _ in range(9)]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    reference = np.array([[scorer.score(o, r)["rougeL"].fmeasure for r in recovered] for o in originals])
    np.testing.assert_allclose(rouge_l_matrix(originals, recovered), reference, rtol=0, atol=1e-12)


def test_exact_and_token_accuracy_ignore_the_originals_padding():
    tok = Words()
    truth = tok.batch(["alpha beta gamma", "delta epsilon zeta eta"], length=6)  # 3 and 4 real tokens
    junk = tok.encode("junk", 1)[0]
    rec = truth.clone()
    rec[0, 3:] = junk  # tokens where the original has padding: still exact
    rec[1, 1] = junk  # one of four real tokens wrong
    ev = evaluate_text(rec, truth, tok.decode, pad_id=PAD)
    first, second = ev.sequences
    assert first["exact"] and first["token_accuracy"] == 1.0 and first["tokens"] == 3
    assert first["rouge1"] < 1.0  # the extra words do cost ROUGE precision
    assert not second["exact"] and second["token_accuracy"] == pytest.approx(3 / 4)
    summary = ev.summary()
    assert summary["exact_rate"] == 0.5 and summary["token_accuracy"] == pytest.approx((1 + 3 / 4) / 2)
    # A shorter reconstruction (T' < T) counts its missing positions as wrong.
    short = evaluate_text(truth[:, :2], truth, tok.decode, pad_id=PAD)
    assert [s["token_accuracy"] for s in short.sequences] == pytest.approx([2 / 3, 2 / 4])
    assert not any(s["exact"] for s in short.sequences)


def test_matching_undoes_a_permutation_and_breaks_rouge_ties_by_tokens():
    tok = Words()
    texts = ["one two three", "four five six seven", "eight nine", "ten eleven twelve", "thirteen fourteen"]
    truth = tok.batch(texts)
    perm = [3, 0, 4, 1, 2]  # reconstruction j is original perm[j]
    ev = evaluate_text(truth[perm], truth, tok.decode, pad_id=PAD)
    assert ev.order == [perm.index(i) for i in range(len(texts))]
    assert ev.summary()["exact_rate"] == 1.0 and ev.summary()["rouge2"] == 1.0
    assert [s["recovered"] for s in ev.sequences] == texts
    # Two ids that decode alike: ROUGE ties both pairings, token agreement decides.
    tok.words += ["x", "x"]
    x1, x2 = len(tok.words) - 2, len(tok.words) - 1
    a, b = [1, 2, x1], [1, 2, x2]
    tied = evaluate_text(torch.tensor([b, a]), torch.tensor([a, b]), tok.decode, pad_id=PAD)
    assert tied.order == [1, 0] and all(s["exact"] for s in tied.sequences)


def test_fewer_reconstructions_leave_originals_unmatched():
    tok = Words()
    truth = tok.batch(["red green", "blue yellow", "black white"])
    ev = evaluate_text(truth[[2]], truth, tok.decode, pad_id=PAD)
    assert ev.order == [-1, -1, 0]
    assert ev.sequences[0]["recovered"] == "" and ev.sequences[0]["rouge1"] == 0.0
    summary = ev.summary()
    assert summary["matched_sequences"] == 1 and summary["exact_rate"] == pytest.approx(1 / 3)
    more = evaluate_text(torch.cat([truth, truth[:1]]), truth, tok.decode, pad_id=PAD)
    assert more.summary()["unmatched_reconstructions"] == 1 and more.summary()["exact_rate"] == 1.0


def test_labels_for_a_classifier_and_none_for_a_language_model():
    tok = Words()
    truth = tok.batch(["good film", "bad film", "fine film"])
    lm = evaluate_text(truth, truth, tok.decode, pad_id=PAD)
    assert lm.summary()["label_accuracy"] is None and lm.sequences[0]["label"] is None
    clf = evaluate_text(truth[[1, 0, 2]], truth, tok.decode, pad_id=PAD, labels=torch.tensor([1, 0, 1]),
                        recovered_labels=torch.tensor([0, 1, 0]), indices=[10, 11, 12])
    assert clf.summary()["label_accuracy"] == pytest.approx(2 / 3)  # multisets {0,1,1} vs {0,0,1}
    assert [(s["label"], s["recovered_label"], s["dataset_index"]) for s in clf.sequences] == \
        [(1, 1, 10), (0, 0, 11), (1, 0, 12)]
    json.dumps({"summary": clf.summary(), "sequences": clf.sequences}, allow_nan=False)


def test_bad_inputs_raise_one_line():
    tok = Words()
    truth = tok.batch(["a b", "c d"])
    with pytest.raises(FedleakError, match="integer token ids"):
        evaluate_text(truth.float(), truth, tok.decode, pad_id=PAD)
    with pytest.raises(FedleakError, match="pii has 1 entries"):
        evaluate_text(truth, truth, tok.decode, [[]], pad_id=PAD)
    with pytest.raises(FedleakError, match="no token other than the pad id"):
        evaluate_text(truth, torch.zeros_like(truth), tok.decode, pad_id=PAD)
