"""What an audit concludes of one update: ``leaks``, ``no leak found`` or ``inconclusive``, with the reason.

A verdict can give no false assurance: it is ``no leak found`` only when everything that could make
the attack fail without the update being safe has been ruled out; anything less is
``inconclusive``. :func:`decide` takes the evidence and the conditions and says which:

- **leaks** — evidence, named: with the ground truth (the gate; an audit given the batch for
  scoring), a reconstructed image beats its own mean-colour guess by :data:`PSNR_MARGIN` dB of PSNR
  (:func:`recognisable`), or every label was recovered, or the client's label histogram was recovered
  within :data:`fedleak.leaks.HISTOGRAM_TV` of total variation (the class mix leaked), or the
  modality's own evidence (:data:`EVIDENCE`; text, :func:`text_evidence`: a sequence recovered
  exactly, or a recorded PII span verbatim); without it, the calibrated probability that
  the reconstruction is recognisable (:mod:`fedleak.calibration`) is at least
  :data:`LEAK_PROBABILITY` — used only where the simulation is verified, and not where the fit lies
  below the calibration's measured range (there the value is an upper bound only). Evidence of a leak stands
  whatever else failed: a recognisable image is a leak even from an attack under budget.
- **no leak found** — none of that, *and* the simulation is verified (on the client's own batch:
  its simulated update fits the observed one with cosine ≥ :data:`SIMULATION_FIT`; without the
  batch: the mis-specification check of :mod:`fedleak.specification` passed and the data order is
  known), *and* the attack ran at least its stated minimum of iterations (:func:`minimum_iterations`),
  *and*, without the ground truth, the calibrated probability is at most :data:`SAFE_PROBABILITY`.
  The reason names the attack, its iterations and how the simulation was verified.
- **inconclusive** — otherwise, each missing condition named: the simulation mis-specified, the
  budget below the attack's minimum, the data order unknown, a calibrated probability in between,
  the attack not applicable to the update (it said so: e.g. DAGER when the batch's tokens fill the
  span). Text has no calibration (the one of :mod:`fedleak.calibration` is measured on images), so a
  text audit without ground truth is ``inconclusive`` unless the attack's evidence is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from fedleak.leaks import HISTOGRAM_TV
from fedleak.pixels import psnr
from fedleak.registry import Registry
from fedleak.specification import SpecificationCheck

LEAKS, NO_LEAK, INCONCLUSIVE = "leaks", "no leak found", "inconclusive"
VERDICTS = (LEAKS, NO_LEAK, INCONCLUSIVE)
PSNR_MARGIN = 3.0  # dB above the image's own mean-colour guess: recognisable
SIMULATION_FIT = 0.99  # the client's own batch explains its update at least this well: simulation verified
LEAK_PROBABILITY = 0.5  # calibrated P(recognisable) at or above: leaks
SAFE_PROBABILITY = 0.05  # … at or below (everything else verified): no leak found
PARTIAL_ROUGE = 0.1  # text: mean ROUGE-1 above the unrelated-sentence baseline by this much is a partial recovery
OPTIMISATION_MINIMUM = 1000  # iterations an optimisation attack not registered below needs at least

MIN_ITERATIONS: Registry[int] = Registry("attack minimum")
"""The least iterations each attack needs before its failure says anything: IG as Geiping et al. and
Lim & Chan ran it (1200; their reconstructions form within the first thousand), DLG's and iDLG's
L-BFGS 300 steps (their papers'), ROG about 100 (its paper's), fishing's inner IG; the analytic
and imprint attacks are closed-form (0)."""
# SPEAR: closed form through a first layer (0 steps), its feature inversion's default 400 on a later one;
# trap weights and DAGER are closed form.
for _name, _minimum in (("ig", 1000), ("dlg", 300), ("idlg", 300), ("rog", 100), ("fishing", 1000),
                        ("analytic", 0), ("imprint", 0), ("spear", 400), ("trap", 0), ("dager", 0)):
    MIN_ITERATIONS.register(_name)(_minimum)


def minimum_iterations(attack: str, settings: Any = None) -> int:
    """The stated minimum of ``attack`` (:data:`MIN_ITERATIONS`); an attack not registered there needs
    :data:`OPTIMISATION_MINIMUM` when its ``settings`` (its config) count iterations, else none."""
    if attack in MIN_ITERATIONS:
        return MIN_ITERATIONS.get(attack)
    return OPTIMISATION_MINIMUM if getattr(settings, "iterations", None) is not None else 0


@dataclass(frozen=True)
class Verdict:
    """One of :data:`VERDICTS` and its reason (one line)."""

    verdict: str
    reason: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"a verdict is one of {', '.join(VERDICTS)}, not {self.verdict!r}")


def psnr_gains(images: Tensor, originals: Tensor) -> Tensor:
    """Per original (B×C×H×W in [0, 1], ``images`` already paired with them): the PSNR of its
    reconstruction minus the PSNR of its own mean-colour guess, in dB."""
    originals = originals.detach().to(images.device)
    guess = originals.mean((2, 3), keepdim=True).expand_as(originals)
    return (psnr(images.detach(), originals) - psnr(guess, originals)).cpu()


def recognisable(images: Tensor, originals: Tensor, margin: float = PSNR_MARGIN) -> int:
    """How many of the paired reconstructions beat their original's mean-colour guess by ``margin`` dB."""
    return int((psnr_gains(images, originals) >= margin).sum())


