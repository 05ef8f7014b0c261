"""Model cards (each registered model's intended input size and normalisation) and the order in
which a run picks its normalisation: checkpoint > config > bring-your-own module > card (after a
torchvision/timm state dict) > dataset."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn

from fedleak.config import RunConfig, build_config
from fedleak.data import load_dataset
from fedleak.errors import ConfigError
from fedleak.modalities import build_target
from fedleak.models import CARDS, MODELS, ModelCard, card_of, create_model
from fedleak.models.cards import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, MNIST_MEAN, MNIST_STD
from fedleak.models.catalogue import card_table, describe_model, file_card
from fedleak.models.checkpoint import CheckpointInfo, save_checkpoint, save_tensors
from fedleak.models.normalization import SOURCES, Evidence, declared_normalization, resolve_normalization
from fedleak.pipeline import resolve_checkpoint
from fedleak.run_unit import RunSpec
from tests.foreign_layouts import foreign_state
from tests.test_cli import fedleak

EXPECTED = {  # what each registered model's card says: (input size, mean, std)
    "resnet18": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "resnet34": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "resnet50": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "se_resnet50": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "densenet121": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "inception_resnet_v1": ((3, 160, 160), (0.5,) * 3, (128 / 255,) * 3),
    "convnet": ((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD),
    "vgg7": ((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD),
    "lenet": ((3, 32, 32), (0.0,) * 3, (1.0,) * 3),
    "lenet5": ((1, 28, 28), MNIST_MEAN, MNIST_STD),
    "lenet-rog": ((3, 128, 128), (0.0,) * 3, (1.0,) * 3),
    "mlp": ((1, 28, 28), MNIST_MEAN, MNIST_STD),
    "vit": ((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD),
    "vit_tiny": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "vit_b_16": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
}


TEXT = {"gpt2-tiny": 128, "gpt2-small-shape": 1024, "bert-tiny": 512, "bert-small-shape": 512, "llama-tiny": 128}  # their context


# ------------------------------------------------------------------------------------------- cards

def test_every_registered_model_has_a_card_and_every_card_a_model():
    assert CARDS.names() == MODELS.names() == sorted({*EXPECTED, *TEXT})


@pytest.mark.parametrize("name", sorted(TEXT))
def test_text_cards_say_token_ids_and_their_context(name):
    card = card_of(name)
    assert card.modality == "text" and card.context_length == TEXT[name]
    assert "token ids" in card.summary() and f"≤{TEXT[name]} tokens" in card.size_text()
    text = describe_model(name)
    assert "image_size" not in text and f"at most {TEXT[name]}" in text
    assert yaml.safe_load(text)["model"]["name"] == name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_card_fields(name):
    card = card_of(name)
    size, mean, std = EXPECTED[name]
    assert card.input_size == size and card.channels == size[0]
    assert card.mean == pytest.approx(mean) and card.std == pytest.approx(std)
    assert card.dataset and card.reference  # where the values come from, said
    assert card.as_dict() == {"input_size": list(size), "mean": list(card.mean), "std": list(card.std),
                              "dataset": card.dataset, "reference": card.reference}
    assert card.size_text() in card.summary() and card.dataset in card.summary()


def test_imagenet_and_dataset_constants():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    assert CIFAR10_MEAN == (0.4915, 0.4823, 0.4468) and CIFAR10_STD == (0.2470, 0.2435, 0.2616)
    assert MNIST_MEAN == (0.1307,) and MNIST_STD == (0.3081,)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_card_input_size_builds_and_forwards(name):
    card = card_of(name)
    c, h, w = card.input_size
    model = create_model(name, 7, c, (h, w), width=0.125, seed=0).eval()
    x = (torch.rand(1, c, h, w) - torch.tensor(card.mean).view(1, c, 1, 1)) / torch.tensor(card.std).view(1, c, 1, 1)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"input_size": (3, 0, 4)}, "positive"),
    ({"mean": (0.5, 0.5)}, "one mean and std per channel"),
    ({"std": (0.2, 0.0, 0.2)}, "positive"),
    ({"mean": (0.5, math.nan, 0.5)}, "finite"),
])
def test_a_malformed_card_is_refused(kwargs, message):
    fields = {"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.2,) * 3, "dataset": "d", "reference": "r",
              **kwargs}
    with pytest.raises(ValueError, match=message):
        ModelCard(**fields)


def test_card_table_lists_every_model():
    rows = card_table()
    assert [r["model"] for r in rows] == MODELS.names()
    image = {"model", "input_size", "mean", "std", "dataset", "reference"}
    assert all(set(r) == image for r in rows if r["model"] not in TEXT)
    assert all(set(r) == image | {"modality", "context_length"} for r in rows if r["model"] in TEXT)


def test_config_command_shows_a_models_section_and_card(monkeypatch, capsys):
    code, out, _ = fedleak(monkeypatch, capsys, "config", "resnet18")
    assert code == 0 and "3×224×224" in out and "ImageNet-1k" in out
    tree = yaml.safe_load(out)
    assert tree == {"model": {"name": "resnet18", "width": 1.0, "options": {"norm": "batch"}}}
    RunConfig.model_validate(tree)  # a valid config section as printed
    # the commented mean/std lines, uncommented, set the card's normalisation
    uncommented = yaml.safe_load(out.replace("  # mean:", "  mean:").replace("  # std:", "  std:"))
    model = RunConfig.model_validate(uncommented).model
    assert model.mean == IMAGENET_MEAN and model.std == IMAGENET_STD


def test_config_command_lists_every_card(monkeypatch, capsys):
    code, out, _ = fedleak(monkeypatch, capsys, "config", "models")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == MODELS.names()
    assert all(card_of(line.split()[0]).size_text() in line for line in lines)
    code, out, _ = fedleak(monkeypatch, capsys, "config", "ig")  # attacks as before
    assert code == 0 and yaml.safe_load(out)["attack"]["name"] == "ig"


def test_describe_model_writes_every_option_default():
    tree = yaml.safe_load(describe_model("convnet"))
    assert tree["model"]["options"] == {"pool": "avg", "norm": "batch"}
    assert "options" not in yaml.safe_load(describe_model("inception_resnet_v1"))["model"]


def test_inspect_model_shows_the_card(tmp_path, monkeypatch, capsys):
    model = create_model("convnet", 3, 3, 16, width=0.125, seed=0)
    info = CheckpointInfo("convnet", 3, 3, 16, width=0.125)
    save_checkpoint(tmp_path / "c.safetensors", model, info)
    code, out, _ = fedleak(monkeypatch, capsys, "inspect-model", str(tmp_path / "c.safetensors"))
    assert code == 0 and "model card (convnet): input 3×32×32" in out and "CIFAR-10" in out
    code, out, _ = fedleak(monkeypatch, capsys, "inspect-model", str(tmp_path / "c.safetensors"), "--json")
    assert code == 0 and json.loads(out)["card"] == {"model": "convnet", **card_of("convnet").as_dict()}
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # no metadata: --model names the card
    code, out, _ = fedleak(monkeypatch, capsys, "inspect-model", str(tmp_path / "plain.pt"), "--json")
    assert code == 0 and json.loads(out)["card"] is None
    code, out, _ = fedleak(monkeypatch, capsys, "inspect-model", str(tmp_path / "plain.pt"), "--model", "vgg7")
    assert code == 0 and "model card (vgg7)" in out
    code, out, _ = fedleak(monkeypatch, capsys, "inspect-model", "--from-payload", "--model", "lenet",
                           "--set", "data.image_size=8", "--json")
    assert code == 0 and json.loads(out)["card"]["model"] == "lenet"


def test_a_file_naming_an_unknown_or_external_model_has_no_card_and_imports_nothing(tmp_path):
    for name in ("nosuch", "os:system"):
        meta = json.dumps({"architecture": name, "num_classes": 2, "in_channels": 3, "image_size": 8})
        save_tensors(tmp_path / "x.safetensors", {"w": torch.zeros(2, 2)}, {"fedleak": meta})
        assert file_card(tmp_path / "x.safetensors") is None
    save_tensors(tmp_path / "y.safetensors", {"w": torch.zeros(2, 2)}, {"fedleak": "{not json"})
    assert file_card(tmp_path / "y.safetensors") is None


# --------------------------------------------------------------------------- the normalisation order

@pytest.fixture
def cifar16(cifar_root):
    return load_dataset("cifar10", cifar_root, image_size=16)


def _config(cifar_root, **model) -> RunConfig:
    return RunConfig.model_validate({"data": {"name": "cifar10", "root": str(cifar_root), "image_size": 16},
                                     "model": {"name": "convnet", "width": 0.125, **model}})


def _target(config: RunConfig, dataset, model: nn.Module | None = None):
    config, info = resolve_checkpoint(config)
    return build_target(config, dataset, info, model)


def test_the_sources_are_asked_in_the_documented_order():
    assert [name for name, _ in SOURCES] == ["checkpoint", "config", "model", "card", "dataset"]


def test_default_is_the_datasets_own(cifar_root, cifar16):
    target = _target(_config(cifar_root), cifar16)
    assert (target.mean, target.std, target.source) == (cifar16.mean, cifar16.std, "dataset")
    assert target.normalization() == {"mean": list(cifar16.mean), "std": list(cifar16.std), "source": "dataset"}


def test_config_beats_the_dataset(cifar_root, cifar16):
    target = _target(_config(cifar_root, mean=[0.5] * 3, std=[0.25] * 3), cifar16)
    assert (target.mean, target.std, target.source) == ((0.5,) * 3, (0.25,) * 3, "config")


def _checkpoint(tmp_path, cifar16, mean=(), std=()):
    model = create_model("convnet", 10, 3, 16, width=0.125, seed=0)
    info = CheckpointInfo("convnet", 10, 3, 16, width=0.125, mean=mean, std=std)
    return save_checkpoint(tmp_path / "c.safetensors", model, info)


def test_a_checkpoints_recorded_normalisation_beats_the_config(tmp_path, cifar_root, cifar16):
    path = _checkpoint(tmp_path, cifar16, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    target = _target(_config(cifar_root, checkpoint=str(path), mean=[0.5] * 3, std=[0.25] * 3), cifar16)
    assert (target.mean, target.std, target.source) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "checkpoint")


def test_a_checkpoint_without_normalisation_leaves_the_config_and_dataset(tmp_path, cifar_root, cifar16):
    path = _checkpoint(tmp_path, cifar16)
    assert _target(_config(cifar_root, checkpoint=str(path)), cifar16).source == "dataset"
    target = _target(_config(cifar_root, checkpoint=str(path), mean=[0.5] * 3, std=[0.25] * 3), cifar16)
    assert target.source == "config"


class Declared(nn.Module):
    """A user's model that declares its normalisation (as attributes, buffers or a timm-style config)."""

    def __init__(self, channels=3, side=16, classes=10, **declared) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.Sigmoid(), nn.Flatten(),
                                  nn.Linear(4 * side * side, classes))
        for key, value in declared.items():
            if isinstance(value, torch.Tensor):
                self.register_buffer(key, value)
            else:
                setattr(self, key, value)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("declared", [
    {"pretrained_cfg": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 16, 16)}},
    {"default_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}},
    {"mean": (0.5, 0.5, 0.5), "std": [0.5, 0.5, 0.5]},
    {"mean": torch.full((1, 3, 1, 1), 0.5), "std": torch.full((3,), 0.5)},  # buffers
])
def test_a_bring_your_own_modules_declared_normalisation(declared, cifar_root, cifar16):
    target = _target(_config(cifar_root), cifar16, Declared(**declared))
    assert (target.mean, target.std, target.source) == ((0.5,) * 3, (0.5,) * 3, "model")
    # the config still beats what the module declares
    target = _target(_config(cifar_root, mean=[0.1] * 3, std=[0.2] * 3), cifar16, Declared(**declared))
    assert target.source == "config" and target.mean == (0.1,) * 3


