"""Text models from ``transformers`` configs: GPT-2- and LLaMA-style decoder LMs and BERT/GPT-2/LLaMA sequence classifiers.

Both wrappers are plain ``nn.Module``\\ s taking int64 token ids B×T (right-padded with ``pad_id``)
and returning logits that ``F.cross_entropy(model(tokens), labels)`` scores, so the whole FL stack
(protocols, defenses, FedAvg, aggregation) runs on them unchanged:

- :class:`CausalLM` (a ``GPT2LMHeadModel`` or ``LlamaForCausalLM``, or any causal LM of a pretrained folder): logits of the
  next token at positions 0…T−2, transposed to B×V×(T−1); its labels are :func:`lm_targets`
  (``tokens[:, 1:]`` with pad positions −100, cross-entropy's ``ignore_index``), so the loss is the
  mean next-token cross-entropy over the real tokens — what ``GPT2LMHeadModel(labels=…)`` computes.
- :class:`SequenceClassifier` (``BertForSequenceClassification`` or ``GPT2ForSequenceClassification``):
  B×C logits; labels are class indices.

The attention mask is ``tokens != pad_id``. Dropout is off unless the ``dropout`` option says
otherwise (an FL update is then a deterministic function of the batch, as attacks assume); attention
is transformers' ``eager`` implementation (written-out softmax attention: gradients of gradients and
``vmap`` work through it). The builders' ``in_channels`` and ``image_size`` are ignored: a text model's
input is token ids, its context length is ``max_length``. ``width`` multiplies the hidden size
(rounded to a multiple of the heads). Registered names and their configs: :data:`SHAPES`; each
card (:func:`~fedleak.models.cards.tokens`) records the context length. ``pretrained=PATH`` loads a
local transformers folder (``local_files_only=True``; its config decides the architecture, nothing
is downloaded); ``lora`` wraps the model in LoRA adapters (:mod:`fedleak.models.lora`), after which
only the adapters are trainable.

``transformers`` (the ``text`` extra) is imported when a text model is built, not with this module:
the models and their cards are registered without it (``fedleak config models`` lists them), and
importing fedleak does not pay for transformers' import. Building one without the extra is a
one-line :class:`~fedleak.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
from torch import Tensor, nn

from fedleak.errors import ConfigError
from fedleak.models.cards import tokens as token_card
from fedleak.models.lora import LoraSpec, add_lora
from fedleak.models.registry import Builder, ImageSize, register_model


def _transformers() -> ModuleType:
    """The ``transformers`` package; a one-line error without the text extra."""
    try:
        import transformers  # optional: the text extra, imported only when a text model is built
    except ImportError as exc:
        raise ConfigError(f"text models need the text extra (pip install 'fedleak[text]'): {exc}") from None
    return transformers


IGNORE = -100  # F.cross_entropy's default ignore_index: a target position that is not scored


def lm_targets(tokens: Tensor, pad_id: int) -> Tensor:
    """A language-model batch's labels: ``tokens[:, 1:]`` (the next token of positions 0…T−2), with
    the positions whose target is padding set to −100 (ignored by ``F.cross_entropy``)."""
    targets = tokens[:, 1:].clone()
    targets[targets == pad_id] = IGNORE
    return targets


class TextModel(nn.Module):
    """A transformers model behind token ids: ``.hf`` (the transformers — or, with LoRA, the peft —
    model), ``.pad_id``, ``.vocab_size``, ``.max_length`` (context length) and :meth:`embeddings`."""

    hf: Any  # a submodule; typed loosely, as transformers' and peft's models are

    def __init__(self, hf: nn.Module, pad_id: int, vocab_size: int, max_length: int) -> None:
        super().__init__()
        self.hf = hf
        self.pad_id, self.vocab_size, self.max_length = pad_id, vocab_size, max_length

    def embeddings(self) -> Tensor:
        """The token embedding matrix, V×d (row ``i`` is token ``i``'s input embedding)."""
        return self.hf.get_input_embeddings().weight

    def _run(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"a text model takes int64 token ids B×T, got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"{tokens.shape[1]} tokens per sequence exceed the model's context of {self.max_length}")
        # Position ids B×T (not transformers' default 1×T, broadcast): every embedding lookup then has
        # the batch as its first dimension, which per-example gradients (Opacus's DP-SGD) need.
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        return self.hf(input_ids=tokens, attention_mask=(tokens != self.pad_id).long(), position_ids=positions).logits


class CausalLM(TextModel):
    """A decoder language model: ``forward(tokens)`` → next-token logits B×V×(T−1) (position ``t``
    predicts token ``t+1``); score with :func:`lm_targets`."""

    def forward(self, tokens: Tensor) -> Tensor:
        return self._run(tokens)[:, :-1].transpose(1, 2)


class SequenceClassifier(TextModel):
    """A sequence classifier: ``forward(tokens)`` → B×C logits (BERT reads its ``[CLS]`` position,
    GPT-2 the last non-pad token)."""

    def forward(self, tokens: Tensor) -> Tensor:
        return self._run(tokens)


@dataclass(frozen=True)
class Shape:
    """A registered text model's default config: family (``gpt2`` / ``bert``), layers, hidden size,
    heads, context length and vocabulary (the family's tokenizer's, unless the option sets one)."""

    family: str
    layers: int
    hidden: int
    heads: int
    max_length: int
    vocab_size: int
    reference: str


SHAPES = {
    "gpt2-small-shape": Shape("gpt2", 12, 768, 12, 1024, 50257, "GPT-2 small config (Radford et al. 2019), random init"),
    "gpt2-tiny": Shape("gpt2", 2, 128, 4, 128, 50257, "a 2-layer GPT-2 config for tests"),
    "bert-tiny": Shape("bert", 2, 128, 2, 512, 30522, "BERT-Tiny config (Turc et al. 2019), random init"),
    "bert-small-shape": Shape("bert", 4, 512, 8, 512, 30522, "BERT-Small config (Turc et al. 2019), random init"),
    "llama-tiny": Shape("llama", 2, 128, 4, 128, 32000, "a 2-layer LLaMA-style config (RMSNorm, rotary positions, "
                        "SwiGLU; Touvron et al. 2023), random init"),
}
VOCABULARIES = {"gpt2": "GPT-2 BPE vocabulary (50257) by default", "bert": "BERT WordPiece vocabulary (30522) by default",
                "llama": "LLaMA-sized vocabulary (32000) by default"}
TASKS = {"gpt2": ("lm", "classify"), "bert": ("classify",), "llama": ("lm", "classify")}


def _gpt2_config(tf: ModuleType, shape: Shape, num_labels: int, pad_id: int, dropout: float) -> Any:
    special = 50256 if shape.vocab_size > 50256 else None  # GPT-2's begin/end token, where the vocabulary has it
    return tf.GPT2Config(bos_token_id=special, eos_token_id=special, vocab_size=shape.vocab_size,
                         n_positions=shape.max_length, n_embd=shape.hidden, n_layer=shape.layers, n_head=shape.heads,
                         resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, summary_first_dropout=dropout,
                         pad_token_id=pad_id, num_labels=num_labels, attn_implementation="eager")


def _bert_config(tf: ModuleType, shape: Shape, num_labels: int, pad_id: int, dropout: float) -> Any:
    return tf.BertConfig(vocab_size=shape.vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                         num_attention_heads=shape.heads, intermediate_size=4 * shape.hidden,
                         max_position_embeddings=shape.max_length, hidden_dropout_prob=dropout,
                         attention_probs_dropout_prob=dropout, classifier_dropout=dropout, pad_token_id=pad_id,
                         num_labels=num_labels, attn_implementation="eager")


def _llama_config(tf: ModuleType, shape: Shape, num_labels: int, pad_id: int, dropout: float) -> Any:
    # LLaMA's layout: RMSNorm, rotary positions (no position embedding), SwiGLU MLP of width ≈ 8/3·d,
    # untied input and output embeddings, no biases.
    return tf.LlamaConfig(vocab_size=shape.vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                          num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                          intermediate_size=int(8 * shape.hidden / 3 + 63) // 64 * 64,
                          max_position_embeddings=shape.max_length, attention_dropout=dropout,
                          # no padding_idx in the embedding (it would zero the pad row, which the attention
                          # mask already leaves unused): the pad id is set on the config after building
                          pad_token_id=None, bos_token_id=None, eos_token_id=None, tie_word_embeddings=False,
                          num_labels=num_labels, attn_implementation="eager")


CONFIGS: dict[str, Callable[[ModuleType, Shape, int, int, float], Any]] = {
    "gpt2": _gpt2_config, "bert": _bert_config, "llama": _llama_config}
# (family, task) → the transformers class
CLASSES = {("gpt2", "lm"): "GPT2LMHeadModel", ("gpt2", "classify"): "GPT2ForSequenceClassification",
           ("bert", "classify"): "BertForSequenceClassification", ("llama", "lm"): "LlamaForCausalLM",
           ("llama", "classify"): "LlamaForSequenceClassification"}


def _random(shape: Shape, task: str, num_labels: int, pad_id: int, dropout: float) -> nn.Module:
    """A randomly initialised transformers model of ``shape`` (eager attention)."""
    tf = _transformers()
    config = CONFIGS[shape.family](tf, shape, num_labels, pad_id, dropout)
    model = getattr(tf, CLASSES[(shape.family, task)])(config)
    model.config.pad_token_id = pad_id  # a classifier finds each sequence's last token through it
    return cast(nn.Module, model)


def load_pretrained(path: str | Path, task: str, num_labels: int) -> Any:
    """A local transformers model folder (``config.json`` + weights), float32, eager attention, never
    downloaded (``local_files_only=True``); one-line :class:`ConfigError` when it is not one."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"pretrained model folder {str(folder)!r} does not exist")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"pretrained model folder {str(folder)!r} has no config.json (not a transformers model folder)")
    tf = _transformers()
    auto = tf.AutoModelForCausalLM if task == "lm" else tf.AutoModelForSequenceClassification
    extra = {} if task == "lm" else {"num_labels": num_labels}
    try:
        model = auto.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                     attn_implementation="eager", **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load the pretrained model in {str(folder)!r}: {first}") from None
    return model


def _set_dropout(model: nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def _from_folder(path: str, task: str, num_classes: int, vocab_size: int | None, pad_id: int | None,
                 max_length: int | None, dropout: float) -> tuple[Any, int, int, int]:
    """A pretrained folder's model, its vocabulary, context length (``max_length`` at most the
    config's) and pad id (given, else the config's pad token, else its end-of-sequence token, else 0)."""
    hf = load_pretrained(path, task, num_classes)
    _set_dropout(hf, dropout)
    config = hf.config
    vocab = int(hf.get_input_embeddings().weight.shape[0])
    if vocab_size is not None and vocab_size != vocab:
        raise ValueError(f"vocab_size {vocab_size} differs from the pretrained model's {vocab}")
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    length = min(max_length or int(context), int(context)) if context else max_length or 1024
    default_pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    pad = pad_id if pad_id is not None else int(default_pad) if default_pad is not None else 0
    if task != "lm" and config.pad_token_id is None:
        config.pad_token_id = pad  # GPT-2 classifiers find each sequence's last token through it
    return hf, vocab, length, pad


def _from_shape(shape: Shape, task: str, num_classes: int, width: float, vocab_size: int | None, pad_id: int | None,
                max_length: int | None, layers: int | None, hidden: int | None, heads: int | None,
                dropout: float) -> tuple[nn.Module, int, int, int]:
    """A randomly initialised model of ``shape`` with the given overrides, its vocabulary, context
    length and pad id (default 0)."""
    heads, size = heads or shape.heads, hidden or shape.hidden
    if heads < 1 or size < 1 or size % heads:
        raise ValueError(f"hidden size {size} must be a positive multiple of the {heads} heads")
    shape = replace(shape, layers=layers or shape.layers, heads=heads, max_length=max_length or shape.max_length,
                    hidden=max(heads, round(size * width / heads) * heads), vocab_size=vocab_size or shape.vocab_size)
    if min(shape.layers, shape.max_length, shape.vocab_size) < 1:
        raise ValueError("layers, max_length and vocab_size must be positive")
    pad = pad_id if pad_id is not None else 0
    if not 0 <= pad < shape.vocab_size:
        raise ValueError(f"pad_id {pad} is outside the vocabulary of {shape.vocab_size}")
    return _random(shape, task, num_classes, pad, dropout), shape.vocab_size, shape.max_length, pad


def build_text_model(name: str, num_classes: int, width: float, *, vocab_size: int | None, pad_id: int | None,
                     max_length: int | None, layers: int | None, hidden: int | None, heads: int | None,
                     task: str, pretrained: str | None, lora: LoraSpec, dropout: float) -> TextModel:
    """Registered text model ``name``. A language model's vocabulary is ``vocab_size``, else
    ``num_classes`` (when above 1), else a pretrained folder's; a classifier has ``num_classes``
    classes and ``vocab_size`` (else the family's) tokens. ``layers``/``hidden``/``heads``/``max_length``
    override the shape's config (a pretrained folder's config is its own; ``width`` and these do
    not apply to it, except a shorter ``max_length``)."""
    shape = SHAPES[name]
    if task not in TASKS[shape.family]:
        raise ValueError(f"task must be one of {', '.join(TASKS[shape.family])}, got {task!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if task == "lm":
        if vocab_size is None and num_classes < 2 and pretrained is None:
            raise ValueError("a language model needs vocab_size (or num_classes = the vocabulary size)")
        if vocab_size is not None and num_classes > 1 and num_classes != vocab_size:
            raise ValueError(f"a language model's num_classes is its vocabulary: got {num_classes} and "
                             f"vocab_size {vocab_size}")
        vocab_size = vocab_size if vocab_size is not None or num_classes < 2 else num_classes
    if pretrained is not None:
        hf, vocab, length, pad = _from_folder(pretrained, task, num_classes, vocab_size, pad_id, max_length, dropout)
    else:
        hf, vocab, length, pad = _from_shape(shape, task, num_classes, width, vocab_size, pad_id, max_length,
                                             layers, hidden, heads, dropout)
    cls = CausalLM if task == "lm" else SequenceClassifier
    return cls(add_lora(hf, lora), pad, vocab, int(length))


def _builder(name: str, task: str) -> Builder:
    def build(num_classes: int, in_channels: int, image_size: ImageSize, width: float = 1.0, *,
              vocab_size: int | None = None, pad_id: int | None = None, max_length: int | None = None,
              layers: int | None = None, hidden: int | None = None, heads: int | None = None,
              task: str = task, pretrained: str | None = None, lora: LoraSpec = None,
              dropout: float = 0.0) -> nn.Module:
        return build_text_model(name, num_classes, width, vocab_size=vocab_size, pad_id=pad_id,
                                max_length=max_length, layers=layers, hidden=hidden, heads=heads, task=task,
                                pretrained=pretrained, lora=lora, dropout=dropout)

    build.__doc__ = f"{name}: {SHAPES[name].reference} (:func:`build_text_model`)."
    return build


for _name, _shape in SHAPES.items():
    register_model(_name, token_card(_shape.max_length, VOCABULARIES[_shape.family], _shape.reference))(
        _builder(_name, TASKS[_shape.family][0]))
