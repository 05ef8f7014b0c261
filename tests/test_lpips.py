"""LPIPS from local files, checked with stand-in (random) weights in the real files' layouts."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from fedleak.errors import FedleakError
from fedleak.metrics.lpips import BACKBONES, LPIPS, find_weights, load_lpips, lpips_scorers

from tests.test_cli import TINY, fedleak

TORCHVISION_ALEXNET = {  # torchvision's alexnet() parameter shapes, classifier included
    "features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
    "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3),
    "classifier.1": (4096, 9216), "classifier.4": (4096, 4096), "classifier.6": (1000, 4096),
}


def stand_in_backbone(net: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if net == "alex":
        shapes = {k: s for k, s in TORCHVISION_ALEXNET.items() if k.startswith("features")}
        shapes["classifier.6"] = (10, 4096)  # classifier weights ride along and are ignored
    else:
        shapes = {f"features.{i}": (args[1], args[0], args[2], args[2])
                  for i, (kind, *args) in enumerate(BACKBONES["vgg"].layers) if kind == "conv"}
    state = {}
    for key, shape in shapes.items():
        fan_in = torch.tensor(shape[1:]).prod().item()
        state[f"{key}.weight"] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
        state[f"{key}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    return state


def stand_in_linear(net: str, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
            for i, c in enumerate(BACKBONES[net].channels())}


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """No LPIPS files anywhere torch or fedleak would look."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("FEDLEAK_LPIPS", raising=False)
    return tmp_path


@pytest.fixture
def weights(no_cache):
    folder = no_cache / "lpips-weights"
    folder.mkdir()
    torch.save(stand_in_backbone("alex"), folder / "alexnet-owt-0000.pth")
    torch.save(stand_in_linear("alex"), folder / "alex.pth")
    return folder


