"""The client's class counts from a multi-step FedAvg update: a label histogram, a leak of its own.

At realistic client sizes no honest-server attack reconstructs images, but the classifier's update
still says how many examples of each class the client holds. The count is Geng et al.'s zero-shot label count ("Towards general deep leakage in FL",
2021) in Dimitrov et al.'s extension to FedAvg ("Data leakage in federated averaging", TMLR 2022),
with the optimizer's arithmetic made exact (they assume plain SGD) and, by default, the softmax means
taken from a simulation of the client's own training instead of from interpolated models.

**The count.** With cross-entropy, the classifier's bias gradient at step s is
g_s = (1/|B_s|) Σ_{i∈B_s} (p_i − e_{y_i}). ``torch.optim.SGD`` (momentum μ, dampening 0) makes
θ₀ − θ_τ = lr·Σ_s c_s·(g_s + wd·θ_{s−1}) with c_s = Σ_{t=s}^{τ} μ^{t−s} (Nesterov: 1 + μ·that), so
S = Δ/lr − wd·Σ_s c_s θ̂_{s−1} = Σ_s c_s g_s, the momentum-weighted sum of the per-step gradients
(θ̂ on the straight path θ₀ − f·Δ, f_s the share of the way a constant gradient has moved after s
steps). Each epoch's minibatches partition the examples in an order the server does not know, so
every example has the same expected weight, E[Σ_s (c_s/|B_s|) Σ_{i∈B_s} e_{y_i}] = (Σ_s c_s)·n/N for
the class counts n of the N examples, and

    n̂ = N · (A − S) / Σ_s c_s,   A = Σ_s c_s p̄_s,

p̄_s the client's mean softmax at step s. Without a bias the row sums of the weight update give the
same with each example weighted by the sum o_i of its classifier input (Geng et al.'s form,
non-negative features): n̂ = N·(Σ_s c_s E[p·o]_s − S)/Σ_s c_s E[o]_s. Each sums to N by construction;
negatives are clipped and the counts rounded to integers summing to N (largest remainders).

**The softmax means A** (:data:`COUNT_METHODS`):

- ``interpolate`` — Geng/Dimitrov: the mean softmax of public (or uniform random) images at models
  θ₀ − f·Δ (``points`` places, interpolated to each step's f_s).
- ``simulate`` — the mean softmax of each step of a simulated client: the payload's own protocol
  (:data:`fedleak.fl.protocols.PROTOCOLS`, the client's arithmetic) run from θ₀ on surrogate data
  holding the current estimate's class counts (public images of each class when their labels are
  given, else the images with those labels), in an order drawn with ``seed``. The estimate is the
  fixed point n = F(n) = N·(A(n) − S)/Σ c_s, started at ``interpolate``'s and solved by Newton
  steps within ``evaluations`` simulations (:func:`solve`). A model that learns the
  client's class prior within the round predicts it along the whole trajectory, which the straight
  path θ₀ → θ_τ does not (``benchmarks/label_counts.py``, CIFAR-10 clients of 500–800 images,
  momentum 0.9, 2–3 epochs: TV 0.03–0.10 simulated, 0.10–0.16 interpolated).
- no architecture, only the class count: the mean softmax taken as 1/K (an untrained model's
  prediction); the registered label method ``counts`` uses it.

Adam and AdamW updates are not linear in the gradients, so they are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedleak.attacks.base import AttackerKnowledge, target_model
from fedleak.attacks.labels import LABEL_METHODS, classifier_names, integer_counts
from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload, PublicHyperparameters
from fedleak.fl.protocols import PROTOCOLS
from fedleak.parameters import trainable
from fedleak.registry import Registry


@dataclass(frozen=True)
class Steps:
    """The local steps as the update sums them: ``weights[s]`` = c_s, the coefficient of step s's
    gradient in Δ/lr, and ``positions[s]`` = f_s, the share of Δ travelled before step s."""

    weights: np.ndarray
    positions: np.ndarray


def step_weights(hyper: PublicHyperparameters) -> Steps:
    """``torch.optim.SGD`` (the one optimizer whose update is linear in its gradients; Adam and AdamW
    are refused): the step-s gradient enters every later momentum buffer scaled μ^{t−s}
    (c_s = Σ_{t≥s} μ^{t−s}; Nesterov adds μ·b_t each step: c_s = 1 + μ·Σ_{t≥s} μ^{t−s}); f_s from the
    cumulative movement of a constant gradient. FedSGD: one step, c = 1."""
    fedavg = hyper.protocol == "fedavg"
    name = str(getattr(hyper, "optimizer", "sgd")) if fedavg else "sgd"  # newer ClientTraining fields
    if name != "sgd":
        raise FedleakError(f"label counts need a client optimizer whose update is linear in its gradients "
                           f"(sgd); this round used {name!r}")
    tau, mu = (hyper.local_steps, hyper.momentum) if fedavg else (1, 0.0)
    reach = np.cumsum(mu ** np.arange(tau))  # reach[k−1] = Σ_{r<k} μ^r
    weights, move = reach[::-1].copy(), reach.copy()  # c_s; how far step t moves
    if fedavg and getattr(hyper, "nesterov", False):
        weights, move = 1 + mu * weights, 1 + mu * move
    travelled = np.concatenate([[0.0], np.cumsum(move)])
    return Steps(weights=weights, positions=travelled[:-1] / travelled[-1])


def gradient_sum(payload: Payload, name: str, steps: Steps) -> Tensor:
    """S = Σ_s c_s g_s for parameter ``name`` (float64): Δ/lr less the weight-decay terms
    wd·Σ_s c_s θ̂_{s−1}, θ̂ = θ₀ − f·Δ; FedSGD's update is the gradient itself."""
    hyper, update = payload.hyper, payload.update[name].double()
    if hyper.protocol != "fedavg":
        return update
    lr = cast(float, hyper.lr)  # fedavg's hyperparameters always hold one
    delta = update * lr if hyper.update_scale == "delta/lr" else update
    total = delta / lr
    if hyper.weight_decay:
        start = payload.model_state[name].double().to(total.device)
        c, f = steps.weights, steps.positions
        total = total - hyper.weight_decay * (float(c.sum()) * start - float((c * f).sum()) * delta)
    return total