def test_an_external_factorys_declared_normalisation(cifar_root, cifar16, monkeypatch):
    import sys
    import types

    module = types.ModuleType("declared_models")
    module.net = lambda num_classes, in_channels, image_size: Declared(
        in_channels, image_size, num_classes, pretrained_cfg={"mean": (0.4,) * 3, "std": (0.3,) * 3})
    monkeypatch.setitem(sys.modules, "declared_models", module)
    config = RunConfig.model_validate({"data": {"name": "cifar10", "root": str(cifar_root), "image_size": 16},
                                       "model": {"name": "declared_models:net"}})
    target = _target(config, cifar16)
    assert (target.mean, target.std, target.source) == ((0.4,) * 3, (0.3,) * 3, "model")


def test_declared_values_are_only_read_never_computed():
    calls = []

    class Sneaky(Declared):
        @property
        def mean(self):  # a property would run the module's code: it is not read
            calls.append("mean")
            return (0.5,) * 3

        std = (0.5,) * 3

        def __getattr__(self, name):  # nor is __getattr__ asked for what is not stored
            calls.append(name)
            return super().__getattr__(name)

    assert declared_normalization(Sneaky()) is None and calls == []
    assert declared_normalization(Declared()) is None  # nothing declared: the next source answers


def test_a_modules_config_without_both_values_is_not_a_declaration():
    assert declared_normalization(Declared(pretrained_cfg={"mean": (0.5,) * 3})) is None
    assert declared_normalization(Declared(pretrained_cfg="not a mapping", mean=0.5, std=0.25)) == ((0.5,), (0.25,))


