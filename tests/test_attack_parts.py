"""Label recovery, layer selection, early stopping and batched restarts."""

import copy
import dataclasses

import pytest
import torch

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.labels import LABEL_METHODS
from fedleak.attacks.layers import group_layers, select_layers
from fedleak.attacks.matching import GradientMatching
from fedleak.attacks.optimization import EarlyStop
from fedleak.errors import ConfigError, FedleakError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientData
from fedleak.metrics import label_accuracy
from fedleak.models import create_model

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _payload(labels, model="resnet18", size=16, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = ClientData(torch.rand(len(labels), 3, size, size, generator=g), torch.tensor(labels))
    net = create_model(model, classes, 3, size, width=0.25, seed=seed)
    knowledge = AttackerKnowledge(copy.deepcopy(net), (3, size, size), classes, MEAN, STD)
    return data, Client(net, Normalization(MEAN, STD)).update(data), knowledge


@pytest.mark.parametrize("method", ["yin", "wainakh"])
def test_distinct_labels_are_recovered(method):
    data, payload, _ = _payload([7, 2, 5, 0])
    got = LABEL_METHODS.get(method)(payload, 10)
    assert sorted(got.tolist()) == [0, 2, 5, 7]


def test_wainakh_counts_repeated_labels():
    data, payload, _ = _payload([3, 3, 3, 1], seed=2)
    got = LABEL_METHODS.get("wainakh")(payload, 10)
    assert label_accuracy(got, data.labels) >= 0.75 and 3 in got.tolist() and 1 in got.tolist()


def test_yin_refuses_batches_larger_than_classes():
    _, payload, _ = _payload([0, 1, 2], classes=2 + 1)
    assert sorted(LABEL_METHODS.get("yin")(payload, 3).tolist()) == [0, 1, 2]
    _, payload, _ = _payload([0, 1, 0, 1], classes=2)
    with pytest.raises(FedleakError, match="batch ≤ classes"):
        LABEL_METHODS.get("yin")(payload, 2)


def test_layer_selection():
    names = ["a.weight", "a.bias", "b.weight", "c.weight", "c.bias"]
    assert group_layers(names) == [["a.weight", "a.bias"], ["b.weight"], ["c.weight", "c.bias"]]
    update = {"a.weight": torch.ones(3), "a.bias": torch.ones(1), "b.weight": torch.full((2,), 9.0),
              "c.weight": torch.zeros(4), "c.bias": torch.zeros(1)}
    assert select_layers(update, "all", None) == names
    assert select_layers(update, "largest-norm", 2) == ["a.weight", "a.bias", "b.weight"]
    assert select_layers(update, "first", 1) == ["a.weight", "a.bias"]
    assert select_layers(update, "last", 1) == ["c.weight", "c.bias"]
    with pytest.raises(ConfigError, match="layer count"):
        select_layers(update, "first", 4)


def test_early_stop():
    stop = EarlyStop(patience=2, min_delta=0.1)
    assert [stop(v) for v in (1.0, 0.5, 0.49, 0.48, 0.3)] == [False, False, False, True, False]
    assert not any(EarlyStop(None, 0.1)(v) for v in (1, 1, 1))


@pytest.mark.parametrize("model, size, trials", [pytest.param("convnet", 16, 3, marks=pytest.mark.slow, id="convnet"),
                                                  pytest.param("lenet", 8, 2, id="lenet")])
def test_batched_gradients_equal_one_trial_at_a_time(model, size, trials):
    data, payload, knowledge = _payload([1, 4], model=model, size=size)
    objective = GradientMatching(payload, knowledge, regularizers={"tv": 0.01})
    x = torch.randn(trials, 2, 3, size, size, generator=torch.Generator().manual_seed(1))
    gx, match = (t[0] for t in objective.gradients(x[None], data.labels[None]))
    for r in range(trials):
        g1, m1 = (t[0] for t in objective.gradients(x[r : r + 1][None], data.labels[None]))
        torch.testing.assert_close(gx[r], g1[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(match[r], m1[0], rtol=1e-5, atol=1e-7)


def test_early_stopping_ends_the_attack_and_the_trace_records_it():
    data, payload, knowledge = _payload([2], model="lenet", size=8)
    rec = build_attack("ig", {"iterations": 500, "patience": 5, "min_delta": 0.5, "schedule": "none",
                              "log_every": 1}).run(  # the loss read back each step
        payload, knowledge
    )
    assert rec.iterations < 500
    assert rec.trace[-1]["iteration"] == rec.iterations and "seconds" in rec.trace[-1]
    # It stopped at the first plateau of the traced loss (one row per iteration), not before or after.
    plateau = EarlyStop(patience=5, min_delta=0.5)
    assert [plateau(row["loss"]) for row in rec.trace[:-1]] == [False] * (rec.iterations - 1) + [True]


@pytest.mark.parametrize("how", ["first", "last", "largest-norm"])
def test_layer_selection_reaches_the_attack(how):
    data, payload, knowledge = _payload([2], model="lenet", size=8)
    told = dataclasses.replace(knowledge, labels=data.labels)  # labels fixed: no recovery from the update
    attack = build_attack("ig", {"iterations": 3, "layers": how, "layer_count": 1})
    selected = select_layers(payload.update, how, 1)
    assert 0 < len(selected) < len(payload.update)

    def negated(names):  # keeps every layer's norm, so largest-norm selects the same layer
        return dataclasses.replace(payload, update={n: -t if n in names else t for n, t in payload.update.items()})

    base = attack.run(payload, told).images
    others = [n for n in payload.update if n not in selected]
    assert torch.equal(attack.run(negated(others), told).images, base)  # unselected layers are not matched
    assert not torch.equal(attack.run(negated(selected), told).images, base)
    with pytest.raises(ConfigError, match="unknown layer selection"):
        build_attack("ig", {"layers": "middle"})


def test_bn_prior_is_zero_at_the_truth_and_needs_declared_stats():
    from fedleak.fl import normalize

    g = torch.Generator().manual_seed(0)
    data = ClientData(torch.rand(2, 3, 16, 16, generator=g), torch.tensor([1, 3]))
    net = create_model("convnet", 10, 3, 16, width=0.125, seed=0)
    client = Client(net, Normalization(MEAN, STD))
    payload = client.update(data)
    stats = client.batch_norm_statistics(data)
    assert len(stats) == 8 and stats[0][0].shape == (8,)
    told = AttackerKnowledge(copy.deepcopy(net), (3, 16, 16), 10, MEAN, STD, bn_stats=stats)
    objective = GradientMatching(payload, told, regularizers={"bn": 1.0})
    truth = normalize(data.images, MEAN, STD)
    total, match = objective.trial(truth, data.labels)
    assert float((total - match).detach()) == pytest.approx(0.0, abs=1e-8)
    other, _ = objective.trial(torch.randn(2, 3, 16, 16, generator=g), data.labels)
    assert float(other.detach()) > float(total.detach()) + 1e-3
    trials = torch.randn(2, 2, 3, 16, 16, generator=g)
    gx, _ = (t[0] for t in objective.gradients(trials[None], data.labels[None]))  # batched trials, one at a time
    for r in range(2):
        torch.testing.assert_close(gx[r], objective.gradients(trials[r : r + 1][None], data.labels[None])[0][0, 0],
                                   rtol=1e-4, atol=1e-6)
    plain, _ = (t[0] for t in GradientMatching(payload, told).gradients(trials[None], data.labels[None]))
    assert not torch.allclose(gx, plain, rtol=1e-3, atol=1e-6)  # the prior pulls on the images
    blind = AttackerKnowledge(copy.deepcopy(net), (3, 16, 16), 10, MEAN, STD)
    with pytest.raises(FedleakError, match="knowledge.bn_stats=true"):
        GradientMatching(payload, blind, regularizers={"bn": 1.0}).trial(truth, data.labels)


def test_bn_prior_end_to_end_from_the_config():
    from fedleak.config import build_config
    from fedleak.pipeline import run

    common = ["data.image_size=12", "model.width=0.125", "attack.iterations=2", "knowledge.bn_stats=true", "threat=D"]
    prior = run(build_config(overrides=[*common, "attack.regularizers={bn: 0.01}"])).reconstruction
    plain = run(build_config(overrides=common)).reconstruction
    assert prior.iterations == plain.iterations == 2
    assert not torch.equal(prior.images, plain.images)  # the declared statistics reached the objective
    with pytest.raises(FedleakError, match="knowledge.bn_stats=true"):
        run(build_config(overrides=[*common[:-1], "attack.regularizers={bn: 0.01}"]))
