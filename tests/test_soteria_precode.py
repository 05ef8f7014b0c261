"""Soteria (Sun et al. 2021) and PRECODE (Scheliga et al. 2022): their formulas against independent
references, the client's training with them, and what the attacks recover through them."""

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.objectives import auto_matching
from fedleak.cli import main
from fedleak.data.normalization import Normalization
from fedleak.defenses import parse_defense
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl import Client, ClientData, ClientTraining
from fedleak.metrics import evaluate
from fedleak.models import create_model
from fedleak.models.precode import PrecodeLinear, VariationalBottleneck

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
NORM = Normalization(MEAN, STD)


def _data(n=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ClientData(torch.rand(n, 3, size, size, generator=g), torch.arange(n) % 5)


def _smooth_case(model, label, defense=None, options=None, size=8):
    """One smooth tiny image (as tests/test_dlg_analytic.py), the client's payload and the knowledge."""
    g = torch.Generator().manual_seed(label)
    images = F.interpolate(torch.rand(1, 3, 3, 3, generator=g), size=(size, size), mode="bilinear", align_corners=True)
    data = ClientData(images, torch.tensor([label]))
    net = create_model(model, 5, 3, size, seed=label, **(options or {}))
    knowledge = AttackerKnowledge(copy.deepcopy(net), (3, size, size), 5, MEAN, STD)
    return data, Client(net, NORM, defense=defense, seed=11).update(data), knowledge


# ------------------------------------------------------------------------------------------ Soteria


def test_soteria_zeroes_exactly_the_release_score_columns_and_nothing_else():
    model = create_model("lenet", 5, 3, 8, seed=0)
    data = _data(3)
    plain = Client(model, NORM).update(data)
    defended = Client(model, NORM, defense="soteria:rate=80").update(data)
    # Reference: per-example Jacobians of the representation (the classifier's input) w.r.t. the input.
    x = NORM.to_input(data.images)
    features = lambda xb: model.features(xb[None]).flatten(1)[0]  # noqa: E731
    q = torch.zeros(48, dtype=torch.float64)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(features, x[b]).flatten(1)  # 48 × (3·8·8)
        r = features(x[b]).detach()
        q += (jac.norm(dim=1) / r.abs()).double()  # sigmoid features: r > 0
    pruned = torch.from_numpy(q.numpy() < np.percentile(q.numpy(), 80))
    assert int(pruned.sum()) == math.ceil(47 * 0.8)  # numpy's linear method on 48 distinct scores
    # Pruned: the largest ‖r_i‖/‖∂r_i/∂x‖ of a single image = the smallest ‖∂r_i/∂x‖/‖r_i‖ summed.
    w, w0 = defended.update["classifier.weight"], plain.update["classifier.weight"]
    assert (w[:, pruned] == 0).all() and (w0[:, pruned] != 0).all()
    assert torch.equal(w[:, ~pruned], w0[:, ~pruned])
    for name in plain.update.keys() - {"classifier.weight"}:
        assert torch.equal(defended.update[name], plain.update[name]), name
    assert defended.hyper.defense == "soteria:rate=80.0"


def test_soteria_on_an_input_layer_prunes_the_largest_pixels():
    # With r = x (the first layer of an MLP) ∂r_i/∂x = e_i, so q_i = Σ_b 1/|x_bi|: the pixels of
    # largest magnitude are pruned — closed form, no autograd in the reference.
    model = create_model("mlp", 5, 3, 4, seed=1, hidden=16, depth=1)
    data = _data(2, size=4, seed=3)
    plain = Client(model, NORM).update(data)
    defended = Client(model, NORM, defense="soteria:rate=50,layer=1").update(data)
    x = NORM.to_input(data.images).flatten(1).double()
    q = (1 / x.abs()).sum(0).numpy()
    pruned = torch.from_numpy(q < np.percentile(q, 50))
    assert int(pruned.sum()) == 24  # of 48
    assert (defended.update["1.weight"][:, pruned] == 0).all()
    assert torch.equal(defended.update["1.weight"][:, ~pruned], plain.update["1.weight"][:, ~pruned])
    assert torch.equal(defended.update["3.weight"], plain.update["3.weight"])  # the default layer is untouched


def test_soteria_spec_matching_and_bad_settings():
    pipeline = parse_defense("soteria")
    assert pipeline.spec == "soteria:rate=80.0" and pipeline.matching == "masked"
    assert auto_matching("soteria:rate=50") == "masked"
    assert parse_defense("soteria:rate=30,layer=fc").spec == "soteria:rate=30.0,layer=fc"
    for spec in ("soteria:rate=100", "soteria:rate=-1", "soteria:pct=3", "soteria+dpsgd"):
        with pytest.raises(ConfigError):
            parse_defense(spec)
    model, data = create_model("lenet", 5, 3, 8, seed=0), _data(2)
    for layer, message in (("features.0", "not an nn.Linear"), ("nope", "not an nn.Linear")):
        with pytest.raises(ConfigError, match=message) as exc:
            Client(model, NORM, defense=f"soteria:layer={layer}").update(data)
        assert "\n" not in str(exc.value)
    # rate 0 prunes nothing: the plain update, through the same code path.
    plain = Client(model, NORM).update(data)
    kept = Client(model, NORM, defense="soteria:rate=0").update(data)
    assert all(torch.equal(kept.update[n], plain.update[n]) for n in plain.update)


def test_soteria_prunes_each_fedavg_step():
    # One local SGD step with update θ₀ − θ₁ over lr is the FedSGD update, pruned the same way.
    model, data = create_model("lenet", 5, 3, 8, seed=2), _data(2, seed=5)
    sgd = Client(model, NORM, defense="soteria:rate=60").update(data)
    avg = Client(model, NORM, ClientTraining("fedavg", lr=0.5, update_scale="delta/lr"),
                 defense="soteria:rate=60").update(data)
    for name in sgd.update:
        assert torch.allclose(avg.update[name], sgd.update[name], atol=1e-5), name
    assert (avg.update["classifier.weight"] == 0).sum() == (sgd.update["classifier.weight"] == 0).sum() > 0


DLG_ITERATIONS = 3  # L-BFGS steps: enough for > 25 dB on the undefended smooth 8×8 image


@pytest.fixture(scope="module")
def clean_dlg():
    """iDLG's PSNR on the undefended update (shared by the Soteria and PRECODE comparisons)."""
    data, payload, knowledge = _smooth_case("lenet", 3)
    return evaluate(build_attack("idlg", {"iterations": DLG_ITERATIONS}).run(payload, knowledge), data).psnr


def test_soteria_degrades_dlg(clean_dlg):
    # DLG, the attack Soteria's paper defends against, compares the whole update (zeros included).
    data, payload, knowledge = _smooth_case("lenet", 3, defense="soteria:rate=80")
    pruned = evaluate(build_attack("idlg", {"iterations": DLG_ITERATIONS}).run(payload, knowledge), data)
    assert clean_dlg > 25 and pruned.psnr < clean_dlg - 10, (clean_dlg, pruned.psnr)


def test_soteria_on_the_first_layer_zeroes_the_analytic_reconstruction_there():
    data, payload, knowledge = _smooth_case("mlp", 2)
    exact = evaluate(build_attack("analytic").run(payload, knowledge), data)
    data, payload, knowledge = _smooth_case("mlp", 2, defense="soteria:rate=50,layer=1")
    rec = build_attack("analytic").run(payload, knowledge)
    assert exact.psnr > 60 and evaluate(rec, data).psnr < exact.psnr - 30
    # One image and r = x: the pruned inputs are the half of largest |x| (normalised), and the
    # attack divides zeroed columns, so it returns 0 there (the channel mean in pixels).
    x, got = NORM.to_input(data.images).flatten(), NORM.to_input(rec.images).flatten()
    pruned = torch.from_numpy((1 / x.abs()).numpy() < np.percentile((1 / x.abs()).numpy(), 50))
    assert int(pruned.sum()) == 96
    assert torch.allclose(got[pruned], torch.zeros(96), atol=1e-4)
    assert torch.allclose(got[~pruned], x[~pruned], atol=1e-4)


# ------------------------------------------------------------------------------------------ PRECODE


def test_precode_wraps_the_classifier_and_keeps_its_names():
    plain = create_model("lenet", 5, 3, 8, seed=0)
    wrapped = create_model("lenet", 5, 3, 8, seed=0, precode={"k": 16, "beta": 0.01})
    assert isinstance(wrapped.classifier, PrecodeLinear)
    bottleneck = wrapped.classifier.bottleneck
    assert (bottleneck.encoder.in_features, bottleneck.encoder.out_features) == (48, 32)
    assert (bottleneck.decoder.in_features, bottleneck.decoder.out_features) == (16, 48)
    names = [n for n, _ in wrapped.named_parameters()]
    assert names == [n for n, _ in plain.named_parameters()] + [
        "classifier.bottleneck.encoder.weight", "classifier.bottleneck.encoder.bias",
        "classifier.bottleneck.decoder.weight", "classifier.bottleneck.decoder.bias"]
    for name, tensor in plain.state_dict().items():  # the family's own initialisation is unchanged
        assert torch.equal(wrapped.state_dict()[name], tensor)
    default = create_model("mlp", 5, 3, 4, precode=True).get_submodule("5").bottleneck
    assert (default.k, default.beta) == (256, 1e-3)  # the paper's K and β
    for bad in ({"k": 0}, {"width": 3}, "yes", {"beta": float("nan")}):
        with pytest.raises(ConfigError, match="precode"):
            create_model("mlp", 5, 3, 4, precode=bad)


def _precode_mlp(beta):
    model = create_model("mlp", 5, 3, 4, seed=4, hidden=32, depth=1, precode={"k": 8, "beta": 0.5})
    model.get_submodule("3").bottleneck.beta = beta
    return model


def test_precode_client_loss_adds_exactly_the_kl_gradient():
    data = _data(4, size=4, seed=6)
    with_kl = Client(_precode_mlp(0.5), NORM, seed=9).update(data).update
    without = Client(_precode_mlp(0.0), NORM, seed=9).update(data).update  # same weights, same ε
    # Reference: ∇ of β·KL(N(μ, σ²) ‖ N(0, I)) in bits, written from the closed form, not the module's.
    model = _precode_mlp(0.5)
    params = dict(model.named_parameters())
    h = model[:3](NORM.to_input(data.images))
    stats = model.get_submodule("3").bottleneck.encoder(h)
    mu, sigma = stats[:, :8], F.softplus(stats[:, 8:])
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 1 - torch.log(sigma.pow(2))).sum(1).mean() / math.log(2)
    grads = dict(zip(params, torch.autograd.grad(0.5 * kl, list(params.values()), allow_unused=True)))
    for name in with_kl:
        difference = with_kl[name] - without[name]
        if grads[name] is None:  # the classifier and the decoder: KL does not reach them
            assert torch.equal(difference, torch.zeros_like(difference)), name
        else:
            assert grads[name].abs().max() > 0
            assert torch.allclose(difference, grads[name], atol=1e-6), name