def _imagenet_checkpoint(tmp_path, classes=10, side=72):
    source = create_model("resnet18", classes, 3, side, width=0.125, seed=3)
    torch.save(foreign_state(source, "resnet18"), tmp_path / "tv.pt")
    return tmp_path / "tv.pt"


def test_a_torchvision_state_dict_brings_the_cards_normalisation(tmp_path, cifar_root):
    dataset = load_dataset("cifar10", cifar_root, image_size=72)
    path = _imagenet_checkpoint(tmp_path)
    base = {"data": {"name": "cifar10", "root": str(cifar_root), "image_size": 72},
            "model": {"name": "resnet18", "width": 0.125, "checkpoint": str(path)}}
    target = _target(RunConfig.model_validate(base), dataset)
    assert (target.mean, target.std, target.source) == (IMAGENET_MEAN, IMAGENET_STD, "card")
    base["model"].update(mean=[0.5] * 3, std=[0.5] * 3)  # the config beats the card
    assert _target(RunConfig.model_validate(base), dataset).source == "config"


def test_a_state_dict_in_fedleaks_own_names_keeps_the_datasets(tmp_path, cifar_root):
    dataset = load_dataset("cifar10", cifar_root, image_size=72)
    torch.save(create_model("resnet18", 10, 3, 72, width=0.125, seed=3).state_dict(), tmp_path / "own.pt")
    config = RunConfig.model_validate({"data": {"name": "cifar10", "root": str(cifar_root), "image_size": 72},
                                       "model": {"name": "resnet18", "width": 0.125, "checkpoint": str(tmp_path / "own.pt")}})
    assert _target(config, dataset).source == "dataset"


