"""The client's local optimizers (SGD with Nesterov, Adam, AdamW), data orders (a private shuffle,
drop_last), and the attacker's simulation of them: each against a plain ``torch.optim`` loop."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fedleak.attacks import AttackerKnowledge
from fedleak.attacks.simulation import Simulation
from fedleak.config import build_config
from fedleak.data.normalization import Normalization
from fedleak.errors import ConfigError
from fedleak.fl import Client, ClientData, ClientTraining, normalize
from fedleak.fl.optimizers import OPTIMIZERS
from fedleak.models import create_model

MEAN, STD = (0.5, 0.4, 0.45), (0.25, 0.2, 0.3)


def _data(b=7, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ClientData(torch.rand(b, 3, size, size, generator=g), torch.randint(0, 3, (b,), generator=g))


def _torch_optimizer(params, kw):
    name = kw.get("optimizer", "sgd")
    if name == "sgd":
        return torch.optim.SGD(params, lr=kw["lr"], momentum=kw.get("momentum", 0.0),
                               nesterov=kw.get("nesterov", False), weight_decay=kw.get("weight_decay", 0.0))
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(params, lr=kw["lr"], betas=(kw.get("beta1", 0.9), kw.get("beta2", 0.999)), eps=kw.get("eps", 1e-8),
               weight_decay=kw.get("weight_decay", 0.0 if name == "adam" else 0.01))


def reference_round(model, data, mode, kw):
    """A Flower user's client, without fedleak: a DataLoader (a DistributedSampler with the public
    seed, or in order), ``epochs`` passes of ``torch.optim``'s optimizer; returns its state dict."""
    local = copy.deepcopy(model).train(mode == "train")
    dataset = TensorDataset(normalize(data.images, MEAN, STD), data.labels)
    seed = kw.get("shuffle_seed")
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=seed is not None, seed=seed or 0)
    loader = DataLoader(dataset, batch_size=kw["local_batch_size"], sampler=sampler, drop_last=kw.get("drop_last", False))
    optimizer = _torch_optimizer(local.parameters(), kw)
    for epoch in range(kw["epochs"]):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(local(x), y).backward()
            optimizer.step()
    return local.state_dict()


CASES = [
    ("lenet", "eval", dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, epochs=2,
                           local_batch_size=3, shuffle_seed=4)),
    ("lenet", "eval", dict(optimizer="adam", lr=0.01, weight_decay=1e-3, epochs=2, local_batch_size=2, shuffle_seed=5)),
    # eps 1e-3: a conv bias right before train-mode batch norm has a gradient of 0 up to rounding, which
    # Adam's m/√v would blow up to ±lr on either side (the client and any simulation alike).
    ("convnet", "train", dict(optimizer="adamw", lr=0.01, weight_decay=0.05, beta1=0.8, beta2=0.99, eps=1e-3,
                              epochs=2, local_batch_size=3)),
    ("lenet", "eval", dict(optimizer="sgd", lr=0.05, momentum=0.5, epochs=3, local_batch_size=3, drop_last=True,
                           shuffle_seed=2)),
]
SIZE = {"lenet": 8, "convnet": 18}


