"""Token-sequence datasets: :class:`TextDataset` and the ``text``, ``hf-disk`` and ``pii`` loaders.

Sources (nothing is downloaded):

* ``text``: ``root`` is a UTF-8 text file, one example per non-blank line; or a folder of ``.txt``
  files, one example per file (class ``text``), or of sub-folders of ``.txt`` files, one class per
  sub-folder (used when the folder holds no ``.txt`` file itself). A folder with ``train/`` and
  ``test/`` uses the one asked for, each read as just said. Examples are stripped of surrounding
  whitespace; blank ones are skipped.
* ``hf-disk``: ``root`` is a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a
  ``DatasetDict``); the text is ``column``, class labels ``label_column`` (a ``ClassLabel``, integers
  ≥ 0 or strings; without it every example is class ``text``).
* ``pii``: :func:`fedleak.data.pii.generate` — ``n`` Faker sentences of ``seed`` and ``locale`` with
  their PII spans; ``root`` is not used.

Splits: a source with its own (``train/`` + ``test/``, a ``DatasetDict`` with ``train`` and ``test``
or ``validation``) uses them; any other corpus is split here, the same way every time: a seeded
permutation (seed 0) puts :data:`HOLDOUT` of the examples (at least one) in ``test`` and the rest in
``train``, each kept in corpus order (a one-example corpus is both splits). ``n`` keeps the first
``n`` examples of each source split before that.

The tokenizer (``tokenizer="bpe"`` or a local path, :mod:`fedleak.data.tokenizer`) is trained on the
``train`` split, so the two splits of one corpus share token ids. ``seq_len`` is the number of tokens
per example: longer ones are cut, shorter ones right-padded with the tokenizer's pad id; unset, it is
the longest example of both splits (nothing is cut).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import torch
from torch import Tensor

from fedleak.data import pii as pii_corpus
from fedleak.data.pii import PIISpan
from fedleak.data.registry import DATASETS, FILE_ROOTS, Loader, require_root
from fedleak.data.tokenizer import BPE, TextTokenizer, load_tokenizer
from fedleak.errors import ConfigError, DataError

HOLDOUT = 0.2  # share of a corpus without its own splits that goes to ``test``
MAX_SEQ_LEN = 1 << 16
PLAIN = "text"  # the one class of a corpus without labels
PII_EXAMPLES = 512  # the pii corpus's default size
Fn = TypeVar("Fn", bound=Callable[..., Any])


@dataclass(frozen=True)
class TextDataset:
    """Texts, their class per example, the tokenizer and the recorded PII spans.

    ``ids[i]`` are the tokens of ``texts[i]`` (at most ``seq_len``), covering its first ``kept[i]``
    characters; ``pii[i]`` are the spans recorded in ``texts[i]`` (empty for corpora without them).
    """

    name: str
    texts: list[str]
    labels: Tensor
    classes: list[str]
    tokenizer: TextTokenizer
    seq_len: int
    pii: list[list[PIISpan]]
    ids: list[list[int]] = field(repr=False)
    kept: list[int] = field(repr=False)
    modality: ClassVar[str] = "text"

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check_index(self, index: int) -> None:
        """Raise a one-line :class:`DataError` unless ``index`` addresses an example (0 … N − 1)."""
        if not 0 <= int(index) < len(self):
            raise DataError(f"index {index} is out of range for {self.name} (0 to {len(self) - 1})")

    def label_of(self, indices: Sequence[int]) -> Tensor:
        for i in indices:
            self.check_index(i)
        return self.labels[torch.as_tensor(list(indices), dtype=torch.long)]

    def class_index(self, name_or_index: str | int) -> int:
        """Resolve a class given by name or number."""
        key = str(name_or_index)
        if key in self.classes:
            return self.classes.index(key)
        if key.lstrip("-").isdigit() and 0 <= int(key) < self.num_classes:
            return int(key)
        raise DataError(f"{self.name} has no class {key!r}; classes: {', '.join(self.classes[:20])}"
                        + (" …" if self.num_classes > 20 else ""))

    def tokens(self, indices: Sequence[int]) -> Tensor:
        """The examples at ``indices`` as an int64 B×``seq_len`` batch, right-padded with the pad id."""
        for i in indices:
            self.check_index(i)
        batch = torch.full((len(indices), self.seq_len), self.tokenizer.pad_id, dtype=torch.long)
        for row, i in enumerate(indices):
            ids = self.ids[int(i)]
            batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return batch

    def pii_in(self, indices: Sequence[int]) -> list[list[PIISpan]]:
        """Per example at ``indices``, its PII spans that lie wholly in the characters its tokens keep
        (the spans the client's batch holds; a span cut by ``seq_len`` is not in it)."""
        for i in indices:
            self.check_index(i)
        return [[s for s in self.pii[int(i)] if s.end <= self.kept[int(i)]] for i in indices]


@dataclass(frozen=True)
class Corpus:
    """Examples of one split before tokenising: texts, class names per example, PII spans."""

    texts: list[str]
    labels: list[str]
    pii: list[list[PIISpan]]

    def head(self, n: int | None) -> Corpus:
        return self if n is None else Corpus(self.texts[:n], self.labels[:n], self.pii[:n])

    def pick(self, indices: Sequence[int]) -> Corpus:
        return Corpus([self.texts[i] for i in indices], [self.labels[i] for i in indices],
                      [self.pii[i] for i in indices])


def plain(texts: list[str], label: str = PLAIN) -> Corpus:
    return Corpus(texts, [label] * len(texts), [[] for _ in texts])


def register_text(name: str, file_root: bool = False) -> Callable[[Fn], Fn]:
    """Register a text loader in :data:`~fedleak.data.registry.DATASETS` (whose loader type still
    names :class:`~fedleak.data.base.ImageDataset`: hence the cast); ``file_root``: its root may be a file."""

    def add(fn: Fn) -> Fn:
        DATASETS.register(name)(cast(Loader, fn))
        if file_root:
            FILE_ROOTS.add(name)
        return fn

    return add


def build(name: str, splits: dict[str, Corpus], split: str, tokenizer: str, vocab_size: int | None,
          seq_len: int | None, n: int | None, classes: Sequence[str] | None = None) -> TextDataset:
    """The :class:`TextDataset` of ``split`` from a source's ``splits`` (``train`` and ``test``, or
    ``all``), as the module doc describes. ``classes`` fixes the class names in order (a
    ``ClassLabel``'s); otherwise they are ``0 … max`` for integer labels, the sorted names met for others."""
    if n is not None and not 1 <= n <= 1 << 31:
        raise ConfigError(f"{name}: option n must be at least 1, got {n}")
    if seq_len is not None and not 1 <= seq_len <= MAX_SEQ_LEN:
        raise ConfigError(f"{name}: option seq_len must be from 1 to {MAX_SEQ_LEN}, got {seq_len}")
    parts = {key: corpus.head(n) for key, corpus in splits.items()}
    for key, corpus in parts.items():
        if not corpus.texts:
            raise DataError(f"{name} holds no text (an empty corpus)" if key == "all"
                            else f"{name} holds no text in its {key} split")
    if "all" in parts:
        parts = holdout(parts["all"])
    tok = load_tokenizer(tokenizer, parts["train"].texts if tokenizer == BPE else (), vocab_size)
    chosen = parts[split]
    if classes is None:
        met = {label for corpus in parts.values() for label in corpus.labels}
        numbers = all(c.isdigit() for c in met)
        classes = [str(c) for c in range(max(map(int, met)) + 1)] if numbers else sorted(met)
    index = {c: i for i, c in enumerate(classes)}
    if seq_len is None:
        seq_len = max(len(e.ids) for corpus in parts.values() for e in tok.backend.encode_batch(corpus.texts))
    encodings = [tok.encoding(t, seq_len) for t in chosen.texts]
    longest = max(len(e.ids) for e in encodings)
    if longest > seq_len:  # tokenizers does not cut into the template's own special tokens
        raise ConfigError(f"{name}: seq_len {seq_len} leaves no room for the text beside the tokenizer's "
                          f"special tokens ({longest} tokens); raise it")
    return TextDataset(
        name=name, texts=list(chosen.texts),
        labels=torch.tensor([index[label] for label in chosen.labels], dtype=torch.long),
        classes=list(classes), tokenizer=tok, seq_len=seq_len, pii=list(chosen.pii),
        ids=[list(e.ids) for e in encodings],
        kept=[max((end for _, end in e.offsets), default=0) for e in encodings],
    )


def holdout(corpus: Corpus) -> dict[str, Corpus]:
    """``train`` and ``test`` of a corpus without its own splits (see the module doc)."""
    size = len(corpus.texts)
    if size < 2:
        return {"train": corpus, "test": corpus}
    order = torch.randperm(size, generator=torch.Generator().manual_seed(0)).tolist()
    cut = max(1, round(size * HOLDOUT))
    return {"train": corpus.pick(sorted(order[cut:])), "test": corpus.pick(sorted(order[:cut]))}


def _no_images(name: str, image_size: Any, channels: Any) -> None:
    if image_size is not None or channels is not None:
        raise ConfigError(f"dataset {name!r} holds text: image_size and channels do not apply (leave them unset)")


def read_text(path: Path) -> str:
    """A file's text: UTF-8 (a byte-order mark is dropped), refused with one line when it is not."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\0" in data:
        raise DataError(f"{path} is not a text file (it holds NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None


def _text_files(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc.strerror or exc}") from None
    return [p for p in entries if p.is_file() and p.suffix.lower() == ".txt"]


def _read_folder(folder: Path) -> Corpus:
    """One example per ``.txt`` file, or one class per sub-folder of them (see the module doc)."""
    files = _text_files(folder)
    if files:
        return plain([t for t in (read_text(p).strip() for p in files) if t])
    texts: list[str] = []
    labels: list[str] = []
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        found = [t for t in (read_text(p).strip() for p in _text_files(sub)) if t]
        texts += found
        labels += [sub.name] * len(found)
    if not texts:
        raise DataError(f"{folder} holds no .txt file with text (neither itself nor in sub-folders)")
    return Corpus(texts, labels, [[] for _ in texts])


@register_text("text", file_root=True)
def load_text(root: Path | None, split: str, image_size: int | None, channels: int | None,
              tokenizer: str = BPE, vocab_size: int | None = None, seq_len: int | None = None,
              n: int | None = None) -> TextDataset:
    """A text file (one example per line) or a folder of ``.txt`` files (see the module doc)."""
    _no_images("text", image_size, channels)
    root = require_root("text", root)
    if root.is_file():
        splits = {"all": plain([line.strip() for line in read_text(root).splitlines() if line.strip()])}
    elif (root / "train").is_dir() and (root / "test").is_dir():
        splits = {key: _read_folder(root / key) for key in ("train", "test")}
    else:
        splits = {"all": _read_folder(root)}
    return build(f"text:{root.stem if root.is_file() else root.name}", splits, split, tokenizer, vocab_size,
                 seq_len, n)


@register_text("pii")
def load_pii(root: Path | None, split: str, image_size: int | None, channels: int | None,
             tokenizer: str = BPE, vocab_size: int | None = None, seq_len: int | None = None,
             n: int = PII_EXAMPLES, seed: int = 0, locale: str = "en_US") -> TextDataset:
    """``n`` generated sentences with PII (:mod:`fedleak.data.pii`), split as the module doc says."""
    _no_images("pii", image_size, channels)
    texts, spans = pii_corpus.generate(n, seed, locale)
    return build("pii", {"all": Corpus(texts, [PLAIN] * len(texts), spans)}, split, tokenizer, vocab_size,
                 seq_len, None)


@register_text("hf-disk")
def load_hf_disk(root: Path | None, split: str, image_size: int | None, channels: int | None,
                 tokenizer: str = BPE, vocab_size: int | None = None, seq_len: int | None = None,
                 n: int | None = None, column: str = "text", label_column: str | None = None) -> TextDataset:
    """A ``datasets`` folder saved with ``save_to_disk`` (see the module doc)."""
    _no_images("hf-disk", image_size, channels)
    root = require_root("hf-disk", root)
    try:
        import datasets  # type: ignore[import-untyped]  # optional dependency (the text extra); seconds to import, so only here
    except ImportError:
        raise DataError("dataset 'hf-disk' needs the datasets package: pip install 'fedleak[text]'") from None
    try:
        loaded: Any = datasets.load_from_disk(str(root))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, … for a foreign folder
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{root} is not a folder written by datasets' save_to_disk: {text}") from None
    parts = _disk_splits(root, loaded if isinstance(loaded, datasets.DatasetDict) else {"all": loaded})
    splits = {key: _disk_corpus(root, key, part, column, label_column, datasets.ClassLabel)
              for key, part in parts.items()}
    feature = next(iter(parts.values())).features.get(label_column) if label_column else None
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return build(f"hf-disk:{root.name}", splits, split, tokenizer, vocab_size, seq_len, n, names)


def _disk_splits(root: Path, parts: Any) -> dict[str, Any]:
    """``train`` and ``test`` (or ``validation``) of a ``DatasetDict``, or its one split as ``all``."""
    names = list(parts)
    test = "test" if "test" in names else "validation" if "validation" in names else None
    if "train" in names and test is not None:
        return {"train": parts["train"], "test": parts[test]}
    if len(names) == 1:
        return {"all": parts[names[0]]}
    raise DataError(f"{root} holds the splits {', '.join(names)}: fedleak reads train with test (or validation), "
                    "or a single split")


def _disk_corpus(root: Path, key: str, part: Any, column: str, label_column: str | None, class_label: Any) -> Corpus:
    """One split's ``column`` (strings) and ``label_column`` (class names) as a :class:`Corpus`."""
    for wanted in (column, label_column):
        if wanted is not None and wanted not in part.column_names:
            raise DataError(f"{root} ({key}) has no column {wanted!r}; columns: {', '.join(part.column_names)}")
    texts = list(part[column])
    if not all(isinstance(t, str) for t in texts):
        raise DataError(f"{root} ({key}): column {column!r} does not hold strings; name the text column with column=…")
    if label_column is None:
        labels = [PLAIN] * len(texts)
    else:
        values = list(part[label_column])
        feature = part.features[label_column]
        if isinstance(feature, class_label):
            labels = [str(feature.int2str(int(v))) for v in values]
        elif all(isinstance(v, str) for v in values):
            labels = values
        elif all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            labels = [str(v) for v in values]
        else:
            raise DataError(f"{root} ({key}): label column {label_column!r} must hold strings or integers ≥ 0")
    kept = [(t.strip(), y) for t, y in zip(texts, labels) if t.strip()]
    return Corpus([t for t, _ in kept], [y for _, y in kept], [[] for _ in kept])
