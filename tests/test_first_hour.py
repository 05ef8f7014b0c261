"""A new user's first hour: one default width, the default job, and the flags a first run reaches for."""

import json
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from fedleak.config import DEFAULT_JOB, build_config
from fedleak.data import load_dataset
from fedleak.modalities import build_target
from fedleak.pipeline import run
from tests.test_cli import fedleak

TINY = ["--image-size", "8", "--model", "lenet", "--iterations", "1", "-q"]


def _config(out):
    return yaml.safe_load((out / "config.yaml").read_text())


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


# Width: one default.

def test_naming_a_model_gives_the_real_model():
    config = build_config(flags={"model.name": "resnet18"})
    assert config.model.width == 1.0
    target = build_target(config, load_dataset("samples", image_size=8))
    assert target.model.stem[0].out_channels == 64  # ResNet-18's conv1, not a quarter of it


def test_the_resolved_config_shows_the_width(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(out))
    assert code == 0, err
    model = _config(out)["model"]
    assert (model["name"], model["width"]) == ("lenet", 1.0)


def test_the_default_job_is_convnet_16_on_the_camera_photo(tmp_path, monkeypatch, capsys):
    config = build_config()
    assert (config.model.name, config.model.width) == ("convnet", 0.25) == tuple(DEFAULT_JOB["model"].values())
    assert (config.data.name, config.data.index, config.client.batch_size) == ("samples", [4], 1)
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--iterations", "1", "-q", "--out", str(out))
    assert code == 0, err
    assert [i["dataset_index"] for i in _metrics(out)["images"]] == [4]
    assert load_dataset("samples").classes[4] == "camera"
    assert _config(out)["model"]["width"] == 0.25


@pytest.mark.parametrize("flags, width, index", [
    ({"model.width": 0.5}, 0.5, [4]),  # a width the user set wins
    ({"client.batch_size": 2}, 0.25, None),  # a batch: its images are drawn, not the one photo
    ({"client.defense": "aggregate:clients=2"}, 0.25, None),
    ({"data.name": "mnist"}, 0.25, None),
    ({"data.index": [1]}, 0.25, [1]),
])
def test_the_default_job_fills_in_only_what_is_left_open(flags, width, index):
    config = build_config(flags=flags)
    assert (config.model.name, config.model.width, config.data.index) == ("convnet", width, index)


def test_studies_keep_their_explicit_widths():
    from fedleak.studies import build_study
    from fedleak.studies.runner import plan

    planned = plan(build_study("tv", "cpu"))
    assert {p.config.model.width for p in planned} == {0.25}


def test_an_external_factory_keeps_its_own_width_default():
    base = ["model.name=tests.byo_models:widened", "data.image_size=8", "attack.iterations=1"]
    default = run(build_config(overrides=base))
    assert default.config.model.width is None and default.target.model.conv.out_channels == 7
    given = run(build_config(overrides=[*base, "model.width=3"]))
    assert given.target.model.conv.out_channels == 3


# First-hour flags.

def test_image_size_and_channels_flags(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--channels", "1", "--out", str(out))
    assert code == 0, err
    assert (_config(out)["data"]["image_size"], _config(out)["data"]["channels"]) == (8, 1)
    with Image.open(out / "reconstruction.png") as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()  # grey


def test_index_sets_the_batch_size(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--index", "3,7", "--known-labels", "--threat", "C",
                           "--out", str(out))
    assert code == 0, err
    assert _config(out)["client"]["batch_size"] == 2
    assert sorted(i["dataset_index"] for i in _metrics(out)["images"]) == [3, 7]


def test_index_is_shared_by_aggregated_clients():
    config = build_config(flags={"data.index": "1,2,3,4,5,6", "client.defense": "aggregate:clients=3"})
    assert config.client.batch_size == 2


@pytest.mark.parametrize("args, message", [
    (["--index", "3,7", "--batch-size", "3"], "2 image indices given for a batch of 3"),
    (["--index", "1,2,3", "--defense", "aggregate:clients=2"], "3 image indices cannot be shared by 2 clients"),
])
def test_index_and_batch_conflicts_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, *args, "--out", str(out))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_mixed_grey_and_colour_folder_names_the_channels_fix(folder_root, tmp_path, monkeypatch, capsys):
    rgb = np.random.default_rng(3).integers(0, 256, size=(14, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder_root / "s2" / "colour.png")
    out = tmp_path / "run"
    args = ["attack", "--dataset", "folder", "--root", str(folder_root), "--model", "lenet", "--iterations", "1",
            "-q", "--out", str(out)]
    code, _, err = fedleak(monkeypatch, capsys, *args)
    assert code == 2 and "--channels 3" in err and "image size" not in err
    code, _, err = fedleak(monkeypatch, capsys, *args, "--channels", "3")
    assert code == 0, err


def test_study_root_flag(tmp_path, monkeypatch, capsys, cifar_root):
    monkeypatch.delenv("FEDLEAK_DATA", raising=False)
    out = tmp_path / "tv"
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "--root", str(cifar_root), "--out", str(out), "-q",
                           "--set", "image_size=8", "--set", "model=lenet", "--set", "images=[0]",
                           "--set", "alphas=[0.0]", "--set", "attack.iterations=1")
    assert code == 0, err
    from fedleak.store import ResultsDB

    with ResultsDB(out / "results.sqlite") as db:
        assert {r.config["data"]["root"] for r in db.records()} == {str(cifar_root)}
    code, _, err = fedleak(monkeypatch, capsys, "study", "tv", "--root", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "tv2"))
    assert code == 2 and "does not exist" in err


def test_model_factory_from_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "first_hour_nets.py").write_text(
        "from torch import nn\n\n"
        "def net(num_classes, in_channels, image_size):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    # As under the console script: the current folder is not on the import path.
    path = [p for p in sys.path if p not in ("", ".", str(tmp_path))]
    monkeypatch.setattr(sys, "path", path)
    monkeypatch.delitem(sys.modules, "first_hour_nets", raising=False)
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--model", "first_hour_nets:net", "--image-size", "8",
                           "--iterations", "1", "-q", "--out", str(out))
    monkeypatch.delitem(sys.modules, "first_hour_nets", raising=False)
    assert code == 0, err
    assert sys.path == path  # added for the lookup only
    assert _config(out)["model"]["name"] == "first_hour_nets:net"