@dataclass(frozen=True)
class Findings:
    """What a verdict is decided on. ``recognisable``/``label_accuracy`` exist only with the ground
    truth (``images`` the batch size); ``truth_fit`` is the cosine with which the client's own batch,
    simulated, explains its update (ground truth too); ``probability`` the calibrated P(recognisable),
``bound`` what that value is (:func:`fedleak.calibration.calibrated`: an estimate, or a bound outside
the measured range);
    ``order_unknown`` says why the data order cannot be followed (``None``: it can)."""

    attack: str
    iterations: int
    minimum: int
    images: int
    specification: SpecificationCheck | None = None
    truth_fit: float | None = None
    recognisable: int | None = None
    label_accuracy: float | None = None
    probability: float | None = None
    bound: str = "estimate"  # what ``probability`` is: an estimate, an "upper bound" or a "lower bound"
    order_unknown: str | None = None
    histogram_error: float | None = None  # TV error of the recovered label histogram (ground truth only)
    evidence: tuple[str, ...] = ()  # the modality's evidence of a leak against the ground truth (EVIDENCE)
    searched: str | None = None  # with the ground truth, what the modality found nothing of (the no-leak reason)
    not_applicable: str | None = None  # why the attack could not apply to this update (None: it could)

    @property
    def verified(self) -> bool:
        """Whether the simulation is verified: on the client's batch where there is one, else by the
        mis-specification check with the data order known."""
        if self.truth_fit is not None:
            return self.truth_fit >= SIMULATION_FIT
        return self.specification is not None and self.specification.consistent and self.order_unknown is None


def simulation_problem(f: Findings) -> str | None:
    """Why the simulation is not verified (``None`` where it is)."""
    if f.truth_fit is not None:
        if f.truth_fit >= SIMULATION_FIT:
            return None
        return (f"simulation mis-specified: the client's own batch explains its update with cosine only "
                f"{f.truth_fit:.3f} (< {SIMULATION_FIT:g})")
    if f.specification is None:
        return "simulation not verified: no mis-specification check ran and no batch was shared"
    if not f.specification.consistent:
        reason = f.specification.reason
        return reason if reason.startswith("mis-specified") else f"simulation mis-specified ({reason})"
    if f.order_unknown is not None:
        return f"data order unknown: {f.order_unknown}"
    return None