@dataclass(frozen=True)
class Observed:
    """What the count reads from the payload: the signal S per class, the step weights, the number
    of examples N behind the update, and which classifier tensor S comes from."""

    signal: np.ndarray
    steps: Steps
    examples: int
    layer: str  # the classifier module's name
    bias: bool

    @classmethod
    def of(cls, payload: Payload, num_classes: int) -> Observed:
        steps = step_weights(payload.hyper)
        weight, bias = classifier_names(payload, num_classes)
        signal = gradient_sum(payload, bias, steps) if bias else gradient_sum(payload, weight, steps).sum(1)
        return cls(signal.cpu().numpy(), steps, payload.hyper.observed_images, weight.rsplit(".", 1)[0],
                   bias is not None)

    def counts(self, expected: np.ndarray, scale: float) -> np.ndarray:
        """n̂ = N·(A − S)/Z for A = Σ_s c_s E[p·o]_s and Z = Σ_s c_s E[o]_s."""
        return self.examples * (expected - self.signal) / scale


class Recorder:
    """Per forward pass: E[p·o] (per class) and E[o], o = 1 (bias) or the classifier input's sum."""

    def __init__(self, model: nn.Module, observed: Observed) -> None:
        self.bias = observed.bias
        self.rows: list[tuple[np.ndarray, float]] = []
        self._features: list[Tensor] = []
        layer = model.get_submodule(observed.layer)
        self._hook = layer.register_forward_hook(lambda m, args, out: self._features.append(args[0].detach()))

    def record(self, logits: Tensor) -> None:
        p = torch.softmax(logits.detach().double(), dim=1)
        o = torch.ones(len(p), dtype=p.dtype, device=p.device) if self.bias else \
            self._features[-1].flatten(1).double().sum(1)
        self._features.clear()
        self.rows.append(((p * o.unsqueeze(1)).mean(0).cpu().numpy(), float(o.mean())))

    def close(self) -> tuple[np.ndarray, np.ndarray]:
        self._hook.remove()
        return np.stack([r[0] for r in self.rows]), np.array([r[1] for r in self.rows])


