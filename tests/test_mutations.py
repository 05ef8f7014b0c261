"""Tests that kill mutations of the core which no other test noticed (one test per mutation; each
docstring names the mutation it kills). They observe the attacks from outside where they can: the
Adam steps of Inverting Gradients are watched through torch's global optimizer-step hooks, so they
do not depend on which fedleak module builds the optimiser or the schedule."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from contextlib import contextmanager

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from fedleak.attacks import ATTACKS, Attack, AttackerKnowledge, Reconstruction, build_attack
from fedleak.attacks.base import AttackConfig
from fedleak.config import build_config
from fedleak.fl import Client, ClientData
from fedleak.metrics.classify import recognition_rates
from fedleak.models import create_model


MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # the valid box in normalised space is [-1, 1]
SHAPE = (3, 8, 8)
CLASSES = 5


def _setup(batch: int = 1, seed: int = 0):
    """A tiny FedSGD payload of a LeNet on 8×8 images, and the attacker's knowledge (labels known)."""
    model = create_model("lenet", CLASSES, 3, 8, seed=0)
    g = torch.Generator().manual_seed(seed)
    data = ClientData(torch.rand(batch, *SHAPE, generator=g), torch.arange(batch) % CLASSES)
    payload = _client(model, MEAN, STD).update(data)
    return payload, _knowledge(model, SHAPE, MEAN, STD, data.labels)


def _client(model, mean, std):
    """An honest FedSGD client (whichever of the client's constructor forms this tree has)."""
    if "normalization" in inspect.signature(Client.__init__).parameters:
        from fedleak.data.normalization import Normalization

        return Client(model, Normalization(mean, std))
    return Client(model, mean, std)


def _knowledge(model, shape, mean, std, labels):
    """The attacker's knowledge of ``model`` (labels known)."""
    names = {f.name for f in dataclasses.fields(AttackerKnowledge)}
    if "mean" in names:
        norm = {"mean": mean, "std": std}
    else:
        from fedleak.data.normalization import Normalization

        norm = {"normalization": Normalization(mean, std)}
    return AttackerKnowledge(architecture=copy.deepcopy(model), input_shape=shape, num_classes=CLASSES,
                             labels=labels.clone(), **norm)


@contextmanager
def adam_steps():
    """Record, before every Adam step, the learning rate, the candidate (the optimised tensor, as left
    by the previous step and its projection), its gradient as handed to Adam, and the tensor itself."""
    steps: list[dict] = []

    def hook(optimizer, args, kwargs):
        if isinstance(optimizer, torch.optim.Adam):
            group = optimizer.param_groups[0]
            p = group["params"][0]
            steps.append({"lr": group["lr"], "value": p.detach().clone(),
                          "grad": None if p.grad is None else p.grad.detach().clone(), "param": p})

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield steps
    finally:
        handle.remove()


def _ig(**settings):
    base = {"iterations": 4, "log_every": 1, "tv": 0.0}
    return build_attack("ig", {**base, **settings})


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(MEAN).view(-1, 1, 1)
    s = torch.tensor(STD).view(-1, 1, 1)
    return (x * s + m).clamp(0, 1)


# ------------------------------------------------------------------------------------ 1. the schedule

def test_ig_lr_schedule_drops_tenfold_at_three_five_seven_eighths():
    """Kills mutation 1: IG's MultiStepLR milestones moved from 3/8, 5/8, 7/8 of the iterations to
    1/2, 3/4, 7/8. The learning rate Adam actually uses at every step is read off the optimizer."""
    payload, knowledge = _setup()
    with adam_steps() as steps:
        _ig(iterations=8, lr=0.1).run(payload, knowledge, seed=0)
    # milestones 3, 5, 7 of 8: steps 0–2 at lr, 3–4 at lr/10, 5–6 at lr/100, 7 at lr/1000
    # (1/2, 3/4, 7/8 would give milestones 4, 6, 7)
    assert [s["lr"] for s in steps] == pytest.approx([0.1] * 3 + [0.01] * 2 + [0.001] * 2 + [0.0001], rel=1e-9)
    # schedule="none" keeps the learning rate
    with adam_steps() as steps:
        _ig(iterations=4, lr=0.1, schedule="none").run(payload, knowledge, seed=0)
    assert [s["lr"] for s in steps] == pytest.approx([0.1] * 4, rel=1e-9)


