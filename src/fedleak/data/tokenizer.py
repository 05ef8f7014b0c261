"""Tokenizers for text datasets: a local Hugging Face tokenizer, or a byte-level BPE trained on the corpus.

Everything runs on a ``tokenizers.Tokenizer``; nothing is downloaded.

* ``tokenizer="bpe"``: fedleak trains a byte-level BPE (GPT-2's scheme: every byte is in the alphabet,
  so any text encodes and ``decode(encode(t)) == t``) on the corpus with ``tokenizers``' trainer, at
  most ``vocab_size`` tokens including ``<pad>`` (id 0), ``<bos>`` (1) and ``<eos>`` (2). The same
  texts and ``vocab_size`` give the same tokenizer (checked across processes by the tests).
* ``tokenizer=PATH``: a ``tokenizer.json`` file, or a folder that holds one (its special tokens are read
  from ``tokenizer_config.json`` / ``special_tokens_map.json`` beside it), or a folder in another format
  ``transformers`` reads (``AutoTokenizer.from_pretrained(PATH, local_files_only=True)``, e.g. GPT-2's
  ``vocab.json`` + ``merges.txt``). A missing padding token is the end-of-sequence token (Hugging Face's
  convention for GPT-2); a missing beginning/end token is added as ``<bos>``/``<eos>`` (the
  vocabulary grows by one).

``encode`` applies the tokenizer's own template (BERT's ``[CLS] … [SEP]``; nothing for GPT-2 or the
trained BPE); ``decode`` drops padding and every special token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Encoding, Tokenizer, decoders, models, pre_tokenizers, trainers

from fedleak.errors import ConfigError, DataError

BPE = "bpe"
SPECIALS = ("<pad>", "<bos>", "<eos>")  # the trained BPE's ids 0, 1, 2
DEFAULT_VOCAB = 2048
MAX_VOCAB = 1 << 20
# Conventional spellings, tried in order when a tokenizer's config does not name its special tokens.
_CONVENTIONAL = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "bos": ("<bos>", "<s>", "[CLS]", "<|begin_of_text|>", "<|endoftext|>"),
    "eos": ("<eos>", "</s>", "[SEP]", "<|end_of_text|>", "<|endoftext|>"),
}
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# Files a tokenizer folder in a transformers format holds (one at least); without any, a folder is refused
# before transformers is imported.
_TOKENIZER_FILES = ("tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model", "tokenizer.tiktoken")


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with its padding, beginning and end token ids.

    ``vocab_size`` counts every id the tokenizer can produce (added tokens included): a model's
    embedding needs that many rows.
    """

    def __init__(self, backend: Tokenizer, name: str, pad_id: int, bos_id: int, eos_id: int) -> None:
        backend.no_padding()  # a tokenizer.json's own padding or truncation would hide the text's length
        backend.no_truncation()
        self.backend = backend
        self.name = name
        self.pad_id = pad_id
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._truncating: dict[int, Tokenizer] = {}

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id})"

    def encoding(self, text: str, max_length: int | None = None) -> Encoding:
        """The tokenizer's encoding of ``text`` (ids and character offsets), at most ``max_length``
        tokens (special tokens of the template kept, the text's own tokens cut from the end)."""
        if max_length is None:
            return self.backend.encode(text)
        if max_length not in self._truncating:
            clone = Tokenizer.from_str(self.backend.to_str())
            clone.no_padding()
            clone.enable_truncation(max_length)
            self._truncating[max_length] = clone
        return self._truncating[max_length].encode(text)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Token ids of ``text`` (at most ``max_length``)."""
        return list(self.encoding(text, max_length).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; padding, special tokens and ids outside the vocabulary are dropped."""
        kept = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) != self.pad_id]
        return self.backend.decode(kept, skip_special_tokens=True)

    def save(self, folder: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (the special tokens) into ``folder``,
        which :func:`load_tokenizer` (and ``transformers``' ``AutoTokenizer``) read back."""
        out = Path(folder)
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.backend.save(str(out / "tokenizer.json"))
            names = {key: self.backend.id_to_token(i) for key, i in
                     (("pad_token", self.pad_id), ("bos_token", self.bos_id), ("eos_token", self.eos_id))}
            (out / "tokenizer_config.json").write_text(
                json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **names}, indent=1), encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot write the tokenizer to {out}: {exc.strerror or exc}") from None
        return out


def train_bpe(texts: Sequence[str], vocab_size: int = DEFAULT_VOCAB) -> TextTokenizer:
    """A byte-level BPE of at most ``vocab_size`` tokens trained on ``texts`` (see the module doc);
    the same texts and size give the same tokenizer, cached for repeated loads."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or not len(SPECIALS) + 256 <= vocab_size <= MAX_VOCAB:
        raise ConfigError(f"vocab_size must be an integer from {len(SPECIALS) + 256} (the bytes and "
                          f"{len(SPECIALS)} special tokens) to {MAX_VOCAB}, got {vocab_size!r}")
    if not any(t.strip() for t in texts):
        raise DataError("cannot train a tokenizer on an empty corpus")
    digest = hashlib.sha256(str(vocab_size).encode())
    for t in texts:
        digest.update(t.encode("utf-8", "surrogatepass") + b"\0")
    key = digest.hexdigest()
    if key not in _TRAINED:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer, length=len(texts))
        while len(_TRAINED) >= _CACHED:
            _TRAINED.pop(next(iter(_TRAINED)))
        _TRAINED[key] = tok.to_str()
    return TextTokenizer(Tokenizer.from_str(_TRAINED[key]), f"{BPE}:{vocab_size}", 0, 1, 2)


_TRAINED: dict[str, str] = {}  # sha256 of (vocab_size, texts) → the trained tokenizer, serialised
_CACHED = 8  # trained tokenizers kept (a train and a test load of one corpus train it once)


def load_tokenizer(spec: str, corpus: Sequence[str] = (), vocab_size: int | None = None) -> TextTokenizer:
    """``spec`` = ``"bpe"`` (trained on ``corpus``, ``vocab_size`` tokens at most) or a local path
    (a ``tokenizer.json`` or a tokenizer folder; ``vocab_size`` must then be unset)."""
    if spec == BPE:
        return train_bpe(corpus, DEFAULT_VOCAB if vocab_size is None else vocab_size)
    if vocab_size is not None:
        raise ConfigError(f"vocab_size applies to tokenizer=bpe only; the tokenizer {spec!r} has its own vocabulary")
    path = Path(spec).expanduser()
    if path.is_file():
        own = path.name == "tokenizer.json"  # a folder's file: named after the folder, its config read
        return _with_specials(_from_file(path), path.parent.name if own else path.name,
                              _named_specials(path.parent) if own else {})
    if not path.is_dir():
        raise DataError(f"tokenizer {spec!r} is neither 'bpe' nor an existing tokenizer.json or tokenizer folder")
    if (path / "tokenizer.json").is_file():
        return _with_specials(_from_file(path / "tokenizer.json"), path.name, _named_specials(path))
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise DataError(f"{path} is not a tokenizer folder: it holds no tokenizer.json (nor {', '.join(_TOKENIZER_FILES[1:4])}, …)")
    backend, named = _from_transformers(path)
    return _with_specials(backend, path.name, named)


def _from_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # a foreign file: tokenizers raises its own Exception subclass with the parse error
        raise DataError(f"cannot read tokenizer {path}: {_first_line(exc)}") from None


def _from_transformers(folder: Path) -> tuple[Tokenizer, dict[str, str]]:
    """A folder without ``tokenizer.json``, converted by ``transformers`` (a fast tokenizer)."""
    try:
        from transformers import AutoTokenizer  # optional dependency (the text extra), seconds to import
    except ImportError:
        raise DataError(f"{folder} has no tokenizer.json; reading other tokenizer formats needs transformers "
                        "(pip install 'fedleak[text]')") from None
    try:
        loaded: Any = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        backend = loaded.backend_tokenizer
    except Exception as exc:  # transformers raises OSError, ValueError, … for a folder it cannot read
        raise DataError(f"{folder} is not a tokenizer folder transformers can read: {_first_line(exc)}") from None
    named = {key: str(getattr(loaded, f"{key}_token")) for key in _CONVENTIONAL
             if getattr(loaded, f"{key}_token", None) is not None}
    return backend, named


def _named_specials(folder: Path) -> dict[str, str]:
    """``{pad, bos, eos}`` → token text, as the folder's config files name them (a string or
    ``{"content": …}``); the first file that names a token wins."""
    named: dict[str, str] = {}
    for file in _CONFIG_FILES:
        try:
            data = json.loads((folder / file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # absent or unreadable: the conventional spellings are tried instead
        if not isinstance(data, dict):
            continue
        for key in _CONVENTIONAL:
            value = data.get(f"{key}_token")
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and key not in named:
                named[key] = value
    return named


def _with_specials(backend: Tokenizer, name: str, named: dict[str, str]) -> TextTokenizer:
    """Resolve pad/bos/eos: named by the config, else a conventional spelling in the vocabulary; a
    missing pad is eos, a missing bos/eos is added (see the module doc)."""
    eos = _find(backend, "eos", named)
    eos = _added(backend, "<eos>") if eos is None else eos
    bos = _find(backend, "bos", named)
    bos = _added(backend, "<bos>") if bos is None else bos
    pad = _find(backend, "pad", named)
    return TextTokenizer(backend, name, eos if pad is None else pad, bos, eos)


def _find(backend: Tokenizer, key: str, named: dict[str, str]) -> int | None:
    """The id of special token ``key`` (the config's spelling first, then the conventional ones)."""
    for spelling in ([named[key]] if key in named else []) + list(_CONVENTIONAL[key]):
        found = backend.token_to_id(spelling)
        if found is not None:
            return int(found)
    return None


def _added(backend: Tokenizer, token: str) -> int:
    backend.add_special_tokens([token])
    found = backend.token_to_id(token)
    if found is None:  # tokenizers refused to add it (a corrupt file): no usable special token
        raise DataError(f"cannot add the special token {token} to the tokenizer")
    return int(found)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