@pytest.mark.parametrize("name, mode, kw", CASES)
def test_client_and_simulation_follow_a_torch_optim_loop(name, mode, kw):
    data = _data(size=SIZE[name])
    model = create_model(name, 3, 3, SIZE[name], width=0.25, seed=2)
    training = ClientTraining("fedavg", mode, **kw)
    payload = Client(model, Normalization(MEAN, STD), training).update(data)
    reference, start = reference_round(model, data, mode, kw), model.state_dict()
    for n, delta in payload.update.items():
        torch.testing.assert_close(delta, start[n] - reference[n], rtol=1e-6, atol=1e-7)
    per_epoch = 7 // 3 if kw.get("drop_last") else -(-7 // kw["local_batch_size"])
    assert payload.hyper.local_steps == kw["epochs"] * per_epoch
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, SIZE[name], SIZE[name]), 3, MEAN, STD)
    simulation = Simulation(payload, knowledge)
    simulated = simulation.update(normalize(data.images, MEAN, STD), data.labels)
    replayed = simulation.replay(normalize(data.images, MEAN, STD), data.labels)
    atol = 1e-7 if kw["optimizer"] == "sgd" else 1e-6  # Adam turns rounding-size gradients into lr-size steps
    for n, observed in payload.update.items():
        torch.testing.assert_close(simulated[n], observed, rtol=1e-5, atol=atol)
        torch.testing.assert_close(replayed[n], observed, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("name, extra", [("sgd", dict(nesterov=True)), ("sgd", dict(dampening=0.3)),
                                         ("adam", {}), ("adamw", {})])
def test_each_functional_step_is_torch_optims_step(name, extra):
    kw = dict(lr=0.03, momentum=0.9, weight_decay=0.02, beta1=0.85, beta2=0.98, eps=1e-7, **extra)
    settings = ClientTraining("fedavg", optimizer=name, **kw)
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(4, 3, generator=g)
    live = theta.clone().requires_grad_(True)
    optimizer = settings.optimizer_of([live])
    params, state = {"w": theta.clone()}, {}
    for t in range(5):
        grad = torch.randn(4, 3, generator=g)
        if t == 1:
            grad[0] = 0.0  # a row no gradient moves at this step
        live.grad = grad.clone()
        optimizer.step()
        params, state = OPTIMIZERS.get(name).step(params, {"w": grad}, state, settings, t)
        torch.testing.assert_close(params["w"], live.detach(), rtol=1e-6, atol=1e-7)


def test_adam_simulation_is_differentiable_where_a_parameter_never_moves():
    """√v at v = 0 (a parameter whose gradient is zero) must not make the attack's gradient NaN."""
    settings = ClientTraining("fedavg", optimizer="adam", lr=0.01)
    x = torch.randn(3, requires_grad=True)
    params, state = {"w": torch.ones(3)}, {}
    for t in range(2):
        grad = {"w": x * torch.tensor([1.0, 1.0, 0.0])}
        params, state = OPTIMIZERS.get("adam").step(params, grad, state, settings, t)
    params["w"].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_a_private_order_is_the_clients_own_and_the_simulation_follows_it_only_when_told():
    data = _data()
    model = create_model("lenet", 3, 3, 8, width=0.25, seed=2)
    training = ClientTraining("fedavg", lr=0.1, momentum=0.9, epochs=2, local_batch_size=2, shuffle=True)
    payload = Client(model, Normalization(MEAN, STD), training, seed=9).update(data)
    assert payload.hyper.order == "private"
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 3, MEAN, STD)
    x = normalize(data.images, MEAN, STD)
    simulation = Simulation(payload, knowledge)
    guessed = simulation.update(x, data.labels)  # the attacker's own guess: each epoch in order
    gap = max(float((guessed[n].detach() - payload.update[n]).abs().max()) for n in payload.update)
    assert gap > 1e-4
    simulation.schedule = [torch.tensor(b) for b in payload.hyper.minibatches(torch.Generator().manual_seed(9))]
    told = simulation.update(x, data.labels)
    for n, observed in payload.update.items():
        torch.testing.assert_close(told[n], observed, rtol=1e-5, atol=1e-7)


def test_the_config_section_and_cli_flags_come_from_client_training():
    cfg = build_config(overrides=["client.protocol=fedavg", "client.optimizer=adamw", "client.beta2=0.99",
                                  "client.drop_last=true", "client.batch_size=4", "client.local_batch_size=3"])
    training = cfg.client.training(cfg.model.mode)
    assert (training.optimizer, training.beta2, training.drop_last) == ("adamw", 0.99, True)
    with pytest.raises(ConfigError, match="did you mean 'adam'"):
        build_config(overrides=["client.optimizer=adm"])
    with pytest.raises(ConfigError, match="Nesterov"):
        build_config(overrides=["client.nesterov=true"])
    with pytest.raises(ConfigError, match="beta1"):
        build_config(overrides=["client.beta1=1.5"])


def test_a_run_that_leaves_new_settings_at_their_defaults_keeps_its_key():
    from fedleak.run_unit import RunSpec

    base = build_config(overrides=["client.protocol=fedavg"]).model_dump(mode="json")
    old = {**base, "client": {k: v for k, v in base["client"].items()
                              if k not in ("optimizer", "nesterov", "dampening", "shuffle", "drop_last", "beta1", "beta2", "eps")}}
    assert RunSpec(base, study="s").key == RunSpec(old, study="s").key
    adam = {**base, "client": {**base["client"], "optimizer": "adam"}}
    assert RunSpec(adam, study="s").key != RunSpec(old, study="s").key
