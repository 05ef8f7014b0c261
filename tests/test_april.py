"""APRIL on fedleak's ViTs: the closed form's identity and exactness, its refusals, the optimisation
variant's objective and descent, and a run from the command line."""

import copy
import json

import pytest
import torch

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.april import POS, PositionMatching
from fedleak.data.normalization import Normalization
from fedleak.errors import FedleakError
from fedleak.fl import Client, ClientData
from fedleak.metrics import evaluate
from fedleak.models import create_model
from tests.test_cli import fedleak

SMALL = {"width": 0.25, "depth": 2}  # dim 48, 16 patches of 4×4 at 16 px


def _case(c=3, side=16, b=1, seed=0, labels_known=False, model="vit", **options):
    mean, std = (0.5,) * c, (0.25,) * c
    net = create_model(model, 10, c, side, seed=seed, **options)
    g = torch.Generator().manual_seed(seed)
    data = ClientData(torch.rand(b, c, side, side, generator=g), torch.randperm(10, generator=g)[:b])
    payload = Client(net, Normalization(mean, std)).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(net), (c, side, side), 10, mean, std,
                                  labels=data.labels if labels_known else None)
    return data, payload, knowledge, net


def _gradients(net, x, y):
    loss = torch.nn.functional.cross_entropy(net(x), y)
    names = [n for n, _ in net.named_parameters()]
    return dict(zip(names, torch.autograd.grad(loss, list(net.parameters()))))


@pytest.mark.parametrize("first_block, holds", [("plain", True), ("pre-norm", False)])
def test_the_papers_identity_holds_exactly_when_z_feeds_the_qkv_layer_alone(first_block, holds):
    # (∂L/∂E_pos)ᵀ z = W_qkvᵀ ∂L/∂W_qkv, checked on the true z: only without the first LayerNorm and residual.
    net = create_model("vit", 10, 3, 16, seed=1, first_block=first_block, **SMALL).double()
    x = torch.randn(1, 3, 16, 16, dtype=torch.double)
    grads = _gradients(net, x, torch.tensor([4]))
    z = net.embed(x)[0].detach()
    left = grads[POS][0].T @ z
    right = net.blocks[0].attn.qkv.weight.detach().T @ grads["blocks.0.attn.qkv.weight"]
    error = float((left - right).abs().max() / right.abs().max())
    assert (error < 1e-10) if holds else (error > 1e-2), error


@pytest.mark.parametrize("c, side, options", [(1, 28, {"patch": 7}), (3, 16, SMALL)])
def test_closed_form_recovers_one_image_exactly_through_the_patch_embedding(c, side, options):
    data, payload, knowledge, _ = _case(c, side, seed=2, **options)
    rec = build_attack("april").run(payload, knowledge)
    result = evaluate(rec, data)
    assert float((rec.images - data.images).abs().max()) < 1e-4
    assert result.psnr > 60 and result.label_accuracy == 1.0  # the label from the head's bias gradient
    assert any("patch embedding" in note for note in rec.notes)


def test_closed_form_via_the_first_qkv_layer_on_the_papers_architecture():
    data, payload, knowledge, _ = _case(1, 16, seed=3, first_block="plain", **SMALL)
    rec = build_attack("april", {"via": "embedding"}).run(payload, knowledge)
    assert float((rec.images - data.images).abs().max()) < 1e-2
    assert evaluate(rec, data).psnr > 60 and any("qkv" in note for note in rec.notes)
    auto = build_attack("april").run(payload, knowledge)  # auto picks the embedding route here
    assert any("qkv" in note for note in auto.notes)


@pytest.mark.parametrize("settings, case, message", [
    ({}, {"b": 2}, "recovers one image, the update stands for 2"),
    ({"via": "embedding"}, {}, "first_block=plain"),
    ({}, {"model": "lenet", "side": 8, "c": 3}, "needs a vision transformer"),
    ({}, {"width": 0.125, "depth": 1, "patch": 2}, "cannot solve for the patches"),  # 64 patches, dim 24
])
def test_closed_form_refuses_with_one_line(settings, case, message):
    options = {**SMALL, **case} if case.get("model", "vit") == "vit" else case
    _, payload, knowledge, _ = _case(**options)
    with pytest.raises(FedleakError, match=message) as info:
        build_attack("april", settings).run(payload, knowledge)
    assert "\n" not in str(info.value)


def test_position_term_is_alpha_times_the_cosine_distance_of_the_position_gradients():
    data, payload, knowledge, net = _case(3, 8, b=2, seed=4, labels_known=True, width=0.125, patch=4, depth=1)
    norm = Normalization((0.5,) * 3, (0.25,) * 3)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    plain = PositionMatching([payload], [knowledge], 0.0).matching_loss(x, data.labels)
    with_term = PositionMatching([payload], [knowledge], 2.5).matching_loss(x, data.labels)
    simulated = _gradients(copy.deepcopy(net), x, data.labels)[POS].flatten()
    observed = payload.update[POS].flatten()
    expected = 1 - torch.dot(simulated, observed) / (simulated.norm() * observed.norm())
    assert float((with_term - plain).detach()) == pytest.approx(2.5 * float(expected), rel=1e-4)
    truth = PositionMatching([payload], [knowledge], 2.5).matching_loss(norm.to_input(data.images), data.labels)
    assert float(truth.detach()) < 1e-5 < float(with_term.detach())


def test_optimization_variant_lowers_its_loss_on_a_batch_of_two():
    _, payload, knowledge, _ = _case(3, 8, b=2, seed=5, labels_known=True, width=0.125, patch=4, depth=1)
    attack = build_attack("april", {"variant": "optimization", "iterations": 6, "log_every": 1, "tv": 0.0})
    rec = attack.run(payload, knowledge)
    losses = [row["loss"] for row in rec.trace]
    assert rec.images.shape == (2, 3, 8, 8) and rec.iterations == 6
    assert losses[-1] < losses[0]


def test_april_from_the_command_line(tmp_path, monkeypatch, capsys):
    tiny = ["attack", "--attack", "april", "--model", "vit", "--set", "data.image_size=8",
            "--set", "model.options.patch=2", "--set", "model.width=0.25", "-q"]
    code, _, err = fedleak(monkeypatch, capsys, *tiny, "--batch-size", "1", "--out", str(tmp_path / "one"))
    assert code == 0, err
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["psnr"] > 60
    code, _, err = fedleak(monkeypatch, capsys, *tiny, "--batch-size", "2", "--out", str(tmp_path / "two"))
    assert code == 2 and "attack.variant=optimization" in err and len(err.strip().splitlines()) == 1