@dataclass(frozen=True)
class Surrogate:
    """Surrogate client data: ``images`` ([0, 1]) with their ``labels`` (``None``: any image may
    carry any label). :meth:`draw` makes ``size`` examples with given class counts, the same images
    for the same counts (common random numbers), in an order drawn once with ``seed``."""

    images: Tensor
    labels: Tensor | None
    size: int
    seed: int = 0

    def draw(self, counts: Tensor) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.size, generator=g)
        y = torch.repeat_interleave(torch.arange(len(counts)), counts)
        if self.labels is None:
            pick = torch.arange(self.size) % len(self.images)
        else:
            pools = [torch.nonzero(self.labels == k).flatten() for k in range(len(counts))]
            pools = [p[torch.randperm(len(p), generator=g)] if len(p) else torch.arange(len(self.images))
                     for p in pools]  # a class the public data lacks: any image, with its label
            pick = torch.cat([pools[k][torch.arange(int(m)) % len(pools[k])] for k, m in enumerate(counts)])
        return self.images[pick][order], y[order]


def interpolated(payload: Payload, knowledge: AttackerKnowledge, observed: Observed, images: Tensor,
                 points: int) -> np.ndarray:
    """Geng/Dimitrov's n̂: E[p·o] and E[o] of ``images`` at θ₀ − f·Δ for ``points`` values of f in
    [0, 1], interpolated to each step's position f_s."""
    model, hyper = target_model(payload, knowledge), payload.hyper
    scale = cast(float, hyper.lr) if hyper.protocol == "fedavg" and hyper.update_scale == "delta/lr" else 1.0
    params = dict(model.named_parameters())
    start = {n: params[n].detach().clone() for n in payload.update}
    grid = np.linspace(0.0, 1.0, max(points, 2)) if hyper.protocol == "fedavg" else np.zeros(1)
    recorder = Recorder(model, observed)
    x = knowledge.normalization.to_input(images.to(next(iter(start.values()))))
    try:
        with torch.no_grad():
            for f in grid:
                for n, t in start.items():
                    params[n].copy_(t - float(f) * scale * payload.update[n].to(t))
                recorder.record(model(x))
    finally:
        pairs, means = recorder.close()
    c, at = observed.steps.weights, observed.steps.positions
    expected = np.array([(c * np.interp(at, grid, pairs[:, j])).sum() for j in range(pairs.shape[1])])
    return observed.counts(expected, float((c * np.interp(at, grid, means)).sum()))


def simulated(payload: Payload, knowledge: AttackerKnowledge, observed: Observed, x: Tensor,
              y: Tensor) -> np.ndarray:
    """F(n): n̂ with A and Z recorded at every step of the payload's protocol run from θ₀ on one
    client's surrogate batch (``x`` in [0, 1], labels ``y``)."""
    model = target_model(payload, knowledge)
    recorder = Recorder(model, observed)

    def gradient(m: nn.Module, inputs: Tensor, labels: Tensor) -> dict[str, Tensor]:
        named = trainable(m)
        logits = m(inputs)
        recorder.record(logits)
        grads = torch.autograd.grad(F.cross_entropy(logits, labels), [p for _, p in named])
        return {n: g.detach() for (n, _), g in zip(named, grads)}

    device = next(model.parameters()).device
    try:
        PROTOCOLS.get(payload.hyper.protocol)(model, knowledge.normalization.to_input(x.to(device)),
                                              y.to(device), payload.hyper, gradient)
    finally:
        pairs, means = recorder.close()
    c = observed.steps.weights
    if len(pairs) != len(c):
        raise FedleakError(f"the simulated client took {len(pairs)} steps, the update {len(c)}")
    return observed.counts(c @ pairs, float(c @ means))


