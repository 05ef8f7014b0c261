"""FedAvg: the client's real local training and the attacker's unrolled simulation agree."""

import copy

import pytest
import torch

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.simulation import Simulation
from fedleak.errors import ConfigError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientTraining, ClientData, PublicHyperparameters, normalize
from fedleak.metrics import evaluate, psnr
from fedleak.models import create_model

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)


def _data(b=4, size=12):
    g = torch.Generator().manual_seed(0)
    return ClientData(torch.rand(b, 3, size, size, generator=g), torch.tensor([0, 2, 1, 2][:b]))


@pytest.mark.parametrize(
    "model_name, mode, kwargs",
    [
        ("lenet", "eval", dict(local_steps=5, local_batch_size=2, shuffle_seed=3)),
        ("convnet", "eval", dict(local_steps=3, local_batch_size=4, update_scale="delta/lr")),
        ("resnet18", "train", dict(local_steps=4, local_batch_size=1, shuffle_seed=0)),
    ],
)
def test_unrolled_simulation_reproduces_the_client_update(model_name, mode, kwargs):
    data = _data()
    model = create_model(model_name, 3, 3, 12, width=0.25, seed=1)
    payload = Client(model, Normalization(MEAN, STD), ClientTraining("fedavg", mode, lr=0.05, **kwargs)).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 12, 12), 3, MEAN, STD)
    simulated = Simulation(payload, knowledge).update(normalize(data.images, MEAN, STD), data.labels)
    assert list(simulated) == list(payload.update)
    for name, observed in payload.update.items():
        torch.testing.assert_close(simulated[name], observed, rtol=1e-4, atol=1e-6)
    assert any(v.abs().max() > 0 for v in payload.update.values())


def test_minibatch_schedule():
    h = PublicHyperparameters("fedavg", batch_size=5, lr=0.1, local_steps=4, local_batch_size=2)
    assert h.minibatches() == [[0, 1], [2, 3], [4], [0, 1]]
    s = PublicHyperparameters("fedavg", batch_size=4, lr=0.1, local_steps=4, local_batch_size=2, shuffle_seed=1)
    steps = s.minibatches()
    assert sorted(steps[0] + steps[1]) == [0, 1, 2, 3] and sorted(steps[2] + steps[3]) == [0, 1, 2, 3]
    assert steps == s.minibatches()


def test_fedavg_needs_a_learning_rate():
    with pytest.raises(ConfigError, match="learning rate"):
        Client(create_model("lenet", 3, 3, 8), Normalization(MEAN, STD), ClientTraining("fedavg", lr=None))


def test_ig_attacks_a_fedavg_update():
    data = _data(b=1, size=8)
    model = create_model("lenet", 3, 3, 8, seed=0)
    payload = Client(model, Normalization(MEAN, STD), ClientTraining("fedavg", lr=0.1, local_steps=3)).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 3, MEAN, STD, labels=data.labels)
    rec = build_attack("ig", {"iterations": 150}).run(payload, knowledge)
    mean_colour = data.images.mean((2, 3), keepdim=True).expand_as(data.images)  # what "nothing leaked" scores
    assert evaluate(rec, data).psnr > max(15, float(psnr(mean_colour, data.images)) + 4)
