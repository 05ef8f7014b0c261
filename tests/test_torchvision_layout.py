"""torchvision / timm state dicts (ResNet, DenseNet) load into fedleak's modules: renamed by the
layout table, shapes checked strictly, one-line errors otherwise."""

from __future__ import annotations

import pytest
import torch

from fedleak.errors import FedleakError
from fedleak.models import create_model
from fedleak.models.checkpoint import load_into
from tests.foreign_layouts import foreign_state
from tests.test_cli import fedleak


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_full_width_imagenet_layout_loads_at_224(tmp_path, name):
    source = create_model(name, 1000, 3, 224, seed=1)
    foreign = foreign_state(source, name)  # exactly torchvision's names
    # old torchvision files have no num_batches_tracked and DenseNet's ``norm.1`` spelling
    foreign = {k.replace(".norm1.", ".norm.1.").replace(".conv1.", ".conv.1.") if "denselayer" in k else k: v
               for k, v in foreign.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": foreign}, path)
    target = create_model(name, 1000, 3, 224, seed=2)
    assert load_into(target, path, name) == "torchvision/timm"
    _same(source, target)
    with pytest.raises(FedleakError, match=r"classifier .* has 1000 classes, the dataset 10") as err:
        load_into(create_model(name, 10, 3, 224), path, name)
    assert "\n" not in str(err.value)


def test_module_prefix_and_se_resnet(tmp_path):
    source = create_model("se_resnet50", 5, 3, 96, width=0.25, seed=1)
    foreign = foreign_state(source, "se_resnet50")  # timm's names
    assert "layer1.0.se.fc1.weight" in foreign and "layer1.0.downsample.1.running_var" in foreign
    torch.save({f"module.{k}": v for k, v in foreign.items()}, tmp_path / "se.pt")
    target = create_model("se_resnet50", 5, 3, 96, width=0.25)
    assert load_into(target, tmp_path / "se.pt", "se_resnet50") == "torchvision/timm"
    _same(source, target)


def test_attack_command_loads_a_torchvision_checkpoint(tmp_path, monkeypatch, capsys):
    source = create_model("resnet18", 10, 3, 16, width=0.25, seed=3)
    foreign = foreign_state(source, "resnet18")
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
    from fedleak.modalities import build_target
    from fedleak.pipeline import load_data

    source = create_model("densenet121", 10, 3, 16, width=0.125, seed=4)
    torch.save(foreign_state(source, "densenet121"), tmp_path / "dn.pt")
    config = build_config(None, {"model.name": "densenet121", "model.width": 0.125, "data.image_size": 16,
                                 "model.checkpoint": str(tmp_path / "dn.pt")}, [])
    _same(source, build_target(config, load_data(config)).model)


