"""SPEAR: exact batches through a fully connected ReLU layer, its refusals, the CLI and a hidden layer."""

import copy
import json
import sys

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.feature_inversion import layer_input
from fedleak.attacks.spear_factor import certify, factor, recover, solve
from fedleak.cli import main
from fedleak.data.normalization import Normalization
from fedleak.errors import FedleakError
from fedleak.fl import Client, ClientData
from fedleak.models import create_model

MEAN, STD = (0.4,), (0.3,)


def _case(net: nn.Module, b: int = 4, labels=(1, 3, 0, 3), seed: int = 0, defense: str | None = None):
    images = torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    data = ClientData(images, torch.tensor(labels[:b]))
    knowledge = AttackerKnowledge(copy.deepcopy(net), (1, 8, 8), 5, MEAN, STD)
    return data, Client(net, Normalization(MEAN, STD), defense=defense).update(data), knowledge


def _matched_error(found: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Largest absolute error per true image after the best one-to-one matching."""
    cost = torch.cdist(found.flatten(1).double(), truth.flatten(1).double())
    rows, cols = linear_sum_assignment(cost.numpy())
    return (found.flatten(1)[rows] - truth.flatten(1)[cols]).abs().amax(dim=1)


def test_spear_recovers_a_batch_of_four_exactly():
    data, payload, knowledge = _case(create_model("mlp", 5, 1, 8, seed=0))
    rec = build_attack("spear").run(payload, knowledge, seed=1)
    assert rec.images.shape == data.images.shape
    assert _matched_error(rec.images, data.images).max() < 1e-4
    assert sorted(rec.labels.tolist()) == sorted(data.labels.tolist())
    assert "4 of 4 directions certified" in rec.notes[0]


def test_the_certificate_rejects_a_wrong_direction():
    # Solve with Q = I (a wrong factorisation): nothing may be certified.
    net = create_model("mlp", 5, 1, 8, seed=2)
    data, payload, knowledge = _case(net)
    gw, gb = payload.update["1.weight"].double(), payload.update["1.bias"].double()
    w, b = net[1].weight.detach().double(), net[1].bias.detach().double()
    f = factor(gw, 4)
    dz, x = solve(f, gb, torch.eye(4, dtype=torch.float64))
    assert not certify(dz, x, w, b, 1e-4).any()
    good = recover(gw, gb, w, b, 4, 100_000, 4096, 0.3, 1e-4, torch.Generator().manual_seed(0))
    assert good.certified.all()
    truth = Normalization(MEAN, STD).to_input(data.images).flatten(1).double()
    assert _matched_error(good.inputs, truth).max() < 1e-5


def test_spear_refuses_layers_it_cannot_read():
    no_bias = nn.Sequential(nn.Flatten(), nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 5))
    _, payload, knowledge = _case(no_bias)
    with pytest.raises(FedleakError, match="has no bias"):
        build_attack("spear", {"layer": 0}).run(payload, knowledge)
    sigmoid = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 5))
    _, payload, knowledge = _case(sigmoid)
    with pytest.raises(FedleakError, match="followed by Sigmoid, not a ReLU"):
        build_attack("spear", {"layer": "1.weight"}).run(payload, knowledge)
    narrow = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.ReLU(), nn.Linear(3, 5))
    _, payload, knowledge = _case(narrow)
    with pytest.raises(FedleakError, match="needs a layer at least that wide"):
        build_attack("spear").run(payload, knowledge)


def test_duplicate_images_are_noted_and_noise_does_not_crash():
    net = create_model("mlp", 5, 1, 8, seed=3)
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    data = ClientData(torch.cat([images, images[:1]]), torch.tensor([0, 1, 2, 0]))
    knowledge = AttackerKnowledge(copy.deepcopy(net), (1, 8, 8), 5, MEAN, STD)
    payload = Client(net, Normalization(MEAN, STD)).update(data)
    rec = build_attack("spear", {"samples": 4096, "chunk": 4096}).run(payload, knowledge)
    assert any("numerical rank is 3, not the batch's 4" in n for n in rec.notes)
    _, payload, knowledge = _case(net, defense="noise:snr_db=20")
    rec = build_attack("spear", {"samples": 4096, "chunk": 4096}).run(payload, knowledge)
    assert rec.images.shape == (4, 1, 8, 8) and torch.isfinite(rec.images).all()


def test_spear_on_a_hidden_layer_features_then_images():
    net = create_model("mlp", 5, 1, 8, seed=4, hidden=96)
    data, payload, knowledge = _case(net)
    layer = net[3]
    truth = layer_input(net, layer, Normalization(MEAN, STD).to_input(data.images)).detach().double()
    gw, gb = payload.update["3.weight"].double(), payload.update["3.bias"].double()
    found = recover(gw, gb, layer.weight.detach().double(), layer.bias.detach().double(), 4, 100_000, 4096,
                    0.3, 1e-4, torch.Generator().manual_seed(0))
    assert found.certified.all()
    assert _matched_error(found.inputs, truth).max() < 1e-4 * truth.abs().max()
    rec = build_attack("spear", {"layer": "3", "iterations": 25}).run(payload, knowledge, seed=2)
    assert rec.images.shape == data.images.shape
    assert "hidden features" in rec.notes[0] and "4 of 4" in rec.notes[0]
    inversion = rec.trace[1]
    assert inversion["feature_loss"] < 0.5 * inversion["feature_loss_start"]
    assert sorted(rec.labels.tolist()) == sorted(data.labels.tolist())


def test_spear_from_the_command_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["fedleak", "attack", "--attack", "spear", "--model", "mlp", "--image-size", "8",
                                      "--batch-size", "4", "--out", str(out), "-q"])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["images"]) == 4 and metrics["psnr"] > 60