def test_resolve_normalization_checks_the_channel_count():
    evidence = Evidence(channels=1, dataset=((0.5,), (0.2,)), configured=((0.5,) * 3, (0.2,) * 3))
    with pytest.raises(ConfigError, match="config's normalisation has 3 value.*1 channel"):
        resolve_normalization(evidence)
    evidence = Evidence(channels=3, dataset=((0.5,) * 3, (0.2,) * 3), module=Declared(mean=(0.5,) * 3, std=(0.0,) * 3))
    with pytest.raises(ConfigError, match="model's normalisation: every std must be positive"):
        resolve_normalization(evidence)
    evidence = Evidence(channels=3, dataset=((0.5,) * 3, (0.2,) * 3), module=Declared(mean="grey", std=(0.2,) * 3))
    with pytest.raises(ConfigError, match="model's mean must be a number"):
        resolve_normalization(evidence)


# ------------------------------------------------------------------------- config keys and the CLI

@pytest.mark.parametrize("flags", [
    {"model.mean": "0.5,0.5,0.5", "model.std": "0.5,0.5,0.5"},
    {"model.mean": [0.5, 0.5, 0.5], "model.std": [0.5, 0.5, 0.5]},
    {"model.mean": 0.5, "model.std": 0.5},
])
def test_config_mean_and_std_forms(flags):
    config = build_config(flags=flags)
    assert len(config.model.mean) == len(config.model.std) in (1, 3)
    assert set(config.model.mean) == {0.5}