def test_step_milestones_are_three_five_seven_eighths():
    """Kills mutation 1 at its source: ``step_milestones`` (the schedule's milestones) must be at
    3/8, 5/8 and 7/8 of the iterations, not 1/2, 3/4, 7/8."""
    try:
        from fedleak.attacks.optimization import step_milestones
    except ImportError:  # moved by a refactor
        from fedleak.attacks.engine import step_milestones
    assert step_milestones(8) == [3, 5, 7]
    assert step_milestones(16) == [6, 10, 14]
    assert step_milestones(1200) == [450, 750, 1050]


# ------------------------------------------------------------------------------ 2. the box constraint

def test_ig_box_clamps_the_internal_candidate_after_every_step():
    """Kills mutation 2: the box constraint turned off. With mean = std = 0.5 the valid pixel box in
    normalised space is [-1, 1], and the random-normal init lies far outside it; after every Adam step
    the candidate itself (not only the final conversion to [0, 1] images) must lie inside the box."""
    payload, knowledge = _setup()
    with adam_steps() as steps:
        rec = _ig(iterations=4, lr=0.1, restarts=2).run(payload, knowledge, seed=0)
    assert len(steps) == 4
    assert steps[0]["value"].abs().max() > 1.5  # the init is outside the box: the test is not vacuous
    for s in steps[1:]:  # each seen before a step, i.e. after the previous step and its projection
        assert s["value"].min() >= -1 - 1e-6 and s["value"].max() <= 1 + 1e-6
    final = steps[-1]["param"].detach()  # the optimised tensor itself, after the last step
    assert final.min() >= -1 - 1e-6 and final.max() <= 1 + 1e-6
    assert rec.images.min() >= 0 and rec.images.max() <= 1
    # unboxed, the same attack leaves the candidate outside (what the check above tells apart)
    with adam_steps() as steps:
        _ig(iterations=4, lr=0.1, restarts=2, boxed=False).run(payload, knowledge, seed=0)
    assert steps[-1]["param"].detach().abs().max() > 1.5


# ------------------------------------------------------------------------------------- 3. rate (b)

GROUPS = [([True, False], True), ([False, False], False), ([True, True], True), ([False, True], False)]


def test_rate_b_counts_originals_with_any_correct_reconstruction():
    """Kills mutation 3 in ``recognition_rates``: rate (b) computed with ``all`` instead of ``any``
    (an original counts when at least one of its reconstructions is classified correctly)."""
    rates = recognition_rates(GROUPS)
    assert rates["rate_a"] == pytest.approx(4 / 8)
    assert rates["rate_b"] == pytest.approx(3 / 4)  # `all` gives 1/4
    assert rates["rate_b_orig_correct"] == pytest.approx(1.0)  # `all` gives 1/2
    assert rates["rate_b_orig_wrong"] == pytest.approx(1 / 2)  # `all` gives 0
    assert rates["originals"] == 4 and rates["originals_correct"] == 2


