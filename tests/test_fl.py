import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fedleak.attacks import AttackerKnowledge
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientTraining, ClientData, Payload, normalize
from fedleak.models import create_model

from tests.test_boundary import leaks


def _batch(b=2, size=16):
    g = torch.Generator().manual_seed(0)
    return ClientData(torch.rand(b, 3, size, size, generator=g), torch.tensor([1, 3][:b]))


def test_fedsgd_update_is_the_mean_cross_entropy_gradient():
    model = create_model("lenet", 5, 3, 16, seed=0)
    data = _batch()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    payload = Client(model, Normalization(mean, std)).update(data)
    loss = F.cross_entropy(model(normalize(data.images, mean, std)), data.labels)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    assert list(payload.update) == [n for n, _ in model.named_parameters()]
    for got, want in zip(payload.update.values(), expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("protocol, extra", [("fedsgd", {}), ("fedavg", {"lr": 0.1, "local_steps": 2})])
def test_payload_holds_no_client_data(protocol, extra):
    data = _batch()
    model = create_model("lenet", 5, 3, 16, seed=0)
    payload = Client(model, Normalization((0.5,) * 3, (0.5,) * 3), ClientTraining(protocol, **extra)).update(data)
    assert {f.name for f in dataclasses.fields(Payload)} == {"model_state", "update", "hyper", "buffers"}
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 16, 16), 5, (0.5,) * 3, (0.5,) * 3)
    assert leaks(payload, knowledge, data, labels_declared=False) == []  # no shared storage, no copied values
    assert payload.hyper.batch_size == 2 and payload.hyper.protocol == protocol


def test_train_mode_client_leaves_global_model_untouched():
    model = create_model("convnet", 5, 3, 16, width=0.125, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    payload = Client(model, Normalization((0.5,) * 3, (0.5,) * 3), ClientTraining(model_mode="train")).update(_batch())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert torch.equal(payload.model_state[k], before[k])
    assert payload.hyper.model_mode == "train"
    # Train mode was in effect (batch statistics, not running ones), so "untouched" is not trivial.
    evaluated = Client(model, Normalization((0.5,) * 3, (0.5,) * 3), ClientTraining(model_mode="eval")).update(_batch())
    assert any(not torch.allclose(t, evaluated.update[n]) for n, t in payload.update.items())
