"""The audit's mis-specification check (fedleak.specification): does the declared training explain the update?"""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedleak.attacks import AttackerKnowledge
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientData, ClientTraining, Payload
from fedleak.specification import NORM_Z, Reference, check_specification, compare, reference_updates

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
DECLARED = {"protocol": "fedavg", "model_mode": "train", "lr": 0.1, "local_batch_size": 8, "epochs": 1}
EXAMPLES = 64


def tiny_net() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Sigmoid(), nn.Flatten(),
                             nn.Linear(6 * 8 * 8, 3))


def smooth(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    images = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False).clamp(0, 1)
    return images, torch.randint(3, (n,), generator=g)


def declared_update(model: nn.Module, seed: int = 1, defense: str | None = None, **really) -> Payload:
    """What a client that trained with ``really`` sent, with the hyperparameters the server was told."""
    x, y = smooth(EXAMPLES, seed)
    payload = Client(model, Normalization(MEAN, STD), ClientTraining(**{**DECLARED, **really}), defense).update(
        ClientData(x, y))
    return dataclasses.replace(payload, hyper=ClientTraining(**DECLARED).public(EXAMPLES))


@pytest.fixture(scope="module")
def setting():
    model = tiny_net()
    return model, AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 3, MEAN, STD), smooth(256, 99)


def test_a_client_that_trained_as_declared_passes(setting):
    model, knowledge, (public, labels) = setting
    check = check_specification(declared_update(model), knowledge, public, labels)
    assert check.consistent, check.reason
    assert check.reason.startswith("consistent") and check.samples == 8 and len(check.reference_norms) == 8
    low, high = check.reference_range
    assert low < check.norm < high and abs(check.norm_z) <= NORM_Z


@pytest.mark.parametrize("really", [{"momentum": 0.9}, {"model_mode": "eval"}, {"lr": 0.5}])
def test_a_client_that_trained_otherwise_is_mis_specified(setting, really):
    model, knowledge, (public, labels) = setting
    for source in ((public, labels), (None, None)):  # public images, and smooth random ones
        check = check_specification(declared_update(model, **really), knowledge, *source)
        assert not check.consistent and check.reason.startswith("mis-specified"), (really, check.reason)


def test_the_reference_is_the_declared_training_on_other_data(setting):
    """Each reference update is the client's own computation (fedleak.fl.Client) on that batch."""
    model, knowledge, _ = setting
    payload = declared_update(model)
    x, y = smooth(2 * EXAMPLES, 5)
    updates = reference_updates(payload, knowledge, x.view(2, EXAMPLES, 3, 8, 8), y.view(2, EXAMPLES))
    for i, update in enumerate(updates):
        part = slice(i * EXAMPLES, (i + 1) * EXAMPLES)
        client = Client(model, Normalization(MEAN, STD), ClientTraining(**DECLARED)).update(ClientData(x[part], y[part]))
        for name, t in client.update.items():
            torch.testing.assert_close(update[name], t, atol=1e-6, rtol=1e-4)


def test_scores_are_z_scores_against_the_reference():
    """norm_z by hand: a reference of totals e^0, e^0.2, e^0.4, e^0.6 (ln-mean 0.3, sd 0.258) and an
    update of norm e^1 (all in one tensor, as in the reference: no profile deviation)."""
    ln = torch.tensor([0.0, 0.2, 0.4, 0.6], dtype=torch.float64)
    per_layer = torch.stack([ln.exp() * 0.6, ln.exp() * 0.8], dim=1)  # shares 0.6 / 0.8 of each total
    reference = Reference(("a", "b"), per_layer, "test")
    update = {"a": torch.tensor([0.6 * math.e]), "b": torch.tensor([0.8 * math.e])}
    payload = Payload({}, update, ClientTraining().public(1))
    check = compare(payload, reference)
    sd = float(ln.std())
    assert check.norm == pytest.approx(math.e)
    assert check.norm_z == pytest.approx((1 - 0.3) / sd)
    assert check.profile_z == pytest.approx(0.0, abs=1e-9) and check.profile_cosine == pytest.approx(1.0)
    assert check.consistent == (abs((1 - 0.3) / sd) <= NORM_Z)
    far = compare(Payload({}, {n: t * 100 for n, t in update.items()}, payload.hyper), reference)
    assert not far.consistent and "above what the declared training makes" in far.reason


def test_what_the_simulation_cannot_reproduce_is_not_consistent(setting):
    model, knowledge, (public, labels) = setting
    payload = declared_update(model)
    dp = dataclasses.replace(payload, hyper=dataclasses.replace(payload.hyper, defense="dpsgd:clip=1,noise_multiplier=1"))
    check = check_specification(dp, knowledge, public, labels)
    assert not check.consistent and check.reason.startswith("not checked") and "gradient" in check.reason
    zero = Payload(payload.model_state, {n: torch.zeros_like(t) for n, t in payload.update.items()}, payload.hyper)
    assert not check_specification(zero, knowledge).consistent