def test_stacking_table_rate_b_counts_any_correct_reconstruction():
    """Kills mutation 3 in the studies' table (``rate_rows``, whose rate (b) column and Wilson interval
    are computed beside ``recognition_rates``): ``all`` instead of ``any``."""
    from fedleak.store import RunRecord
    from fedleak.studies.recognition import rate_rows

    records = [
        RunRecord(key=f"k{i}", study="stacking", name=f"r{i}", params={"batch_size": 2}, config={}, seed=i,
                  metrics={"classification": {"recon_correct": c, "original_correct": o,
                                              "recon_confidence": [0.9] * len(c)},
                           "psnr": 10.0, "ssim": 0.1})
        for i, (c, o) in enumerate(GROUPS)
    ]
    (row,) = rate_rows(records, ["batch_size"])
    assert row["rate_a"] == pytest.approx(4 / 8)
    assert row["rate_b"] == pytest.approx(3 / 4)  # `all` gives 1/4
    assert row["rate_b_n"] == 4
    assert row["rate_b_ci_low"] < 3 / 4 < row["rate_b_ci_high"]
    assert row["rate_b_orig_correct"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ 4. the attack's seed

class SeedSpy(Attack):
    """Records the seed it is given and returns mid-grey images."""

    Config = AttackConfig
    name = "seed-spy"
    seen: list[int] = []

    def run(self, payload, knowledge, seed=0, progress=False):
        SeedSpy.seen.append(seed)
        b = payload.hyper.observed_images
        return Reconstruction(images=torch.full((b, *knowledge.input_shape), 0.5),
                              labels=torch.zeros(b, dtype=torch.long), matching_loss=0.0,
                              restart_losses=[0.0], iterations=0, seconds=0.0)


def test_pipeline_hands_the_attack_the_run_seed_not_the_client_seed(monkeypatch):
    """Kills mutation 4: the attack handed the client's private seed. The pipeline must give the attack
    the run seed (``config.seed``), never ``client.seed``; changing the client seed alone must not
    change what the attack gets."""
    from fedleak.pipeline import run

    monkeypatch.setitem(ATTACKS._entries, "seed-spy", SeedSpy)
    monkeypatch.setattr(SeedSpy, "seen", [])
    tiny = {"data.image_size": 8, "model.name": "lenet", "metrics.lpips": [], "attack.name": "seed-spy"}
    for run_seed, client_seed in ((3, 11), (3, 12), (4, 11)):
        config = build_config(flags={**tiny, "seed": run_seed, "client.seed": client_seed})
        assert config.seed == run_seed and config.client.seed == client_seed
        run(config)
    assert SeedSpy.seen == [3, 3, 4]


# ----------------------------------------------------------------------------- 5. the winning restart

def test_ig_returns_the_winning_restart_not_restart_zero():
    """Kills mutation 5: the returned images taken from restart 0 instead of the restart with the
    lowest final matching loss. A seed whose winner is restart 1 or 2 is used; the returned images
    must be that restart's candidate (read off the optimised tensor) and not restart 0's."""
    payload, knowledge = _setup()
    for seed in range(20):
        with adam_steps() as steps:
            rec = _ig(iterations=3, restarts=3).run(payload, knowledge, seed=seed)
        losses = torch.tensor(rec.restart_losses)
        winner = int(torch.argmin(losses))
        if winner != 0 and losses[winner] < losses[0]:
            break
    else:
        pytest.fail("no seed in 0..19 gave a winner other than restart 0")
    assert rec.matching_loss == pytest.approx(float(losses[winner]))
    x = steps[-1]["param"].detach().reshape(3, 1, *SHAPE)  # restarts × batch × C×H×W (one payload)
    assert torch.allclose(rec.images, _to_unit(x[winner]), atol=1e-6)
    assert not torch.allclose(rec.images, _to_unit(x[0]), atol=1e-3)


def test_best_restart_is_the_lowest_finite_loss():
    """Kills mutation 5 at the selection: the winner is the lowest finite final loss, wherever it is."""
    from fedleak.attacks.optimization import best_restart

    assert best_restart(torch.tensor([0.5, 0.2, 0.3])) == 1
    assert best_restart(torch.tensor([0.5, 0.4, 0.1])) == 2
    assert best_restart(torch.tensor([float("nan"), 0.4, float("inf")])) == 1


# ------------------------------------------------------------------------------ 6. signed gradients

def test_ig_steps_on_the_sign_of_the_gradient():
    """Kills mutation 6: IG's signed gradient turned off. Adam must be handed sign(∇) (every entry
    −1, 0 or +1) — by default and with ``signed=True`` — equal to the sign of the raw gradient the
    unsigned attack hands it from the same start; and Adam on signs makes its second step exactly
    lr or lr/19 per pixel (v̂ = 1: step = lr·(0.09·s₁ + 0.1·s₂)/0.19)."""
    payload, knowledge = _setup()
    settings = {"iterations": 3, "boxed": False, "schedule": "none", "lr": 0.1}
    with adam_steps() as raw:
        _ig(signed=False, **settings).run(payload, knowledge, seed=0)
    assert not torch.isin(raw[0]["grad"], torch.tensor([-1.0, 0.0, 1.0])).all()  # raw gradients are not signs
    for extra in ({}, {"signed": True}):
        with adam_steps() as signed:
            _ig(**settings, **extra).run(payload, knowledge, seed=0)
        for s in signed:
            assert torch.isin(s["grad"], torch.tensor([-1.0, 0.0, 1.0])).all()
        assert torch.equal(signed[0]["value"], raw[0]["value"])  # the same start
        assert torch.equal(signed[0]["grad"], torch.sign(raw[0]["grad"]))
        # the first step moves every pixel by lr against the sign of the gradient
        first = signed[1]["value"] - signed[0]["value"]
        assert torch.allclose(first, -0.1 * torch.sign(raw[0]["grad"]), atol=1e-6)
        second = (signed[2]["value"] - signed[1]["value"]).abs()
        near = torch.minimum((second - 0.1).abs(), (second - 0.1 / 19).abs())
        assert near.max() < 1e-5


# ------------------------------------------------------------------------------- 7. the imprint rows

def _imprint_gradients(order):
    """Exact gradients of a tiny imprint layer (rows in the given ``order`` of their thresholds).

    Four rows measure the mean pixel of a 1×2×2 input with thresholds 0.1, 0.3, 0.5, 0.7; three
    images have brightness 0.2, 0.4, 0.6, one per bin [t_i, t_{i+1}); the decoder's columns are equal,
    so a sample's gradient at a row does not depend on which (active) row it is."""
    from fedleak.fl.modifications import ImprintBlock

    torch.manual_seed(0)
    thresholds = torch.tensor([0.1, 0.3, 0.5, 0.7], dtype=torch.float64)[order]
    block = ImprintBlock((1, 2, 2), 4, dtype=torch.float64)
    offsets = torch.tensor([[0.05, -0.05, 0.02, -0.02], [-0.1, 0.1, 0.03, -0.03], [0.08, 0.0, -0.08, 0.0]],
                           dtype=torch.float64)
    images = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)[:, None] + offsets  # mean pixel 0.2, 0.4, 0.6
    with torch.no_grad():
        block.encoder.weight.fill_(0.25)
        block.encoder.bias.copy_(-thresholds)
        block.decoder.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)[:, None].expand(4, 4))
    out = block(images.view(3, 1, 2, 2))
    weights = torch.tensor([1.0, 2.0, -1.5], dtype=torch.float64).view(3, 1, 1, 1)
    (out.pow(2) * weights).sum().backward()
    return images, thresholds, block.encoder.weight.grad.detach(), block.encoder.bias.grad.detach()


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 0, 3, 1]])
def test_imprint_bin_image_is_adjacent_row_difference(order):
    """Kills mutation 7: the imprint rows off by one. Bin i's image is (∇W_i − ∇W_{i+1}) / (∇b_i − ∇b_{i+1})
    of the rows in ascending threshold order, exactly; pairing rows (i, i+2), or bin i with row i−1,
    mixes two images or misplaces the bin (checked here to give something else)."""
    from fedleak.attacks.imprint import bin_images

    images, thresholds, gw, gb = _imprint_gradients(order)
    candidates, db = bin_images(gw, gb, thresholds)
    assert candidates.shape == (4, 4) and db.shape == (4,)
    for j in range(3):  # image j lies in bin j of the ascending thresholds
        assert torch.allclose(candidates[j], images[j], rtol=0, atol=1e-12)
    assert db[3] == 0 and (db[:3] != 0).all()  # nothing above the top threshold
    # what the alternatives would give, from the same gradients (the test tells them apart)
    rank = torch.argsort(thresholds)
    w, b = gw[rank], gb[rank]
    skip = (w[0] - w[2]) / (b[0] - b[2])  # rows (i, i+2): a mix of images 0 and 1
    previous = (w[1] - w[0]) / (b[1] - b[0])  # bin 1 read from rows (i, i−1): image 0, not image 1
    assert not torch.allclose(skip, images[0], atol=1e-3) and not torch.allclose(previous, images[1], atol=1e-3)


