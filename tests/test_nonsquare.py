"""Non-square images (e.g. ORL's 112×92 faces): every model sizes its head from the real H×W."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from fedleak.data import load_dataset
from fedleak.models import MODELS, card_of, create_model
from fedleak.models.checkpoint import METADATA_KEY, read_metadata, save_checkpoint
from fedleak.training import TrainSettings, train_target
from tests.test_cli import fedleak

H, W = 28, 20


IMAGE_MODELS = [n for n in MODELS.names() if card_of(n).modality == "image"]  # text models take token ids


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_registered_model_inverts_through_non_square_images(name, channels):
    patches = {"patch": 4} if name.startswith("vit") else {}  # an ImageNet ViT's 16-px patches do not tile 28×20
    model = create_model(name, 3, channels, (H, W), width=0.0625, seed=0, **patches).eval()
    x = torch.rand(1, channels, H, W, generator=torch.Generator().manual_seed(0), requires_grad=True)
    logits = model(x)
    assert logits.shape == (1, 3)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([1])), params, create_graph=True)
    (second,) = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), x)  # what gradient matching needs
    assert second.shape == x.shape and torch.isfinite(second).all() and second.abs().max() > 0


def test_heads_follow_height_and_width():
    # ORL's 112×92 faces: two 3×3 pools leave a 12×10 map of 4·16 channels for ConvNet-16.
    assert create_model("convnet", 40, 1, (112, 92), width=0.25).classifier.in_features == 64 * 12 * 10
    assert create_model("mlp", 40, 1, (112, 92))[1].in_features == 112 * 92
    assert create_model("vgg7", 40, 1, (112, 92))[-1].in_features == 256 * 14 * 11
    # A square (S, S) is the side S, so a factory written for square images still gets an int.
    from tests.byo_models import Tiny

    assert isinstance(create_model("tests.byo_models:tiny", 4, 3, (8, 8)), Tiny)


@pytest.mark.parametrize("args, model, size", [
    (["--model", "lenet"], "lenet", None),  # the fixture's own 14×12 faces
    (["--set", "data.image_size=[27, 18]"], "convnet", [27, 18]),  # the default model, a 3×2 feature map
])
def test_attack_on_a_non_square_folder(folder_root, tmp_path, monkeypatch, capsys, args, model, size):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--dataset", "folder", "--root", str(folder_root),
                           *args, "--iterations", "3", "--out", str(out), "-q")
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["name"] == model and config["data"]["image_size"] == size
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 3


def test_checkpoints_record_the_image_size_as_trained(folder_root, tmp_path, monkeypatch, capsys):
    settings = TrainSettings(epochs=1, batch_size=4)
    native = train_target("lenet", "folder", str(folder_root), settings=settings, progress=False)
    square = train_target("lenet", "folder", str(folder_root), image_size=8, settings=settings, progress=False)
    assert native.info.image_size == [14, 12] and square.info.image_size == 8
    path = save_checkpoint(tmp_path / "lenet.safetensors", native.model, native.info)
    assert json.loads(read_metadata(path)[METADATA_KEY])["image_size"] == [14, 12]
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--dataset", "folder", "--root", str(folder_root),
                           "--checkpoint", str(path), "--iterations", "2", "--out", str(out), "-q")
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["image_size"] == [14, 12]


def test_data_image_size_takes_height_and_width(folder_root):
    # An (H, W) size resizes without the square crop an int size implies.
    assert load_dataset("folder", folder_root, image_size=(10, 6)).images([0]).shape == (1, 1, 10, 6)
    assert load_dataset("folder", folder_root, image_size=10).image_shape == (1, 10, 10)
    assert load_dataset("samples", image_size=(12, 16)).images([4]).shape == (1, 3, 12, 16)