def reference(x, y, backbone, linear, slices):
    """LPIPS written out op by op from the paper's definition, for AlexNet's five slices."""
    def prep(t):
        t = t * 2 - 1
        return (t - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(t):
        w = backbone
        out = []
        t = F.relu(F.conv2d(t, w["features.0.weight"], w["features.0.bias"], stride=4, padding=2)); out.append(t)
        t = F.max_pool2d(t, 3, 2)
        t = F.relu(F.conv2d(t, w["features.3.weight"], w["features.3.bias"], padding=2)); out.append(t)
        t = F.max_pool2d(t, 3, 2)
        for k in (6, 8, 10):
            t = F.relu(F.conv2d(t, w[f"features.{k}.weight"], w[f"features.{k}.bias"], padding=1)); out.append(t)
        return out

    total = 0
    for i, (a, b) in enumerate(zip(feats(prep(x)), feats(prep(y)))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        total = total + F.conv2d((a - b) ** 2, linear[f"lin{i}.model.1.weight"]).mean((1, 2, 3))
    return total


def images(n=3, side=40, seed=0):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_matches_the_definition_written_out(weights):
    model = load_lpips("alex", weights)
    x, y = images(), images(seed=1)
    expected = reference(x, y, stand_in_backbone("alex"), stand_in_linear("alex"), None)
    assert torch.allclose(model(x, y), expected, rtol=1e-5, atol=1e-7)


def test_metric_properties(weights):
    model = load_lpips("alex", weights)
    x, y = images(), images(seed=1)
    assert torch.allclose(model(x, x), torch.zeros(3), atol=1e-7)
    assert torch.allclose(model(x, y), model(y, x), rtol=1e-6)
    assert (model(x, y) > 0).all()
    noise = torch.randn_like(x, generator=torch.Generator().manual_seed(2))
    d = [model(x, (x + s * noise).clamp(0, 1)).mean().item() for s in (0.02, 0.1, 0.4)]
    assert d[0] < d[1] < d[2]
    linear = {k: 2 * v for k, v in stand_in_linear("alex").items()}  # LPIPS is linear in the weights
    doubled = LPIPS("alex")
    doubled.load_backbone(stand_in_backbone("alex"))
    doubled.load_linear(linear)
    assert torch.allclose(doubled(x, y), 2 * model(x, y), rtol=1e-5)


def test_small_and_grey_images_are_scored(weights):
    model = load_lpips("alex", weights)
    grey = torch.rand(2, 1, 28, 28)
    d = model(grey, grey.flip(-1))
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()  # a mirrored image differs
    assert torch.allclose(model(grey, grey), torch.zeros(2), atol=1e-7)


def test_vgg_layout_loads_and_scores(no_cache):
    folder = no_cache / "w"
    folder.mkdir()
    torch.save(stand_in_backbone("vgg"), folder / "vgg16-397923af.pth")
    torch.save(stand_in_linear("vgg"), folder / "vgg.pth")
    model = load_lpips("vgg", folder)
    assert BACKBONES["vgg"].channels() == [64, 128, 256, 512, 512]
    x = images(2, 32)
    assert torch.allclose(model(x, x), torch.zeros(2), atol=1e-7)
    assert (model(x, images(2, 32, seed=5)) > 0).all()


def test_found_in_the_torch_cache_and_by_env(no_cache, monkeypatch):
    cache = no_cache / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(stand_in_backbone("alex"), cache / "alexnet-owt-7be5be79.pth")
    torch.save(stand_in_linear("alex"), cache / "lpips_alex.pth")
    assert find_weights("alex") == (cache / "alexnet-owt-7be5be79.pth", cache / "lpips_alex.pth")
    other = no_cache / "env"
    other.mkdir()
    torch.save(stand_in_backbone("alex", seed=3), other / "alexnet-x.pth")
    torch.save(stand_in_linear("alex"), other / "alex.pth")
    monkeypatch.setenv("FEDLEAK_LPIPS", str(other))
    assert find_weights("alex") == (other / "alexnet-x.pth", other / "alex.pth")  # the env folder comes first


def test_missing_weights_give_none_and_a_hint(no_cache):
    scorers, hints = lpips_scorers(["alex", "vgg"])
    assert scorers == {"alex": None, "vgg": None}
    assert len(hints) == 2 and "alexnet-<hash>.pth" in hints[0] and "alex.pth" in hints[0]
    assert "\n" not in hints[0] and "fedleak weights fetch alex" in hints[0] and "$TORCH_HOME/hub/checkpoints" in hints[0]
    assert str(no_cache) not in hints[0]  # hints go into reports others read: no path of this machine


def test_wrong_files_are_one_line_errors(no_cache):
    folder = no_cache / "bad"
    folder.mkdir()
    state = stand_in_backbone("alex")
    state["features.3.weight"] = torch.zeros(10, 64, 5, 5)
    torch.save(state, folder / "alexnet-bad.pth")
    torch.save(stand_in_linear("alex"), folder / "alex.pth")
    with pytest.raises(FedleakError, match="do not fit"):
        load_lpips("alex", folder)
    torch.save(stand_in_backbone("alex"), folder / "alexnet-bad.pth")
    torch.save(stand_in_linear("vgg"), folder / "alex.pth")
    with pytest.raises(FedleakError, match="lin1 weight with 192"):
        load_lpips("alex", folder)
    (folder / "alex.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FedleakError, match="cannot read"):
        load_lpips("alex", folder)


def test_attack_reports_lpips_or_na(weights, tmp_path, monkeypatch, capsys):
    out = tmp_path / "na"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out))
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["lpips"] == {"alex": None}
    assert "fedleak: note: LPIPS-alex is n/a" in err
    html = (out / "report.html").read_text()
    assert "LPIPS-alex" in html and "n/a" in html
    out = tmp_path / "scored"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out),
                           "--set", f"metrics.lpips_weights={weights}")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lpips"]["alex"] > 0 and metrics["images"][0]["lpips"]["alex"] == pytest.approx(metrics["lpips"]["alex"])
    assert "n/a" not in err
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(tmp_path / "x"),
                           "--set", "metrics.lpips=[squeeze]")
    assert code == 2 and err.count("\n") == 1 and "metrics.lpips" in err