def test_imprint_attack_recovers_each_image_exactly():
    """Kills mutation 7 through the attack: the imprint recovery on a tiny imprinted model gives back
    each client image exactly (one image per bin)."""
    from fedleak.fl.modifications import ImprintBlock, Imprinted

    torch.manual_seed(0)
    shape = (1, 4, 4)
    n = math.prod(shape)
    mean, std = (0.5,), (0.5,)
    body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, CLASSES))
    block = ImprintBlock(shape, 6)
    thresholds = torch.tensor([-0.8, -0.5, -0.2, 0.1, 0.4, 0.7])  # on the normalised mean pixel
    with torch.no_grad():
        block.encoder.weight.fill_(1.0 / n)
        block.encoder.bias.copy_(-thresholds)
        block.decoder.weight.fill_(0.01)
    model = Imprinted(block, body)
    levels = torch.tensor([0.175, 0.325, 0.475, 0.625, 0.775])  # normalised mean pixel -0.65 … 0.55: bins 0–4
    g = torch.Generator().manual_seed(1)
    images = (levels.view(-1, 1, 1, 1) + 0.03 * (torch.rand(5, *shape, generator=g) - 0.5)).clamp(0, 1)
    data = ClientData(images, torch.arange(5) % CLASSES)
    payload = _client(model, mean, std).update(data)
    knowledge = _knowledge(model, shape, mean, std, data.labels)
    rec = build_attack("imprint").run(payload, knowledge)
    assert rec.images.shape == images.shape
    for img in images:  # every original is one of the reconstructions, to float32 rounding
        err = (rec.images - img).flatten(1).abs().max(1).values.min()
        assert err < 1e-4
