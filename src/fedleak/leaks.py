"""What else an audited update gives away: the client's label histogram, and what a malicious server
would recover of the same client.

At realistic client sizes (hundreds of examples, several local epochs) no honest-server optimisation
attack reconstructs images; the update still leaks, and an audit reports it beside its verdict:

- **the label histogram** (:func:`label_histogram_leak`): the client's class counts recovered from
  the classifier's update (:func:`fedleak.attacks.label_counts.recover_label_counts`, the optimizer's
  step weights exact, softmax means from a simulation of the declared training), with their
  total-variation error against the truth where a batch was shared for scoring. Where the counts
  cannot be recovered (no classifier layer with a bias or a weight to read, Adam's non-linear
  steps), it says why instead.
- **the malicious-server figure** (:func:`malicious_server`): the share of the client's N examples
  Robbing the Fed's imprint block (Fowl et al., ICLR 2022) recovers *exactly* — in closed form,
  (B/(B+1))^N at the server's own quantiles (:mod:`fedleak.attacks.imprint_yield`) — for a block of
  :data:`IMPRINT_BINS` bins (fedleak's imprint modification's default), and the fewest bins a
  server aiming at half of them would plant, with what that costs in parameters. It is what an
  honest-server "no image leak" is to be read against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from fedleak.attacks.base import AttackerKnowledge
from fedleak.attacks.imprint_yield import bins_for_share, imprint_parameters, imprint_yield
from fedleak.attacks.label_counts import CountSettings, histogram_error, label_histogram, recover_label_counts
from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload

IMPRINT_BINS = 128  # fedleak.fl.modifications.ImprintSettings.bins' default: the block a malicious server plants
TARGET_SHARE = 0.5  # the share of a client's examples the bins_for figure aims at
HISTOGRAM_TV = 0.1  # a recovered histogram within this total variation of the truth: the class mix leaked


@dataclass(frozen=True)
class LabelHistogram:
    """The client's class counts as the server recovers them (``counts``, one per class; ``None``
    with ``reason`` where they cannot be), the ``true`` counts and the total-variation ``error``
    where a batch was shared for scoring."""

    counts: list[int] | None
    method: str
    error: float | None = None
    true: list[int] | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_histogram_leak(payload: Payload, knowledge: AttackerKnowledge, truth_labels: Tensor | None = None,
                         public: Tensor | None = None, public_labels: Tensor | None = None,
                         seed: int = 0) -> LabelHistogram:
    """The recovered class counts of ``payload``'s examples (see the module docstring); ``public``
    images in [0, 1] (and their labels) feed the simulated softmax means where given, else random
    inputs drawn with ``seed``. Never raises for an update it cannot read: the ``reason`` says why."""
    settings = CountSettings(seed=seed)
    try:
        counts = recover_label_counts(payload, knowledge, public, public_labels, settings)
    except FedleakError as exc:
        return LabelHistogram(None, settings.method, reason=str(exc))
    found = [int(c) for c in counts]
    if truth_labels is None:
        return LabelHistogram(found, settings.method)
    true = label_histogram(truth_labels, knowledge.num_classes)
    return LabelHistogram(found, settings.method, histogram_error(counts, true), [int(c) for c in true])


@dataclass(frozen=True)
class MaliciousServer:
    """What Robbing the Fed's imprint server would recover of a client of ``examples`` examples:
    the expected ``share`` (and ``count`` ± ``std``) exactly at ``bins`` bins, and the ``bins_for_half``
    bins (``parameters_for_half`` parameters) that reach :data:`TARGET_SHARE`."""

    examples: int
    bins: int
    share: float
    count: float
    std: float
    parameters: int
    bins_for_half: int
    parameters_for_half: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def malicious_server(examples: int, input_shape: tuple[int, ...], bins: int = IMPRINT_BINS) -> MaliciousServer:
    """:class:`MaliciousServer` for ``examples`` examples of ``input_shape`` (closed form)."""
    found = imprint_yield(examples, bins, input_shape=input_shape)
    half = bins_for_share(examples, TARGET_SHARE)
    return MaliciousServer(examples, bins, found.share, found.count, found.std, imprint_parameters(bins, input_shape),
                           half, imprint_parameters(half, input_shape))
