"""Trap weights (Boenisch et al., EuroS&P 2023): the malicious server's first layer, its recovery, and
``fedleak inspect-model`` flagging it — on 12-px grey faces shipped with scikit-image."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.config import build_config
from fedleak.data import load_dataset
from fedleak.data.normalization import Normalization
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl import Client, ClientData
from fedleak.fl.client import normalize
from fedleak.fl.server import parse_modification, server_flags
from fedleak.fl.trap import first_linear
from fedleak.inspect import FLAGGED, inspect_model, inspect_state, sent_model
from fedleak.modalities import build_target
from fedleak.models import create_model
from fedleak.pipeline import run
from fedleak.serving import apply_server
from tests.test_cli import fedleak as cli

FACES = {"data.name": "samples", "data.options": {"subset": "faces"}, "data.image_size": 12,
         "model.name": "mlp", "model.width": 0.5, "threat": "G"}


def trap_run(batch: int, spec: str = "trap", **flags):
    return run(build_config(flags={**FACES, "client.batch_size": batch, "client.seed": 3, **server_flags(spec),
                                   **flags}))


def isolated_images(result) -> set[int]:
    """From the truth: the images some first-layer row is active for alone (per-example gradients of
    the row's bias: nonzero for exactly one image of the batch)."""
    model = result.target.model.eval()
    name, layer = first_linear(model, result.dataset.image_shape)
    x = normalize(result.truth.images, result.target.mean, result.target.std)
    active = []
    for j in range(len(x)):
        loss = F.cross_entropy(model(x[j:j + 1]), result.truth.labels[j:j + 1])
        (g,) = torch.autograd.grad(loss, layer.bias)
        active.append(g != 0)
    active = torch.stack(active)  # images × rows
    alone = active.sum(0) == 1
    return {int(j) for j in torch.nonzero(active[:, alone].any(1)).flatten()}


def exactly_recovered(result) -> int:
    """Reconstructions matched one to one to the truth (Hungarian, on mean squared error) that equal
    their original to float rounding (largest pixel error below 1e-4)."""
    rec, truth = result.reconstruction.images.flatten(1), result.truth.images.flatten(1)
    cost = torch.cdist(rec.double(), truth.double()).numpy()
    rows, cols = linear_sum_assignment(cost)
    return sum(float((rec[r] - truth[c]).abs().max()) < 1e-4 for r, c in zip(rows, cols))


@pytest.mark.parametrize("batch", [4, 8])
def test_trap_recovers_exactly_every_image_a_row_isolates(batch):
    result = trap_run(batch)
    assert result.config.attack.name == "trap"  # the modification's attack by default
    expected = isolated_images(result)
    assert len(expected) >= 2  # the trap isolates images (a honest layer fires for about half)
    assert exactly_recovered(result) == len(expected)
    trace = result.reconstruction.trace[0]
    assert trace["verified"] == len(expected) and trace["rows"] == 128
    assert f"{trace['active_rows']} of 128 first-layer rows were active" in result.reconstruction.notes[0]
    assert result.reconstruction.images.shape == result.truth.images.shape


def test_a_one_step_fedavg_update_is_read_the_same_and_several_steps_are_said_unverified():
    one = trap_run(4, **{"client.protocol": "fedavg", "client.lr": 0.05})
    assert exactly_recovered(one) == len(isolated_images(one)) >= 2
    several = trap_run(4, **{"client.protocol": "fedavg", "client.lr": 0.05, "client.local_steps": 3})
    assert several.reconstruction.trace[0]["verified"] == 0
    assert any("not one gradient step" in n for n in several.reconstruction.notes)


def test_the_trapped_layer_computes_on_pixels_and_fires_rarely():
    cfg = build_config(flags={**FACES, **server_flags("trap:scale=1.1,rows=100")})
    data = load_dataset("samples", subset="faces", image_size=12)
    honest = build_target(cfg, data)
    target = apply_server(cfg, honest, data, load_dataset)
    _, layer = first_linear(target.model, data.image_shape)
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    pixels = data.images(list(range(200))).double()
    std = torch.tensor(target.std, dtype=torch.float64).repeat_interleave(144)
    x = normalize(pixels, target.mean, target.std).flatten(1)
    # trapped rows: W·x + b = (W/σ)·p, the normalisation undone, they act on [0, 1] pixels
    assert torch.allclose((x @ w.T + b)[:, :100], pixels.flatten(1) @ (w / std)[:100].T, atol=1e-5)
    v = (w / std)[:100]
    negative, positive = (-v).clamp_min(0), v.clamp_min(0)
    assert torch.equal((v < 0).sum(1), torch.full((100,), 432 // 2))  # half the signs negative
    ratio = (negative.sum(1) / positive.sum(1)).mean()
    assert 1.05 < ratio < 1.15  # the negative mass outweighs the positive by about s
    fires = (x @ w.T + b > 0).double().mean(0)
    assert fires[:100].mean() < 0.25 < fires[100:].mean()  # trapped rows fire rarely, honest ones often
    h_layer = first_linear(honest.model, data.image_shape)[1]
    assert torch.equal(h_layer.weight[100:], layer.weight[100:])  # untrapped rows kept
    # rate: each row fires for that share of the server's public images
    rated = apply_server(build_config(flags={**FACES, **server_flags("trap:rate=0.125")}), honest, data, load_dataset)
    public = build_config(flags={**FACES, **server_flags("trap:rate=0.125")})
    assert parse_modification(public.server.modification).requires == {
        "surrogate_data": "with rate, each row's factor is set on public images"}
    _, r_layer = first_linear(rated.model, data.image_shape)
    share = (r_layer(x.float()) > 0).double().mean(0)
    assert abs(float(share.mean()) - 0.125) < 0.05


def test_inspect_model_flags_trap_weights_and_not_honest_or_shifted_layers():
    for spec in ("trap", "trap:rate=0.125", "trap:scale=1.05"):
        model, classes = sent_model(build_config(flags={**FACES, "model.width": 1.0, **server_flags(spec)}))
        findings = inspect_model(model, classes)
        assert findings.kinds == ["trap"], (spec, findings.findings)
        assert findings.findings[0].layer == "1.weight" and inspect_model(model).kinds == ["trap"]
    for seed in range(5):
        assert not inspect_model(create_model("mlp", 2, 3, 12, width=1.0, seed=seed), 2).suspicious
    # A layer whose negative weights outweigh the positive because every weight is shifted down (what
    # training can do to a first layer) is no trap: its negatives are more, not larger.
    g = torch.Generator().manual_seed(0)
    a = 1 / math.sqrt(432)
    shifted = (torch.rand(256, 432, generator=g) * 2 - 1) * a - 0.2 * a
    state = {"fc.weight": shifted, "fc.bias": torch.zeros(256), "head.weight": torch.randn(10, 256) * 0.05,
             "head.bias": torch.zeros(10)}
    assert ((-shifted).clamp_min(0).sum(1) > shifted.clamp_min(0).sum(1)).double().mean() > 0.95
    assert not inspect_state(state, 10).suspicious
    scaled = torch.where(shifted + 0.2 * a < 0, 1.1 * (shifted + 0.2 * a), shifted + 0.2 * a)
    assert inspect_state({**state, "fc.weight": scaled}, 10).kinds == ["trap"]


def test_the_cli_attacks_a_trap_server_and_inspect_model_flags_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, stdout, err = cli(monkeypatch, capsys, "attack", "--server", "trap:scale=1.1", "--attack", "trap",
                            "--dataset", "samples", "--set", "data.options.subset=faces", "--image-size", "12",
                            "--model", "mlp", "-b", "4", "--threat", "G", "--set", "client.seed=3",
                            "--out", str(out), "-q")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["server"].startswith("trap:scale=1.1") and metrics["recovery"]["images"] == 4
    assert metrics["recovery"]["exact_images"] >= 2
    code, stdout, _ = cli(monkeypatch, capsys, "inspect-model", "--from-payload", "--server", "trap",
                          "--dataset", "samples", "--image-size", "12", "--model", "mlp")
    assert code == FLAGGED and "trap" in stdout and "1.weight" in stdout


def test_models_without_a_fully_connected_first_layer_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "attack", "--server", "trap", "--dataset", "samples", "--image-size",
                       "12", "--model", "convnet", "-b", "2", "--threat", "G", "--out", str(tmp_path / "x"), "-q")
    assert code == 2 and err.count("\n") == 1
    assert "first layer is fully connected on the flattened input" in err and "Conv2d" in err
    with pytest.raises(ConfigError, match="exceeds the first layer's 128 rows"):
        trap_run(2, "trap:rows=500")
    with pytest.raises(ConfigError, match="scale"):
        parse_modification("trap:scale=0.9")
    # the attack on an honest convolutional payload: one line, no traceback
    data = load_dataset("samples", subset="faces", image_size=12)
    convnet = create_model("convnet", 2, 3, 12, width=0.125, seed=0)
    norm = Normalization(data.mean, data.std)
    payload = Client(convnet, norm).update(ClientData(data.images([0, 100]), data.label_of([0, 100])))
    knowledge = AttackerKnowledge(convnet, data.image_shape, 2, data.mean, data.std)
    with pytest.raises(FedleakError, match="first fully connected layer"):
        build_attack("trap").run(payload, knowledge)


def test_an_honest_mlp_gives_few_isolated_rows_and_says_so():
    result = run(build_config(flags={**FACES, "client.batch_size": 8, "client.seed": 3, "attack.name": "trap"}))
    assert any("sent no trap weights" in n for n in result.reconstruction.notes)
    assert exactly_recovered(result) == len(isolated_images(result))
    assert np.isfinite(result.reconstruction.images.numpy()).all()