def solve(step: Callable[[np.ndarray], np.ndarray], start: np.ndarray, total: int, evaluations: int,
          max_move: float, damping: float = 0.6) -> np.ndarray:
    """A root of r(n) = F(n) − n (counts summing to ``total``) in ``evaluations`` calls of ``step``:
    a Jacobian by finite differences (5 % of ``total`` moved to each class, when the budget allows;
    else −I), Levenberg–Marquardt steps (``damping`` × its norm; at most ``max_move``·total counts,
    L1), Broyden updates; returns the rounded counts of smallest |r|. The truth can be a repelling
    fixed point of F (∂F/∂n > 1 where a model learns the prior fast): iterating F may leave it."""
    k = len(start)
    x = integer_counts(start, total).numpy().astype(float)
    r = step(x) - x
    best, used, jac = (float(np.abs(r).sum()), x), 1, -np.eye(k)
    if evaluations >= k + 3:
        h = max(2.0, 0.05 * total)
        moves, changes = [], []
        for j in range(k):
            xj = integer_counts(np.clip(x + h * (np.eye(k)[j] - 1.0 / k), 0, None), total).numpy().astype(float)
            moves.append(xj - x)
            changes.append(step(xj) - xj - r)
        used += k
        jac = np.stack(changes, 1) @ np.linalg.pinv(np.stack(moves, 1))
    while used < evaluations:
        damp = damping * np.linalg.norm(jac, 2)  # Levenberg–Marquardt: weak directions stay put
        system = np.vstack([jac, damp * np.eye(k), np.ones((1, k))])
        delta = np.linalg.lstsq(system, np.concatenate([-r, np.zeros(k), [0.0]]), rcond=None)[0]
        delta *= min(1.0, max_move * total / max(float(np.abs(delta).sum()), 1e-12))
        nxt = integer_counts(np.clip(x + delta, 0, None), total).numpy().astype(float)
        r_next = step(nxt) - nxt
        used += 1
        dx, dr = nxt - x, r_next - r
        if float(dx @ dx) > 0:
            jac = jac + np.outer(dr - jac @ dx, dx) / float(dx @ dx)
        x, r = nxt, r_next
        if float(np.abs(r).sum()) < best[0]:
            best = (float(np.abs(r).sum()), x)
    return best[1]


@dataclass(frozen=True)
class CountSettings:
    """How :func:`recover_label_counts` estimates the softmax means (see the module docstring)."""

    method: str = "auto"  # auto: simulate with an architecture, the uniform mean softmax without
    points: int = 5  # interpolate: models on the path θ₀ → θ_τ
    evaluations: int = 16  # simulate: simulated client rounds (≥ classes + 3 for a measured Jacobian)
    max_move: float = 0.3  # simulate: the largest Newton step, as a share of the examples (L1)
    damping: float = 0.6  # simulate: Levenberg–Marquardt damping, relative to the Jacobian's norm
    images: int = 512  # random images drawn when no public ones are given; at most this many feed interpolate
    seed: int = 0  # the attacker's draws (random images, surrogate order)


Method = Callable[[Payload, AttackerKnowledge, Observed, Tensor, "Tensor | None", CountSettings], np.ndarray]
COUNT_METHODS: Registry[Method] = Registry("label count method")
"""``method(payload, knowledge, observed, images, labels, settings) → n̂``, with a forward pass."""


def _some(images: Tensor, settings: CountSettings) -> Tensor:
    """At most ``settings.images`` of ``images``, a seeded draw (forward passes of interpolate)."""
    return images if len(images) <= settings.images else images[torch.randperm(len(images), generator=torch.Generator().manual_seed(settings.seed))[: settings.images]]


@COUNT_METHODS.register("interpolate")
def interpolate_counts(payload: Payload, knowledge: AttackerKnowledge, observed: Observed, images: Tensor,
                       labels: Tensor | None, settings: CountSettings) -> np.ndarray:
    return interpolated(payload, knowledge, observed, _some(images, settings), settings.points)


@COUNT_METHODS.register("simulate")
def simulate_counts(payload: Payload, knowledge: AttackerKnowledge, observed: Observed, images: Tensor,
                    labels: Tensor | None, settings: CountSettings) -> np.ndarray:
    per_client, total = payload.hyper.batch_size, observed.examples
    surrogate = Surrogate(images.cpu(), None if labels is None else labels.cpu().long(), per_client, settings.seed)

    def step(counts: np.ndarray) -> np.ndarray:  # one client's share of the counts, simulated
        x, y = surrogate.draw(integer_counts(counts * per_client / total, per_client))
        return simulated(payload, knowledge, observed, x, y)

    start = interpolated(payload, knowledge, observed, _some(images, settings), settings.points)
    return solve(step, start, total, settings.evaluations, settings.max_move, settings.damping)