@pytest.mark.parametrize("args, message", [
    (["--mean", "0.5,0.5,0.5"], "together"),
    (["--std", "0.5,0.5,0.5"], "together"),
    (["--mean", "0.5,0.5", "--std", "0.5,0.5"], "one value per channel"),
    (["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5"], "one value per channel"),
    (["--mean", "0.5,0.5,0.5", "--std", "0.5,0,0.5"], "positive"),
    (["--mean", "0.5,0.5,0.5", "--std", "0.5,-1,0.5"], "positive"),
    (["--mean", "nan,0.5,0.5", "--std", "0.5,0.5,0.5"], "finite"),
    (["--mean", "0.5,inf,0.5", "--std", "0.5,0.5,0.5"], "finite"),
    (["--mean", "a,b,c", "--std", "0.5,0.5,0.5"], "valid number"),
    (["--mean", "0.5", "--std", "0.5"], "1 value(s) per statistic but the images have 3 channel(s)"),
    (["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--channels", "1"], "data.channels is 1"),
])
def test_bad_mean_or_std_is_one_line_exit_2(args, message, tmp_path, monkeypatch, capsys):
    code, out, err = fedleak(monkeypatch, capsys, "attack", "--set", "data.image_size=8", "--model", "lenet",
                             "--iterations", "1", "-q", "--out", str(tmp_path / "run"), *args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("fedleak: error: ") and message in err
    assert not (tmp_path / "run").exists()


def test_the_chosen_normalisation_is_recorded(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--set", "data.image_size=8", "--model", "lenet",
                           "--iterations", "2", "-q", "--out", str(out), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3, "source": "config"}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["mean"] == [0.5] * 3 and config["model"]["std"] == [0.25] * 3


def test_the_datasets_normalisation_is_written_into_config_yaml_and_reproduces(tmp_path, monkeypatch, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--set", "data.image_size=8", "--model", "lenet",
                           "--iterations", "2", "-q", "--out", str(first), "--set", "client.seed=1")
    assert code == 0, err
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["normalization"]["source"] == "dataset"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "-c", str(first / "config.yaml"), "-q", "--out", str(again))
    assert code == 0, err
    repeated = json.loads((again / "metrics.json").read_text())
    assert repeated["normalization"] == {**metrics["normalization"], "source": "config"}
    assert repeated["psnr"] == metrics["psnr"]


def test_run_keys_ignore_an_unset_normalisation():
    plain = RunSpec(config=build_config(flags={"model.name": "lenet"}).model_dump(mode="json"))
    assert "mean" not in plain.identity()["config"]["model"] and "std" not in plain.identity()["config"]["model"]
    set_ = RunSpec(config=build_config(flags={"model.name": "lenet", "model.mean": 0.5, "model.std": 0.5}
                                       ).model_dump(mode="json"))
    assert set_.identity()["config"]["model"]["mean"] == [0.5] and set_.key != plain.key


def test_docs_list_every_card():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    for name in MODELS.names():
        card = card_of(name)
        row = next(line for line in text.splitlines() if line.startswith("|") and f"`{name}`" in line)
        assert card.size_text() in row and card.dataset.split()[0] in row