def test_precode_noise_is_the_clients_private_randomness_and_the_model_trains():
    data = _data(8, size=4, seed=7)
    model = _precode_mlp(1e-3)
    a, b, c = (Client(model, NORM, seed=s).update(data).update for s in (1, 1, 2))
    assert all(torch.equal(a[n], b[n]) for n in a) and not torch.equal(a["3.weight"], c["3.weight"])
    x = NORM.to_input(data.images)

    def loss():
        torch.manual_seed(0)  # the same ε draws before and after training
        with torch.no_grad():
            return float(F.cross_entropy(model(x), data.labels))

    before = loss()
    for step in range(30):
        update = Client(model, NORM, seed=step).update(data).update
        with torch.no_grad():
            for name, p in model.named_parameters():
                p -= 0.1 * update[name]
    assert loss() < 0.5 * before


def test_precode_defeats_dlg_but_not_the_first_layer_analytic_attack(clean_dlg):
    # The attacker knows the architecture, bottleneck included, but not the client's ε.
    data, payload, knowledge = _smooth_case("lenet", 3, options={"precode": {"k": 32}})
    hidden = evaluate(build_attack("idlg", {"iterations": DLG_ITERATIONS}).run(payload, knowledge), data)
    assert clean_dlg > 25 and hidden.psnr < clean_dlg - 10, (clean_dlg, hidden.psnr)
    # ∂L/∂W₁ = δ xᵀ and ∂L/∂b₁ = δ hold whatever follows the first layer, the bottleneck included:
    # the analytic attack stays exact (PRECODE's paper evaluates optimisation attacks only).
    data, payload, knowledge = _smooth_case("mlp", 2, options={"precode": {"k": 32}})
    assert evaluate(build_attack("analytic").run(payload, knowledge), data).psnr > 60