def raw_label_counts(payload: Payload, knowledge_or_num_classes: AttackerKnowledge | int,
                     public_images: Tensor | None = None, public_labels: Tensor | None = None,
                     settings: CountSettings = CountSettings()) -> np.ndarray:
    """The real-valued n̂ (sums to the examples behind the update) before clipping and rounding.
    With only the class count, the mean softmax is 1/K (needs a classifier bias); with the
    architecture, ``settings.method`` (``auto``: simulate) on the public images, or on uniform
    random ones drawn with ``settings.seed`` when none are given."""
    knowledge = None if isinstance(knowledge_or_num_classes, int) else knowledge_or_num_classes
    k = knowledge_or_num_classes if isinstance(knowledge_or_num_classes, int) else knowledge_or_num_classes.num_classes
    observed = Observed.of(payload, k)
    method = "simulate" if settings.method == "auto" else settings.method
    if knowledge is None:
        if settings.method != "auto":
            raise FedleakError(f"label count method {settings.method!r} needs the architecture (AttackerKnowledge)")
        if not observed.bias:
            raise FedleakError("without the architecture, label counts need a classifier with a bias")
        c = float(observed.steps.weights.sum())
        return observed.counts(np.full(k, c / k), c)
    images = public_images if public_images is not None else \
        torch.rand(settings.images, *knowledge.input_shape, generator=torch.Generator().manual_seed(settings.seed))
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(knowledge.input_shape):
        raise FedleakError(f"public images must be B×{'×'.join(map(str, knowledge.input_shape))}, "
                           f"got {tuple(images.shape)}")
    if public_labels is not None and public_labels.shape != (len(images),):
        raise FedleakError(f"public labels must hold one class per image ({len(images)}), "
                           f"got {tuple(public_labels.shape)}")
    return COUNT_METHODS.get(method)(payload, knowledge, observed, images, public_labels, settings)


def recover_label_counts(payload: Payload, knowledge_or_num_classes: AttackerKnowledge | int,
                         public_images: Tensor | None = None, public_labels: Tensor | None = None,
                         settings: CountSettings = CountSettings()) -> Tensor:
    """The client's class counts (int64 per class, summing to the examples behind the update) from
    ``payload``, the attacker's knowledge (or the class count alone) and optionally public images in
    [0, 1] with their labels: :func:`raw_label_counts`, clipped and rounded (:func:`integer_counts`)."""
    raw = raw_label_counts(payload, knowledge_or_num_classes, public_images, public_labels, settings)
    return integer_counts(raw, payload.hyper.observed_images)


def counts_to_labels(counts: Tensor) -> Tensor:
    """A sorted label vector holding class c ``counts[c]`` times."""
    return torch.repeat_interleave(torch.arange(len(counts)), counts.long().cpu())


def label_histogram(labels: Tensor, num_classes: int) -> Tensor:
    """Class counts of a label vector."""
    return torch.bincount(labels.long().flatten().cpu(), minlength=num_classes)


def histogram_error(estimated: Tensor, true: Tensor) -> float:
    """Total-variation distance ½·Σ_c |p̂_c − p_c| between two count vectors, each normalised to
    sum to 1: 0 for the same class distribution, 1 for disjoint ones."""
    e, t = torch.as_tensor(estimated).double().flatten().cpu(), torch.as_tensor(true).double().flatten().cpu()
    if e.shape != t.shape:
        raise FedleakError(f"histograms of {e.numel()} and {t.numel()} classes cannot be compared")
    if (e < 0).any() or (t < 0).any() or e.sum() <= 0 or t.sum() <= 0:
        raise FedleakError("histograms must be non-negative counts with a positive total")
    return float(0.5 * (e / e.sum() - t / t.sum()).abs().sum())


@LABEL_METHODS.register("counts")
def counts_labels(payload: Payload, num_classes: int) -> Tensor:
    """Label counts from the classifier's bias update with the optimizer's step weights (momentum
    included) and a uniform mean prediction (Geng et al.'s count without a model at hand): for
    multi-step FedAvg, where the per-step methods see one sum of many minibatches' gradients."""
    return counts_to_labels(recover_label_counts(payload, num_classes))