def decide(f: Findings) -> Verdict:
    """The verdict on ``f`` (see the module's docstring)."""
    evidence = []
    if f.recognisable:
        evidence.append(f"{f.recognisable} of {f.images} reconstructed image{'s' * (f.images > 1)} beat "
                        f"{'their' if f.images > 1 else 'its'} mean-colour guess by ≥ {PSNR_MARGIN:g} dB PSNR")
    if f.label_accuracy is not None and f.label_accuracy >= 1.0:
        evidence.append(f"all {f.images} label{'s' * (f.images > 1)} recovered exactly")
    if f.histogram_error is not None and f.histogram_error <= HISTOGRAM_TV:
        evidence.append(f"the client's label histogram recovered within total variation {f.histogram_error:.3f} "
                        f"(≤ {HISTOGRAM_TV:g})")
    if (f.truth_fit is None and f.verified and f.bound != "upper bound" and f.probability is not None
            and f.probability >= LEAK_PROBABILITY):
        evidence.append(f"calibrated P(recognisable) {'at least ' * (f.bound != 'estimate')}{f.probability:.2f} "
                        f"≥ {LEAK_PROBABILITY:g}")
    evidence.extend(f.evidence)
    if evidence:
        return Verdict(LEAKS, "; ".join(evidence) + f" ({f.attack}, {f.iterations} iterations)")
    problems = [p for p in [simulation_problem(f)] if p]
    if f.iterations < f.minimum:
        problems.append(f"budget below the attack's minimum: {f.attack} ran {f.iterations} of the {f.minimum} "
                        "iterations it needs")
    if f.not_applicable is not None:
        problems.append(f"the attack does not apply to this update: {f.not_applicable}")
    scored = f.recognisable is not None or f.searched is not None
    if not scored and not problems:
        if f.probability is None:
            problems.append("no calibrated probability for this update")
        elif f.probability <= SAFE_PROBABILITY and f.bound == "lower bound":
            problems.append(f"calibrated P(recognisable) at least {f.probability:.2f}: the update fit lies above "
                            "the calibration's measured range")
        elif f.probability > SAFE_PROBABILITY and f.bound == "upper bound":
            problems.append(f"calibrated P(recognisable) at most {f.probability:.2f}: the update fit lies below "
                            "the calibration's measured range")
        elif f.probability > SAFE_PROBABILITY:
            problems.append(f"calibrated P(recognisable) {f.probability:.2f} is between {SAFE_PROBABILITY:g} and "
                            f"{LEAK_PROBABILITY:g}")
    if problems:
        return Verdict(INCONCLUSIVE, "; ".join(problems))
    how = (f"on the client's own batch (cosine {f.truth_fit:.4f})" if f.truth_fit is not None
           else f"by its update's norms ({f.specification.source})" if f.specification is not None else "")
    found = (f.searched if f.searched is not None
             else f"no image beat its mean-colour guess by {PSNR_MARGIN:g} dB, labels not all recovered" if scored
             else f"calibrated P(recognisable) {f.probability:.2f}"
             + ("" if f.bound == "estimate" else f" ({f.bound}: the fit lies outside the measured range)"))
    return Verdict(NO_LEAK, f"{f.attack} at {f.iterations} iterations (minimum {f.minimum}), simulation verified "
                            f"{how}: {found}")


def text_evidence(summary: Mapping[str, Any]) -> tuple[list[str], str]:
    """The text rule, on a :class:`~fedleak.metrics.text.TextEvaluation` summary: a leak when at
    least one sequence of the batch was recovered exactly (token ids equal at every real position)
    or at least one recorded PII span appears verbatim in its matched reconstruction; returns the
    evidence lines and what was searched (the no-leak reason). ROUGE alone is no evidence: two
    sentences of a templated corpus share many words — but where the summary holds the no-leak
    baseline (``other_text``: an unrelated sentence of the corpus scored the same way), a mean ROUGE-1
    at least :data:`PARTIAL_ROUGE` above it is a partial recovery, and a leak too."""
    exact, total = int(summary.get("exact_sequences") or 0), int(summary.get("sequences") or 0)
    pii, spans = int(summary.get("pii_recovered_spans") or 0), int(summary.get("pii_spans") or 0)
    rouge, other = float(summary.get("rouge1") or 0.0), summary.get("other_text")
    evidence = []
    if exact:
        evidence.append(f"{exact} of {total} sequence{'s' * (total > 1)} recovered exactly")
    if pii:
        evidence.append(f"{pii} of {spans} PII span{'s' * (spans > 1)} recovered verbatim")
    if isinstance(other, Mapping) and rouge >= float(other.get("rouge1") or 0.0) + PARTIAL_ROUGE:
        evidence.append(f"partial recovery: mean ROUGE-1 {rouge:.2f} against {float(other['rouge1'] or 0):.2f} "
                        "for an unrelated sentence of the corpus")
    return evidence, (f"no sequence of {total} recovered exactly, none of {spans} PII spans verbatim "
                      f"(ROUGE-1 {float(summary.get('rouge1') or 0.0):.2f})")


EVIDENCE: Registry[Callable[[Mapping[str, Any]], tuple[list[str], str]]] = Registry("leak evidence")
"""A modality's rule for a leak against the ground truth, on its evaluation's summary → (evidence
lines, the no-leak reason). Images keep :func:`recognisable` and the label rule of :func:`decide`."""
EVIDENCE.register("text")(text_evidence)


def order_unknown(hyper: Any, assumptions: Sequence[str] = ()) -> str | None:
    """Why the data order of the client's local steps cannot be followed (``None`` where it can):
    FedAvg minibatches in a private order (declared ``shuffle`` without a public seed), or an
    assumption about the order (a line naming it) where an epoch holds more than one minibatch. The
    mis-specification check cannot see the order: updates of shuffled minibatches have the norms of
    ones in order."""
    if getattr(hyper, "protocol", "fedsgd") != "fedavg":
        return None
    size = getattr(hyper, "local_batch_size", None) or hyper.batch_size
    if size >= hyper.batch_size or getattr(hyper, "shuffle_seed", None) is not None:
        return None
    if getattr(hyper, "shuffle", False):
        return "the client shuffles its examples with a private seed"
    named = [a for a in assumptions if "order" in a]
    return f"assumed — {named[0]}" if named else None

