"""Text datasets (issue 26): the text, hf-disk and pii loaders, PII spans, the tokenizers, bad input."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("faker")

from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402

from fedleak.data import DATASETS, load_dataset, pick_indices  # noqa: E402
from fedleak.data import tokenizer as tokenizer_module  # noqa: E402
from fedleak.data.pii import KINDS, TEMPLATES, generate  # noqa: E402
from fedleak.data.text import HOLDOUT, TextDataset  # noqa: E402
from fedleak.data.tokenizer import load_tokenizer, train_bpe  # noqa: E402
from fedleak.errors import ConfigError, DataError, FedleakError  # noqa: E402

LINES = [f"line {i}: the {'quick' if i % 2 else 'lazy'} fox number {i * 7}" for i in range(20)]


def luhn_ok(number: str) -> bool:
    """The payment-card check digit (Luhn), computed independently of Faker."""
    digits = [int(c) for c in number][::-1]
    total = sum(d if k % 2 == 0 else (2 * d - 9 if 2 * d > 9 else 2 * d) for k, d in enumerate(digits))
    return total % 10 == 0


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES[:10]) + "\n\n   \n" + "\n".join(LINES[10:]) + "\n", encoding="utf-8")
    return path


def test_the_text_loaders_are_registered():
    assert {"text", "pii", "hf-disk"} <= set(DATASETS.names())


def test_pii_spans_are_the_text_at_their_offsets_and_each_kind_looks_right():
    texts, spans = generate(300, seed=3)
    assert len(texts) == len(spans) == 300
    kinds = {s.kind for row in spans for s in row}
    assert kinds == set(KINDS)
    for text, row in zip(texts, spans):
        assert row, text  # every template carries personal data
        for s in row:
            assert text[s.start:s.end] == s.text and s.text
            if s.kind == "email":
                assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", s.text)
            elif s.kind == "card":
                assert s.text.isdigit() and 12 <= len(s.text) <= 19 and luhn_ok(s.text)
            elif s.kind == "phone":
                assert sum(c.isdigit() for c in s.text) >= 7
            elif s.kind == "address":
                assert "\n" not in s.text
        # spans do not overlap and follow the text's order
        assert all(a.end <= b.start for a, b in zip(row, row[1:]))
    assert len({t for t in texts}) > 250  # varied sentences
    assert len({re.sub(r"\s+", " ", t)[:12] for t in texts}) >= len(TEMPLATES) // 2


def test_pii_is_deterministic_for_a_seed_and_prefix_stable():
    a, sa = generate(50, seed=7)
    b, sb = generate(50, seed=7)
    c, _ = generate(50, seed=8)
    d, sd = generate(20, seed=7)
    assert a == b and sa == sb
    assert a != c
    assert a[:20] == d and sa[:20] == sd


def test_pii_locale_changes_the_values_and_a_bad_locale_is_refused():
    texts, spans = generate(40, seed=1, locale="de_DE")
    assert texts != generate(40, seed=1)[0]
    assert all(t[s.start:s.end] == s.text for t, row in zip(texts, spans) for s in row)
    with pytest.raises(ConfigError, match="locale"):
        load_dataset("pii", locale="xx_YY")
    with pytest.raises(ConfigError, match="n must be"):
        load_dataset("pii", n=0)


def test_pii_dataset_splits_tokens_and_pii_spans():
    train = load_dataset("pii", split="train", n=100, vocab_size=400)
    test = load_dataset("pii", split="test", n=100, vocab_size=400)
    assert isinstance(test, TextDataset) and test.modality == "text"
    assert (len(train), len(test)) == (100 - round(100 * HOLDOUT), round(100 * HOLDOUT))
    everything, spans = generate(100, seed=0)
    assert sorted(train.texts + test.texts) == sorted(everything) and not set(train.texts) & set(test.texts)
    by_text = dict(zip(everything, spans))
    assert all(test.pii[i] == by_text[t] for i, t in enumerate(test.texts))
    assert train.tokenizer.backend.to_str() == test.tokenizer.backend.to_str()  # trained on train, shared
    assert train.classes == ["text"] and train.labels.eq(0).all()
    batch = test.tokens([0, 3, 5])
    assert batch.dtype == torch.long and batch.shape == (3, test.seq_len)
    assert test.seq_len == max(len(test.tokenizer.encode(t)) for t in everything)  # unset: nothing cut
    for row, i in enumerate([0, 3, 5]):
        assert test.tokenizer.decode(batch[row].tolist()) == test.texts[i]  # byte-level BPE is lossless
        n = len(test.tokenizer.encode(test.texts[i]))
        assert batch[row, n:].eq(test.tokenizer.pad_id).all() and batch[row, :n].ne(test.tokenizer.pad_id).all()
    assert test.pii_in([0, 3]) == [test.pii[0], test.pii[3]]


def test_seq_len_cuts_examples_and_pii_in_keeps_only_the_spans_left_whole():
    ds = load_dataset("pii", n=60, vocab_size=300, seq_len=12)
    assert ds.tokens(range(len(ds))).shape == (len(ds), 12)
    dropped = 0
    for i in range(len(ds)):
        shown = ds.tokenizer.decode(ds.tokens([i])[0].tolist())
        assert shown == ds.texts[i][: ds.kept[i]]
        (kept,) = ds.pii_in([i])
        assert all(s.text in shown for s in kept)
        dropped += len(ds.pii[i]) - len(kept)
        assert all(s.end > ds.kept[i] for s in ds.pii[i] if s not in kept)
    assert dropped > 0  # twelve tokens of a 300-token vocabulary cut most sentences short


def test_text_file_one_example_per_line_with_a_deterministic_split(corpus_file):
    train = load_dataset("text", corpus_file, split="train", vocab_size=300)
    test = load_dataset("text", corpus_file, split="test", vocab_size=300)
    again = load_dataset("text", corpus_file, split="test", vocab_size=300)
    assert train.name == "text:corpus"
    assert len(test) == round(20 * HOLDOUT) and len(train) + len(test) == 20  # blank lines skipped
    assert sorted(train.texts + test.texts) == sorted(LINES)
    assert train.texts == [t for t in LINES if t in set(train.texts)]  # corpus order kept
    assert test.texts == again.texts
    assert test.pii == [[] for _ in test.texts]
    one = corpus_file.parent / "one.txt"
    one.write_text("just one line\n", encoding="utf-8")
    assert load_dataset("text", one, split="train").texts == load_dataset("text", one, split="test").texts


def test_text_folders_one_example_per_file_classes_and_own_splits(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, t in enumerate(LINES[:5]):
        (flat / f"{i}.txt").write_text(f"  {t}\nsecond line {i}\n", encoding="utf-8")
    (flat / "notes.md").write_text("not read", encoding="utf-8")
    ds = load_dataset("text", flat, split="train", n=5, vocab_size=300)
    assert all("\n" in t for t in ds.texts) and ds.classes == ["text"]

    tree = tmp_path / "tree"
    for split, count in (("train", 4), ("test", 2)):
        for cls in ("ham", "spam"):
            (tree / split / cls).mkdir(parents=True)
            for i in range(count):
                (tree / split / cls / f"{i}.txt").write_text(f"{cls} message {split} {i}", encoding="utf-8")
    train = load_dataset("text", tree, split="train", vocab_size=300)
    test = load_dataset("text", tree, split="test", vocab_size=300)
    assert (len(train), len(test)) == (8, 4) and test.classes == ["ham", "spam"]
    assert all(t.startswith(test.classes[int(y)]) for t, y in zip(test.texts, test.labels))
    picked = pick_indices(test, 2, classes=["spam"])
    assert test.label_of(picked).tolist() == [1, 1]


def test_hf_disk_folder_with_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["pos", "neg", "unused"])})
    parts = {split: datasets.Dataset.from_dict(
        {"sentence": [f"{split} sentence {i}" for i in range(k)], "label": [i % 2 for i in range(k)]},
        features=features) for split, k in (("train", 6), ("test", 3))}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "dd"))
    test = load_dataset("hf-disk", tmp_path / "dd", column="sentence", label_column="label", vocab_size=300)
    assert test.texts == [f"test sentence {i}" for i in range(3)]
    assert test.classes == ["pos", "neg", "unused"] and test.labels.tolist() == [0, 1, 0]
    parts["train"].save_to_disk(str(tmp_path / "one"))
    whole = load_dataset("hf-disk", tmp_path / "one", split="train", column="sentence", vocab_size=300)
    assert len(whole) == 6 - round(6 * HOLDOUT) and whole.classes == ["text"]
    with pytest.raises(DataError, match="no column 'text'"):
        load_dataset("hf-disk", tmp_path / "one")
    with pytest.raises(DataError, match="save_to_disk"):
        load_dataset("hf-disk", tmp_path)


def test_bpe_is_deterministic_and_its_special_tokens_come_first():
    texts, _ = generate(80, seed=2)
    first = train_bpe(texts, 500).backend.to_str()
    tokenizer_module._TRAINED.clear()  # train again rather than reuse the cached tokenizer
    assert train_bpe(texts, 500).backend.to_str() == first
    assert train_bpe(texts, 400).backend.to_str() != first
    tok = train_bpe(texts, 500)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.vocab_size <= 500
    assert [tok.backend.id_to_token(i) for i in range(3)] == ["<pad>", "<bos>", "<eos>"]
    assert tok.decode([tok.bos_id, *tok.encode(texts[0]), tok.eos_id, tok.pad_id, 10**6]) == texts[0]


@pytest.mark.slow
def test_bpe_is_deterministic_across_processes():
    """Rust's hash maps are seeded per process: the trained tokenizer must not depend on it."""
    texts, _ = generate(80, seed=2)
    here = hashlib.sha256(train_bpe(texts, 500).backend.to_str().encode()).hexdigest()
    script = ("import hashlib; from fedleak.data.pii import generate; from fedleak.data.tokenizer import train_bpe; "
              "print(hashlib.sha256(train_bpe(generate(80, seed=2)[0], 500).backend.to_str().encode()).hexdigest())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == here


def test_a_saved_tokenizer_folder_and_a_bare_tokenizer_json_load_back(tmp_path, corpus_file):
    tok = train_bpe(LINES, 300)
    folder = tok.save(tmp_path / "tok")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["pad_token"] == "<pad>"
    back = load_tokenizer(str(folder))
    assert back.encode(LINES[3]) == tok.encode(LINES[3]) and (back.pad_id, back.bos_id, back.eos_id) == (0, 1, 2)
    ds = load_dataset("text", corpus_file, tokenizer=str(folder))
    assert ds.tokenizer.name == "tok" and ds.tokens([0])[0, 0].item() == tok.encode(ds.texts[0])[0]

    # A tokenizer.json without special tokens: eos and bos are added, pad is eos.
    bare = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    bare.save(str(tmp_path / "bare.json"))
    plain = load_tokenizer(str(tmp_path / "bare.json"))
    assert plain.vocab_size == 5 and {plain.bos_id, plain.eos_id} == {3, 4} and plain.pad_id == plain.eos_id
    assert plain.encode("hello world") == [1, 2] and plain.decode([1, plain.eos_id, 2]) == "hello world"

    # A template with its own special tokens (BERT's [CLS] … [SEP]): kept when cut, found by their spelling.
    bert = Tokenizer(models.WordLevel({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "line": 4}, unk_token="[UNK]"))
    bert.pre_tokenizer = pre_tokenizers.Whitespace()
    bert.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    bert.add_special_tokens(["[CLS]", "[SEP]", "[PAD]"])
    bert.save(str(tmp_path / "bert.json"))
    ds = load_dataset("text", corpus_file, tokenizer=str(tmp_path / "bert.json"), seq_len=3)
    assert (ds.tokenizer.bos_id, ds.tokenizer.eos_id, ds.tokenizer.pad_id) == (1, 2, 3)
    assert ds.tokens([0])[0].tolist() == [1, 4, 2] and ds.tokenizer.decode([1, 4, 2, 3]) == "line"
    with pytest.raises(ConfigError, match="leaves no room"):
        load_dataset("text", corpus_file, tokenizer=str(tmp_path / "bert.json"), seq_len=1)


def test_bad_input_ends_in_one_line(tmp_path, corpus_file):
    def one_line(kind: type[Exception], match: str, *args, **kwargs) -> None:
        with pytest.raises(kind, match=match) as caught:
            load_dataset(*args, **kwargs)
        assert "\n" not in str(caught.value)

    one_line(DataError, "does not exist or is not a file or folder", "text", tmp_path / "missing.txt")
    one_line(DataError, "needs a data root", "text")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    one_line(DataError, "empty corpus", "text", empty)
    (tmp_path / "void").mkdir()
    one_line(DataError, "holds no .txt file", "text", tmp_path / "void")
    binary = tmp_path / "model.txt"
    binary.write_bytes(b"\x00\x01\x02binary")
    one_line(DataError, "not a text file", "text", binary)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    one_line(DataError, "not UTF-8", "text", latin)
    one_line(DataError, "neither 'bpe' nor an existing", "text", corpus_file, tokenizer=str(tmp_path / "nope"))
    one_line(DataError, "not a tokenizer folder", "text", corpus_file, tokenizer=str(tmp_path / "void"))
    (tmp_path / "junk.json").write_text("{not json", encoding="utf-8")
    one_line(DataError, "cannot read tokenizer", "text", corpus_file, tokenizer=str(tmp_path / "junk.json"))
    one_line(ConfigError, "vocab_size applies to tokenizer=bpe", "text", corpus_file,
             tokenizer=str(tmp_path / "junk.json"), vocab_size=300)
    one_line(ConfigError, "vocab_size must be", "text", corpus_file, vocab_size=10)
    one_line(ConfigError, "seq_len", "text", corpus_file, seq_len=0)
    one_line(ConfigError, "image_size and channels do not apply", "pii", image_size=32)
    one_line(FedleakError, "has no option 'column'", "text", corpus_file, column="x")
    with pytest.raises(DataError, match="out of range"):
        load_dataset("text", corpus_file).tokens([99])


def test_a_tokenizer_folder_in_a_transformers_format_is_read_with_transformers(tmp_path):
    """GPT-2's layout (vocab.json + merges.txt, no tokenizer.json) through AutoTokenizer, offline."""
    pytest.importorskip("transformers")
    tok = train_bpe(LINES, 300)
    folder = tmp_path / "gpt2-like"
    folder.mkdir()
    tok.backend.model.save(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<eos>", "bos_token": "<bos>", "pad_token": "<pad>"}))
    back = load_tokenizer(str(folder))
    assert back.encode(LINES[4]) == tok.encode(LINES[4])
    assert back.decode(back.encode(LINES[4])) == LINES[4]
    assert (back.pad_id, back.eos_id) == (tok.pad_id, tok.eos_id)


@pytest.mark.slow
def test_fedleak_imports_without_the_text_extra():
    """With tokenizers, Faker, datasets and transformers unimportable, only the image datasets register,
    and PIISpan (what the metrics read) still imports."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tokenizers', 'faker', 'datasets', 'transformers'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fedleak\n"
        "from fedleak.data import DATASETS\n"
        "from fedleak.data.pii import PIISpan\n"
        "print(','.join(DATASETS.names()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = done.stdout.strip().split(",")
    assert "samples" in names and not {"text", "pii", "hf-disk"} & set(names)
