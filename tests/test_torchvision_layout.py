"""torchvision / timm state dicts (ResNet, DenseNet) load into fedleak's modules: renamed by the
layout table, shapes checked strictly, one-line errors otherwise."""

from __future__ import annotations

import pytest
import torch

from fedleak.errors import FedleakError
from fedleak.models import create_model
from fedleak.models.checkpoint import load_weights
from fedleak.models.layouts import inverse

from tests.test_cli import fedleak

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet18_keys() -> list[str]:
    """torchvision's resnet18 state-dict keys, written out from its module tree (conv1, bn1,
    layerN.J.{conv1,bn1,conv2,bn2,downsample.0/1}, fc) — independent of fedleak's mapping."""
    keys = ["conv1.weight", *(f"bn1.{p}" for p in BN)]
    for stage in range(1, 5):
        for block in range(2):
            pre = f"layer{stage}.{block}"
            keys += [f"{pre}.conv1.weight", *(f"{pre}.bn1.{p}" for p in BN),
                     f"{pre}.conv2.weight", *(f"{pre}.bn2.{p}" for p in BN)]
            if stage > 1 and block == 0:
                keys += [f"{pre}.downsample.0.weight", *(f"{pre}.downsample.1.{p}" for p in BN)]
    return keys + ["fc.weight", "fc.bias"]


def torchvision_densenet121_keys() -> list[str]:
    """torchvision's densenet121 keys: features.conv0/norm0, denseblockB.denselayerL.{norm1,conv1,
    norm2,conv2}, transitionB.{norm,conv}, norm5, classifier."""
    keys = ["features.conv0.weight", *(f"features.norm0.{p}" for p in BN)]
    for b, depth in enumerate((6, 12, 24, 16), 1):
        for layer in range(1, depth + 1):
            pre = f"features.denseblock{b}.denselayer{layer}"
            keys += [*(f"{pre}.norm1.{p}" for p in BN), f"{pre}.conv1.weight",
                     *(f"{pre}.norm2.{p}" for p in BN), f"{pre}.conv2.weight"]
        if b < 4:
            keys += [*(f"features.transition{b}.norm.{p}" for p in BN), f"features.transition{b}.conv.weight"]
    return keys + [*(f"features.norm5.{p}" for p in BN), "classifier.weight", "classifier.bias"]


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


@pytest.mark.parametrize("name, keys", [("resnet18", torchvision_resnet18_keys),
                                        ("densenet121", torchvision_densenet121_keys)])
def test_full_width_imagenet_layout_loads_at_224(tmp_path, name, keys):
    source = create_model(name, 1000, 3, 224, seed=1)
    foreign = inverse(source.state_dict(), source, name)
    assert sorted(foreign) == sorted(keys())  # exactly torchvision's names
    # old torchvision files have no num_batches_tracked and DenseNet's ``norm.1`` spelling
    foreign = {k.replace(".norm1.", ".norm.1.").replace(".conv1.", ".conv.1.") if "denselayer" in k else k: v
               for k, v in foreign.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": foreign}, path)
    _same(source, load_weights(create_model(name, 1000, 3, 224, seed=2), path, name))
    with pytest.raises(FedleakError, match=r"classifier .* has 1000 classes, the dataset 10") as err:
        load_weights(create_model(name, 10, 3, 224), path, name)
    assert "\n" not in str(err.value)


def test_module_prefix_and_se_resnet(tmp_path):
    source = create_model("se_resnet50", 5, 3, 96, width=0.25, seed=1)
    foreign = inverse(source.state_dict(), source, "se_resnet50")
    assert "layer1.0.se.fc1.weight" in foreign and "layer1.0.downsample.1.running_var" in foreign
    torch.save({f"module.{k}": v for k, v in foreign.items()}, tmp_path / "se.pt")
    _same(source, load_weights(create_model("se_resnet50", 5, 3, 96, width=0.25), tmp_path / "se.pt", "se_resnet50"))


def test_attack_command_loads_a_torchvision_checkpoint(tmp_path, monkeypatch, capsys):
    source = create_model("resnet18", 10, 3, 16, width=0.25, seed=3)
    foreign = inverse(source.state_dict(), source, "resnet18")
    good, bad, short = tmp_path / "tv.pt", tmp_path / "bad.pt", tmp_path / "short.pt"
    torch.save(foreign, good)
    torch.save({**foreign, "layer1.0.conv2.weight": torch.zeros(16, 16, 5, 5)}, bad)
    torch.save({k: v for k, v in foreign.items() if k != "layer2.0.downsample.0.weight"}, short)
    args = ["attack", "--model", "resnet18", "--iterations", "2", "--set", "data.image_size=16",
            "--set", "model.width=0.25", "-q"]
    code, _, err = fedleak(monkeypatch, capsys, *args, "--checkpoint", str(good), "--out", str(tmp_path / "r"))
    assert code == 0, err
    code, _, err = fedleak(monkeypatch, capsys, *args, "--checkpoint", str(bad), "--out", str(tmp_path / "r2"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'layer1.0.conv2.weight' (as 'stages.0.0.body.3.weight') is (16, 16, 5, 5)" in err
    code, _, err = fedleak(monkeypatch, capsys, *args, "--checkpoint", str(short), "--out", str(tmp_path / "r3"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "missing 1 tensors (e.g. 'stages.1.0.shortcut.0.weight')" in err and "torchvision/timm layout" in err


def test_weights_reach_the_attacked_model(tmp_path):
    from fedleak.config import build_config
    from fedleak.pipeline import build_target, load_data

    source = create_model("densenet121", 10, 3, 16, width=0.125, seed=4)
    torch.save(inverse(source.state_dict(), source, "densenet121"), tmp_path / "dn.pt")
    config = build_config(None, {"model.name": "densenet121", "model.width": 0.125, "data.image_size": 16,
                                 "model.checkpoint": str(tmp_path / "dn.pt")}, [])
    _same(source, build_target(config, load_data(config)).model)


