"""Model families, checkpoints, training and bring-your-own models."""

import pytest
import torch

from fedleak.config import build_config
from fedleak.errors import FedleakError
from fedleak.models import create_model
from fedleak.models.checkpoint import CheckpointInfo, load_into, read_info, save_checkpoint
from fedleak.models.external import check_attackable
from fedleak.pipeline import run
from fedleak.training import TrainSettings, augment, holdout_split, train_target

FAMILIES = ["mlp", "lenet", "lenet5", "convnet", "resnet18", "resnet34", "resnet50", "densenet121",
            "se_resnet50", "vgg7", "inception_resnet_v1"]


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, params",
    [("resnet18", 11_689_512), ("resnet50", 25_557_032), ("densenet121", 7_978_856), ("se_resnet50", 28_088_024)],
)
def test_published_parameter_counts(name, params):
    assert count(create_model(name, 1000, 3, 224)) == params


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_cpu_sized_and_attackable(name):
    model = create_model(name, 5, 1, 32, width=0.125, seed=0)
    assert model.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 5)
    check_attackable(model, (1, 32, 32), 5)
    assert count(model) < count(create_model(name, 5, 1, 32, width=0.25, seed=0))


def test_large_images_use_the_imagenet_stem():
    model = create_model("densenet121", 4, 3, 96, width=0.125)
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model.eval()(torch.rand(1, 3, 96, 96)).shape == (1, 4)


def test_checkpoint_round_trip(tmp_path):
    model = create_model("resnet18", 3, 1, 16, width=0.125, seed=1)
    info = CheckpointInfo("resnet18", 3, 1, 16, width=0.125, dataset="toy", mean=(0.5,), std=(0.2,),
                          classes=["a", "b", "c"], epochs=2, test_accuracy=0.5, seed=1)
    path = save_checkpoint(tmp_path / "m.safetensors", model, info)
    back = read_info(path)
    assert back.architecture == "resnet18" and back.classes == ["a", "b", "c"] and back.fedleak_version
    fresh = create_model("resnet18", 3, 1, 16, width=0.125, seed=2)
    assert load_into(fresh, path) == ""  # fedleak's own names
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(FedleakError, match="does not fit"):
        load_into(create_model("resnet18", 4, 1, 16, width=0.125), path)
    with pytest.raises(FedleakError, match="does not fit"):
        load_into(create_model("convnet", 3, 1, 16, width=0.125), path)


def test_torch_files_load_weights_only(tmp_path):
    model = create_model("lenet", 3, 3, 8, seed=0)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    other = create_model("lenet", 3, 3, 8, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    load_into(other, tmp_path / "w.pt")
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(FedleakError, match="cannot be read"):
        load_into(model, tmp_path / "evil.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(FedleakError, match="corrupt|cannot be read"):
        read_info(tmp_path / "bad.safetensors")


def test_training_learns_and_splits(tmp_path):
    settings = TrainSettings(epochs=3, lr=0.05, batch_size=20, seed=0)
    result = train_target("lenet5", "samples", None, 1.0, {}, None, None, None, None, settings, progress=False)
    # samples has no test split: 10 photos → 8 train / 2 test
    assert result.info.training["train_images"] == 8 and result.info.training["test_images"] == 2
    assert result.history.train_loss[-1] < result.history.train_loss[0]
    train, test = holdout_split(10, 0.2, 0)
    assert len(train) == 8 and not set(train) & set(test) and (train, test) == holdout_split(10, 0.2, 0)


def test_augment_keeps_shape_and_content():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    # Each output is its image, perhaps mirrored, shifted by at most the 4-px padding (zeros fill in).
    for image, out in zip(x, y):
        views = [torch.nn.functional.pad(v, (4, 4, 4, 4))[:, dy : dy + 8, dx : dx + 8]
                 for v in (image, image.flip(-1)) for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out, v) for v in views)


@pytest.mark.parametrize(
    "factory, message",
    [
        ("tests.byo_models:inplace", "double backward"),
        ("tests.byo_models:detached", "does not depend on its input"),
        ("tests.byo_models:wrong_output", "logits of shape"),
        ("tests.byo_models:not_a_module", "not an nn.Module"),
        ("tests.byo_models:missing", "has no attribute"),
        ("no_such_package.models:net", "cannot import"),
    ],
)
def test_bring_your_own_model_failures_are_explained(factory, message):
    cfg = build_config(overrides=[f"model.name={factory}", "data.image_size=8", "attack.iterations=1"])
    with pytest.raises(FedleakError, match=message):
        run(cfg)


def test_bring_your_own_model_by_path_and_object():
    cfg = build_config(overrides=["model.name=tests.byo_models:tiny", "data.image_size=8", "attack.iterations=20"])
    assert run(cfg).evaluation.label_accuracy == 1.0
    from tests.byo_models import Tiny

    cfg = build_config(overrides=["data.image_size=8", "attack.iterations=2"])
    mine = Tiny(10, 3, 8, hidden=5)
    result = run(cfg, model=mine)
    assert result.reconstruction.iterations == 2
    # The object given is the model the client trains and the server sends, weights and all.
    assert isinstance(result.target.model, Tiny) and result.target.model is not mine
    assert list(result.payload.model_state) == list(mine.state_dict())
    assert all(torch.equal(result.payload.model_state[k], v) for k, v in mine.state_dict().items())
