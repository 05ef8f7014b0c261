"""Realistic local training: the FedAvg client is a plain PyTorch loop (torch.optim.SGD with momentum
and weight decay, epochs over a data loader with a public shuffle seed, batch-norm buffers carried),
and the attacker's unrolled simulation reproduces what that client sends."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.simulation import Simulation
from fedleak.config import build_config
from fedleak.errors import ConfigError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientTraining, ClientData, PublicHyperparameters, normalize
from fedleak.metrics import evaluate, psnr
from fedleak.models import create_model

MEAN, STD = (0.5, 0.4, 0.45), (0.25, 0.2, 0.3)


def _data(b=5, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ClientData(torch.rand(b, 3, size, size, generator=g), torch.tensor([0, 2, 1, 2, 0, 1][:b]))


def reference_round(model, data, mode, lr, momentum, weight_decay, epochs, batch_size, seed):
    """What a Flower user's client does, written without fedleak: a DataLoader over its examples
    (shuffled by a DistributedSampler with the public seed, one replica), ``epochs`` passes of
    ``torch.optim.SGD``; it returns its state dict."""
    local = copy.deepcopy(model).train(mode == "train")
    loader_set = TensorDataset(normalize(data.images, MEAN, STD), data.labels)
    sampler = DistributedSampler(loader_set, num_replicas=1, rank=0, shuffle=seed is not None, seed=seed or 0)
    loader = DataLoader(loader_set, batch_size=batch_size, sampler=sampler)
    optimizer = torch.optim.SGD(local.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(local(x), y).backward()
            optimizer.step()
    return local.state_dict()


SIZE = {"lenet": 8, "convnet": 18}  # convnet: train-mode batch norm needs 2×2 px after its pools
CASES = [
    ("lenet", "eval", dict(momentum=0.9, weight_decay=5e-3, epochs=2, local_batch_size=2, shuffle_seed=7)),
    ("convnet", "train", dict(momentum=0.5, weight_decay=0.0, epochs=3, local_batch_size=2, shuffle_seed=1)),
    ("convnet", "eval", dict(momentum=0.0, weight_decay=1e-2, epochs=1, local_batch_size=3, shuffle_seed=None)),
]


@pytest.mark.parametrize("name, mode, kw", CASES)
def test_client_round_is_bit_identical_to_a_pytorch_sgd_loop(name, mode, kw):
    data = _data(size=SIZE[name])
    model = create_model(name, 3, 3, SIZE[name], width=0.25, seed=2)
    payload = Client(model, Normalization(MEAN, STD), ClientTraining("fedavg", mode, lr=0.05, **kw)).update(data)
    reference = reference_round(model, data, mode, 0.05, kw["momentum"], kw["weight_decay"], kw["epochs"],
                                kw["local_batch_size"], kw["shuffle_seed"])
    start = model.state_dict()
    for n, delta in payload.update.items():
        assert torch.equal(delta, start[n] - reference[n]), n  # every bit
    for n, buffer in payload.buffers.items():  # batch-norm running statistics and counters travel as trained
        assert torch.equal(buffer, reference[n]), n
    if mode == "train":
        assert any("running_mean" in n and not torch.equal(b, start[n]) for n, b in payload.buffers.items())
    steps = kw["epochs"] * -(-5 // kw["local_batch_size"])
    assert payload.hyper.local_steps == steps and payload.hyper.momentum == kw["momentum"]


@pytest.mark.parametrize("name, mode, kw", CASES)
def test_unrolled_simulation_matches_the_client_with_momentum_and_weight_decay(name, mode, kw):
    data = _data(size=SIZE[name])
    model = create_model(name, 3, 3, SIZE[name], width=0.25, seed=2)
    payload = Client(model, Normalization(MEAN, STD), ClientTraining("fedavg", mode, lr=0.05, **kw)).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, SIZE[name], SIZE[name]), 3, MEAN, STD)
    simulated = Simulation(payload, knowledge).update(normalize(data.images, MEAN, STD), data.labels)
    for n, observed in payload.update.items():
        torch.testing.assert_close(simulated[n], observed, rtol=1e-5, atol=1e-7)


def test_ignoring_momentum_does_not_reproduce_the_update():
    """The simulation really uses the public momentum: without it the update differs."""
    data = _data()
    model = create_model("lenet", 3, 3, 8, seed=2)
    payload = Client(model, Normalization(MEAN, STD), ClientTraining("fedavg", lr=0.05, momentum=0.9, local_steps=4, local_batch_size=2)).update(data)
    plain = type(payload)(payload.model_state, payload.update,
                          PublicHyperparameters(**{**vars(payload.hyper), "momentum": 0.0}), payload.buffers)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 3, MEAN, STD)
    x = normalize(data.images, MEAN, STD)
    wrong = Simulation(plain, knowledge).update(x, data.labels)
    gap = max(float((wrong[n].detach() - payload.update[n]).abs().max()) for n in payload.update)
    assert gap > 1e-3


def test_shuffled_schedule_is_pytorchs_distributed_sampler_order():
    h = PublicHyperparameters("fedavg", batch_size=7, lr=0.1, local_steps=9, local_batch_size=3, shuffle_seed=11)
    sampler = DistributedSampler(range(7), num_replicas=1, rank=0, shuffle=True, seed=11)
    expected = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        expected += [order[i:i + 3] for i in range(0, 7, 3)]
    assert h.minibatches() == expected


def test_config_epochs_set_the_local_steps_and_exclude_explicit_steps():
    cfg = build_config(overrides=["client.protocol=fedavg", "client.epochs=2", "client.batch_size=5",
                                  "client.local_batch_size=2", "client.momentum=0.9", "client.weight_decay=1e-4"])
    assert (cfg.client.epochs, cfg.client.momentum, cfg.client.weight_decay) == (2, 0.9, 1e-4)
    with pytest.raises(ConfigError, match="epochs or client.local_steps"):
        build_config(overrides=["client.epochs=2", "client.local_steps=3"])
    with pytest.raises(ConfigError, match="momentum"):
        build_config(overrides=["client.momentum=-0.1"])
    with pytest.raises(ConfigError, match="epochs"):
        Client(create_model("lenet", 3, 3, 8), Normalization(MEAN, STD), ClientTraining("fedavg", lr=0.1, epochs=0))


def test_attack_run_carries_momentum_weight_decay_and_epochs_into_the_payload():
    from fedleak.pipeline import run

    cfg = build_config(overrides=["model.name=lenet", "data.image_size=8", "client.protocol=fedavg",
                                  "client.batch_size=2", "client.local_batch_size=1", "client.epochs=2",
                                  "client.momentum=0.9", "client.weight_decay=1e-3", "client.shuffle_seed=3",
                                  "attack.iterations=2", "data.index=[0, 1]", "metrics.lpips=[]"])
    hyper = run(cfg).payload.hyper
    assert (hyper.local_steps, hyper.momentum, hyper.weight_decay, hyper.shuffle_seed) == (4, 0.9, 1e-3, 3)


def test_ig_reconstructs_from_a_momentum_update():
    data = _data(b=1)
    model = create_model("lenet", 3, 3, 8, seed=0)
    payload = Client(model, Normalization(MEAN, STD), ClientTraining("fedavg", lr=0.1, momentum=0.9, weight_decay=1e-3, local_steps=3)).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 3, MEAN, STD, labels=data.labels)
    rec = build_attack("ig", {"iterations": 150}).run(payload, knowledge)
    mean_colour = data.images.mean((2, 3), keepdim=True).expand_as(data.images)
    assert evaluate(rec, data).psnr > float(psnr(mean_colour, data.images)) + 4
