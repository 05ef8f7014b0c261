"""In-process FedAvg for utility: partition, the server's weighted step, and that training learns."""

import copy

import pytest
import torch
from torch import nn

from fedleak.errors import ConfigError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientTraining, ClientData
from fedleak.fl.federated import FederatedSettings, federated_train, server_step, shards
from fedleak.training import accuracy


def test_shards_partition_evenly_and_reproducibly():
    parts = shards(23, 5, seed=1)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(23)) and {len(p) for p in parts} == {4, 5}
    assert parts == shards(23, 5, seed=1) and parts != shards(23, 5, seed=2)
    with pytest.raises(ConfigError, match="3 training images cannot be shared among 5 clients"):
        shards(3, 5, seed=0)


def colour_data(n, seed):
    """Two classes: reddish or bluish 4×4 images — linearly separable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 3, 4, 4, generator=g) * 0.3
    images[labels == 0, 0] += 0.7
    images[labels == 1, 2] += 0.7
    return images, labels


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 2))


def test_server_step_is_the_weighted_mean_of_client_updates():
    net = model()
    images, labels = colour_data(6, 0)
    payloads = [Client(net, Normalization((0.5,) * 3, (0.5,) * 3), ClientTraining("fedavg", "train", lr=0.1, local_steps=2))
                .update(ClientData(images[p], labels[p], ())) for p in ([0, 1, 2, 3], [4, 5])]
    before = copy.deepcopy(net)
    server_step(net, payloads, [4.0, 2.0], server_lr=1.0)
    for name, p in net.named_parameters():
        expected = dict(before.named_parameters())[name] - (4 * payloads[0].update[name] + 2 * payloads[1].update[name]) / 6
        assert torch.allclose(p, expected)


def test_fedavg_learns_a_separable_task_and_is_reproducible():
    images, labels = colour_data(40, 1)
    test_images, test_labels = colour_data(20, 2)
    settings = FederatedSettings(clients=4, rounds=3, lr=0.5, batch_size=5)
    net = model()
    assert accuracy(net, test_images, test_labels, (0.5,) * 3, (0.5,) * 3) < 1.0  # there is something to learn
    history = federated_train(net, images, labels, test_images, test_labels, (0.5,) * 3, (0.5,) * 3, settings)
    assert len(history.test_accuracy) == 3 and history.final_accuracy == 1.0
    again = model()
    federated_train(again, images, labels, test_images, test_labels, (0.5,) * 3, (0.5,) * 3, settings)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters()))


def test_the_defense_is_applied_to_every_update():
    images, labels = colour_data(8, 3)
    net = model()
    start = copy.deepcopy(net)
    settings = FederatedSettings(clients=2, rounds=1, lr=0.1, batch_size=4, defense="sign")
    federated_train(net, images, labels, images, labels, (0.5,) * 3, (0.5,) * 3, settings)
    steps = set()
    for p, q in zip(net.parameters(), start.parameters()):  # mean of two ±1 updates: steps of 0 or ±1
        steps |= set((q - p).detach().round(decimals=4).unique().tolist())
    assert steps <= {-1.0, 0.0, 1.0} and steps & {-1.0, 1.0}  # signs, and the model moved


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="rounds, local epochs and batch size ≥ 1"):
        FederatedSettings(rounds=0)
    with pytest.raises(ConfigError, match="positive client and server learning rates"):
        FederatedSettings(lr=0)
