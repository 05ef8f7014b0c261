"""How token ids reach a text model: the text modality's counterpart of
:class:`~fedleak.data.normalization.Normalization` (the client's input check and its map to the
model's input), without any optional dependency.

:class:`InputEncoding` is what the client needs of either: ``check(inputs, labels)`` raises one
line on a batch of the wrong form, ``to_input`` maps the batch to what the model takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from fedleak.errors import DataError


class InputEncoding(Protocol):
    """The client's view of its inputs' form: a check and the map to the model's input."""

    def check(self, inputs: Tensor, labels: Tensor) -> None: ...

    def to_input(self, inputs: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class TokenEncoding:
    """Token ids int64 B×T (right-padded with ``pad_id``) of a vocabulary of ``vocab_size``, at most
    ``max_length`` per sequence; the model takes them as they are."""

    vocab_size: int
    pad_id: int
    max_length: int

    def check(self, inputs: Tensor, labels: Tensor) -> None:
        """One line unless ``inputs`` is an int64 B×T batch of ids below ``vocab_size``, T at most the
        model's context, with per sequence one class index (a classifier) or T − 1 next-token
        targets (a language model, −100 at padding)."""
        if inputs.ndim != 2 or inputs.dtype != torch.long:
            raise DataError(f"client token ids must be an int64 B×T batch, got {inputs.dtype} {tuple(inputs.shape)}")
        if inputs.shape[1] > self.max_length:
            raise DataError(f"sequences of {inputs.shape[1]} tokens are longer than the model's context "
                            f"of {self.max_length}: shorten them (data.options.seq_len)")
        if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= self.vocab_size):
            raise DataError(f"token ids must lie in 0 … {self.vocab_size - 1} (the model's vocabulary)")
        b, t = inputs.shape
        if labels.shape not in ((b,), (b, t - 1)):
            raise DataError(f"client labels must be B (classes) or B×(T−1) (next tokens), got {tuple(labels.shape)}")

    def to_input(self, inputs: Tensor) -> Tensor:
        return inputs