def test_precode_refuses_vmap_in_one_line():
    # torch.func.vmap refuses random draws by default: batched restarts and Opacus's per-sample grads.
    data, payload, knowledge = _smooth_case("lenet", 1, options={"precode": {"k": 8}})
    with pytest.raises(FedleakError, match="one restart") as exc:
        build_attack("ig", {"iterations": 1, "restarts": 2}).run(payload, knowledge)
    assert "\n" not in str(exc.value)
    with pytest.raises(FedleakError, match="without dpsgd"):
        Client(_precode_mlp(1e-3), NORM, defense="dpsgd").update(_data(2, size=4))
    assert isinstance(knowledge.architecture.classifier.bottleneck, VariationalBottleneck)


# ------------------------------------------------------------------------------------------ CLI


def _fedleak(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fedleak", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    return code, *capsys.readouterr()


TINY = ["--set", "data.image_size=8", "--model", "lenet", "--iterations", "3", "-q", "--batch-size", "1"]


def test_cli_runs_soteria_and_precode_end_to_end(tmp_path, monkeypatch, capsys):
    out = tmp_path / "soteria"
    code, _, err = _fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out),
                            "--defense", "soteria:rate=60", "--set", "attack.matching=auto")
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["defense"] == "soteria:rate=60.0"
    out = tmp_path / "precode"
    code, _, err = _fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out),
                            "--set", "model.options.precode.k=16")
    assert code == 0, err
    assert "precode" in (out / "config.yaml").read_text()
    code, _, err = _fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(tmp_path / "bad"),
                            "--defense", "soteria:rate=100")
    assert code == 2 and "soteria" in err and len(err.strip().splitlines()) == 1
