"""Can the attacker's simulation explain the update at all? The audit's mis-specification check.

An attack that simulates a different training run than the client's (another number of epochs, a
momentum the server was not told of, another learning rate) fails however strong it is, and its
failure says nothing about the client's privacy. Before attacking, :func:`check_specification`
measures whether updates of the declared training (:class:`~fedleak.fl.PublicHyperparameters`) on
data of the same shape look like the observed one. It simulates ``samples`` updates with
:class:`~fedleak.attacks.simulation.Simulation` on public images (drawn from ``public`` when given,
else smooth random images; public labels, else uniform random ones), each followed by the declared
defense exactly as a client runs it, and compares two statistics of the update with that reference:

- **total norm**: ``norm_z`` = (ln ‖Δ_obs‖ − mean ln ‖Δ_ref‖) / spread, the spread being the
  reference's standard deviation of ln ‖Δ‖, at least :data:`NORM_FLOOR`;
- **per-layer profile**: the share of each parameter tensor in the norm, ln(‖Δ_l‖ / ‖Δ‖); ``profile_z``
  is the root mean square over tensors of its z-score against the reference (spread at least
  :data:`PROFILE_FLOOR`), ``profile_cosine`` the cosine between the observed vector of per-tensor
  norms and the reference's mean one (for reading; the decision uses the z-scores).

The update is **consistent** when ``|norm_z| ≤`` :data:`NORM_Z` and ``profile_z ≤`` :data:`PROFILE_Z`
(thresholds calibrated by ``benchmarks/specification_check.py``, whose measured pass and fail rates
are in ``benchmarks/specification_check.json``). What the check cannot see: the data order (an update
of shuffled minibatches has the norms of one in order) and anything that leaves the norms as they
are; a declared gradient defense (DP-SGD) it cannot simulate, and says so (not consistent).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fedleak.attacks.base import AttackerKnowledge
from fedleak.attacks.label_counts import CountSettings, recover_label_counts
from fedleak.attacks.simulation import Params, Simulation
from fedleak.data.normalization import normalize
from fedleak.defenses import parse_defense
from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload

SAMPLES = 8  # simulated reference updates
NORM_Z = 4.0  # |norm_z| above this: the declared training does not make updates of this size
PROFILE_Z = 4.0  # profile_z above this: … nor of this per-layer structure
NORM_FLOOR = 0.05  # smallest spread of ln ‖Δ‖ (5 %): a reference of near-identical norms is not that exact
PROFILE_FLOOR = 0.05  # smallest spread of a tensor's ln share
NULL_SHARE = 1e-5  # a tensor below this share of the norm in every reference update: unchanged (rounding only)
MOVED_SHARE = 1e-3  # … which the observed update changes by at least this share: another training
CHUNK = 4  # reference updates simulated at once (vmap)


@dataclass(frozen=True)
class SpecificationCheck:
    """The observed update against ``samples`` updates the declared training makes on ``source``
    data. ``reference_range`` is the range of total norms the check accepts (the reference's mean
    ln-norm ± :data:`NORM_Z` spreads), ``reference_norms`` the simulated totals themselves."""

    consistent: bool
    reason: str
    norm: float
    reference_norms: tuple[float, ...]
    reference_range: tuple[float, float]
    norm_z: float
    profile_z: float
    profile_cosine: float
    samples: int
    source: str
    worst_layer: str | None = None  # the tensor whose share deviates most

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["reference_norms"], out["reference_range"] = list(self.reference_norms), list(self.reference_range)
        return out


def _norms(update: Mapping[str, Tensor], names: list[str]) -> Tensor:
    """Per-tensor L2 norms (float64), in ``names`` order."""
    return torch.stack([update[n].detach().double().norm() for n in names]).cpu()


def reference_inputs(knowledge: AttackerKnowledge, count: int, size: int, public: Tensor | None,
                     public_labels: Tensor | None, generator: torch.Generator,
                     shares: Tensor | None = None) -> tuple[Tensor, Tensor, str]:
    """``count`` batches of ``size`` images (count×size×C×H×W in [0, 1]) and labels to simulate the
    reference on, and where they come from. Labels are drawn from ``shares`` (the classes' shares,
    default uniform). Public images with labels: for each drawn label, one public image of that
    class (the label kept where the public set has none of it); public images without labels: drawn
    at random, with the drawn labels; no public images: smooth random images (uniform noise at a
    quarter of the resolution, bilinearly upsampled)."""
    c, h, w = knowledge.input_shape
    if shares is None:
        shares = torch.full((knowledge.num_classes,), 1.0 / knowledge.num_classes, dtype=torch.float64)
    labels = torch.multinomial(shares.double(), count * size, replacement=True, generator=generator)
    if public is None:
        coarse = torch.rand(count * size, c, max(1, h // 4), max(1, w // 4), generator=generator)
        images = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
        return images.view(count, size, c, h, w), labels.view(count, size), "smooth random images"
    if tuple(public.shape[1:]) != (c, h, w) or len(public) == 0:
        raise FedleakError(f"public images are {tuple(public.shape[1:])}, the model takes {(c, h, w)}")
    public = public.detach().cpu()
    index = torch.randint(len(public), (count * size,), generator=generator)
    if public_labels is not None:
        own = public_labels.detach().cpu().long().flatten()
        for k in labels.unique().tolist():
            pool = torch.nonzero(own == k).flatten()
            wanted = torch.nonzero(labels == k).flatten()
            if len(pool):
                index[wanted] = pool[torch.randint(len(pool), (len(wanted),), generator=generator)]
    return public[index].view(count, size, c, h, w), labels.view(count, size), f"{len(public)} public images"


def bare_simulation(payload: Payload, knowledge: AttackerKnowledge) -> Simulation:
    """The declared local training of one client without its defense (whose update stages the caller
    applies); one clear error when the defense changes the training itself (a gradient stage)."""
    hyper = payload.hyper
    if parse_defense(hyper.defense).gradient is not None:
        raise FedleakError(f"the declared defense {hyper.defense!r} changes the local training itself (a gradient "
                           "stage): the simulation cannot reproduce its updates")
    bare = Payload(payload.model_state, payload.update, dataclasses.replace(hyper, defense=None, clients=1),
                   payload.buffers)
    return Simulation(bare, knowledge)


def reference_updates(payload: Payload, knowledge: AttackerKnowledge, images: Tensor, labels: Tensor,
                      seed: int = 0) -> list[Params]:
    """The update the declared training makes on each batch of ``images`` (S×B×C×H×W in [0, 1], B =
    the observed images behind the update) with ``labels`` (S×B): each client's local training
    simulated (:class:`Simulation`, without defense), then the declared defense's update stages as a
    client runs them (each client's, the mean of ``hyper.clients``, the server's), random ones drawn
    from a generator seeded ``seed``."""
    hyper = payload.hyper
    simulation = bare_simulation(payload, knowledge)
    pipeline = parse_defense(hyper.defense)
    s, k, b = images.shape[0], hyper.clients, hyper.batch_size
    device = next(iter(simulation.params.values())).device
    x = normalize(images.to(device), knowledge.mean, knowledge.std).reshape(s * k, b, *images.shape[2:])
    y = labels.to(device).reshape(s * k, b)
    one = lambda xi, yi: simulation.update(xi, yi, batched=True)  # noqa: E731  (functional grads: no graph kept)
    raw: list[Params] = []
    for start in range(0, s * k, CHUNK):
        part = torch.func.vmap(one, randomness="different")(x[start:start + CHUNK], y[start:start + CHUNK])
        raw += [{n: t[i].detach() for n, t in part.items()} for i in range(len(next(iter(part.values()))))]
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(s):
        clients = [pipeline.on_client(raw[i * k + j], generator) for j in range(k)]
        mean = {n: torch.stack([c[n] for c in clients]).mean(0) for n in clients[0]}
        out.append(pipeline.on_server(mean, generator))
    return out


@dataclass(frozen=True)
class Reference:
    """Per-tensor norms (S×L, float64, tensors in ``names`` order) of ``S`` updates the declared
    training made on ``source`` data: what :func:`compare` holds an observed update against. One
    reference serves every update of the same declared training on the same global model."""

    names: tuple[str, ...]
    per_layer: Tensor
    source: str


def simulate_reference(payload: Payload, knowledge: AttackerKnowledge, public: Tensor | None = None,
                       public_labels: Tensor | None = None, *, samples: int = SAMPLES, seed: int = 0,
                       shares: Tensor | None = None) -> Reference:
    """The :class:`Reference` of the payload's declared training: ``samples`` updates on batches of
    :func:`reference_inputs` (public images in [0, 1], N×C×H×W, and their labels, when given; labels
    drawn from ``shares``, the classes' shares of the client's data where the caller has an estimate,
    else uniform)."""
    if samples < 2:
        raise FedleakError("the specification check needs at least 2 reference updates")
    generator = torch.Generator().manual_seed(seed)
    images, labels, source = reference_inputs(knowledge, samples, payload.hyper.observed_images, public,
                                              public_labels, generator, shares)
    names = list(payload.update)
    updates = reference_updates(payload, knowledge, images, labels, seed)
    return Reference(tuple(names), torch.stack([_norms(r, names) for r in updates]), source)


def update_shares(payload: Payload, knowledge: AttackerKnowledge, public: Tensor | None = None,
                  public_labels: Tensor | None = None) -> Tensor | None:
    """The classes' shares of the client's data as its update shows them under the declared
    training (:func:`~fedleak.attacks.label_counts.recover_label_counts`, Geng et al.'s count along
    the interpolated path); ``None`` where the update gives none (no classifier bias, Adam)."""
    try:
        counts = recover_label_counts(payload, knowledge, public, public_labels, CountSettings(method="interpolate"))
    except FedleakError:
        return None
    counts = counts.double()
    return counts / counts.sum() if float(counts.sum()) > 0 else None


def check_specification(payload: Payload, knowledge: AttackerKnowledge, public: Tensor | None = None,
                        public_labels: Tensor | None = None, *, samples: int = SAMPLES, seed: int = 0,
                        estimate_labels: bool = True) -> SpecificationCheck:
    """Whether updates of the payload's declared training can be the observed one (see the module's
    docstring): :func:`compare` against :func:`simulate_reference`, its labels drawn from the
    update's class shares (:func:`update_shares`; uniform without ``estimate_labels`` or where the
    update gives none). A training the simulation cannot reproduce (a gradient defense) is not
    consistent, with the reason."""
    shares = update_shares(payload, knowledge, public, public_labels) if estimate_labels else None
    try:
        reference = simulate_reference(payload, knowledge, public, public_labels, samples=samples, seed=seed,
                                       shares=shares)
    except FedleakError as exc:
        total = float(_norms(payload.update, list(payload.update)).norm())
        return _failed(f"not checked: {exc}", total, samples, "none")
    return compare(payload, reference)


def compare(payload: Payload, reference: Reference) -> SpecificationCheck:
    """The observed update's total norm and per-layer profile against ``reference``."""
    names = list(reference.names)
    if set(names) != set(payload.update):
        raise FedleakError("the reference was simulated for other parameters than the update holds")
    observed = _norms(payload.update, names)
    total = float(observed.norm())
    samples, source, per_layer = len(reference.per_layer), reference.source, reference.per_layer
    if not math.isfinite(total) or total == 0:
        return _failed(f"mis-specified: the update's norm is {total:g}, which no training explains", total,
                       samples, source)
    totals = per_layer.norm(dim=1)
    if not bool(torch.isfinite(per_layer).all()) or not bool((totals > 0).all()):
        return _failed("not checked: the declared training makes no finite, non-zero update on the reference data",
                       total, samples, source)
    ln_totals = totals.log()
    centre, spread = float(ln_totals.mean()), max(float(ln_totals.std()), NORM_FLOOR)
    norm_z = (math.log(total) - centre) / spread
    tiny = torch.finfo(torch.float64).tiny
    share_obs = (observed.clamp_min(tiny) / total).log()
    share_ref = (per_layer.clamp_min(tiny) / totals[:, None]).log()
    null = share_ref.max(0).values < math.log(NULL_SHARE)  # no share under the declared training (rounding only)
    live = ~null
    z = (share_obs - share_ref.mean(0)) / share_ref.std(0).clamp_min(PROFILE_FLOOR)
    profile_z = float(z[live].pow(2).mean().sqrt()) if bool(live.any()) else 0.0
    mean_ref = per_layer.mean(0)
    profile_cosine = float(observed @ mean_ref / (observed.norm() * mean_ref.norm()))
    moved = null & (share_obs > math.log(MOVED_SHARE))
    worst = names[int(torch.where(live, z.abs(), torch.zeros_like(z)).argmax())]
    low, high = math.exp(centre - NORM_Z * spread), math.exp(centre + NORM_Z * spread)
    if abs(norm_z) > NORM_Z:
        consistent = False
        reason = (f"mis-specified: the update's norm {total:.3g} is {'above' if norm_z > 0 else 'below'} what the "
                  f"declared training makes on {source} ({low:.3g}–{high:.3g}; z = {norm_z:+.1f})")
    elif bool(moved.any()):
        consistent, worst = False, names[int(moved.nonzero()[0])]
        reason = (f"mis-specified: {worst!r} changed (share {math.exp(float(share_obs[names.index(worst)])):.2g} of "
                  "the norm), which the declared training leaves as it is")
    elif profile_z > PROFILE_Z:
        consistent = False
        reason = (f"mis-specified: the update's per-layer norms do not fit the declared training (profile z "
                  f"{profile_z:.1f} > {PROFILE_Z:g}, most of all {worst!r})")
    else:
        consistent = True
        reason = (f"consistent: norm {total:.3g} within {low:.3g}–{high:.3g} (z = {norm_z:+.1f}), per-layer profile "
                  f"z {profile_z:.1f}, on {samples} simulated updates of {source}")
    return SpecificationCheck(consistent, reason, total, tuple(float(t) for t in totals), (low, high), norm_z,
                              profile_z, profile_cosine, samples, source, worst)


def _failed(reason: str, total: float, samples: int, source: str) -> SpecificationCheck:
    nan = float("nan")
    return SpecificationCheck(False, reason, total, (), (nan, nan), nan, nan, nan, samples, source)
