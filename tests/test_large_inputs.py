"""Folder datasets at 128 and 224 px attacked end to end through the command line (generated PNGs:
non-square sources, grey and colour), ImageNet-layout checkpoints at 224 px, ORL at 128 px, and
the image grids that must not grow with the image side."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fedleak.data import load_dataset
from fedleak.models import create_model
from fedleak.models.cards import IMAGENET_MEAN, IMAGENET_STD
from fedleak.images import image_grid, upscale

from tests.foreign_layouts import foreign_state
from tests.test_cli import fedleak

SMALL = ["--model", "resnet18", "--width", "0.125", "--iterations", "2", "-q", "--device", "cpu"]


@pytest.fixture
def photos(tmp_path):
    """Two classes of PNGs in several sizes, landscape and portrait, colour and grey."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    shapes = [(150, 200), (240, 180), (97, 131)]
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            yy, xx = np.mgrid[0:h, 0:w]
            smooth = np.stack([(xx / w), (yy / h), ((xx + yy) / (h + w))], -1) * 200
            a = (smooth + rng.integers(0, 55, size=(h, w, 3))).astype(np.uint8)
            image = Image.fromarray(a)
            (image.convert("L") if i == 2 else image).save(root / c / f"{i}.png")
    return root


def _attack(monkeypatch, capsys, out, *args):
    code, stdout, err = fedleak(monkeypatch, capsys, "attack", "--out", str(out), *SMALL, *args)
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text()), yaml.safe_load((out / "config.yaml").read_text())


@pytest.mark.parametrize("side", [128, 224])
def test_folder_attack_at_paper_scale(side, photos, tmp_path, monkeypatch, capsys):
    out = tmp_path / f"run{side}"
    metrics, config = _attack(monkeypatch, capsys, out, "--dataset", "folder", "--root", str(photos),
                              "--image-size", str(side), "--channels", "3")
    assert metrics["iterations"] == 2 and np.isfinite(metrics["psnr"]) and len(metrics["images"]) == 1
    assert config["data"]["image_size"] == side and config["model"]["name"] == "resnet18"
    assert metrics["normalization"]["source"] == "dataset" and len(metrics["normalization"]["mean"]) == 3
    with Image.open(out / "reconstruction.png") as im:  # original over reconstruction, drawn 1:1 at this size
        assert im.size == (2 + side + 2, 2 + 2 * (side + 2))
    dataset = load_dataset("folder", photos, image_size=side, channels=3)
    assert dataset.image_shape == (3, side, side) and len(dataset) == 6


def test_non_square_target_size_and_grey(photos, tmp_path, monkeypatch, capsys):
    metrics, config = _attack(monkeypatch, capsys, tmp_path / "wide", "--dataset", "folder", "--root", str(photos),
                              "--set", "data.image_size=[96,128]", "--channels", "1")
    assert config["data"]["image_size"] == [96, 128] and config["data"]["channels"] == 1
    assert len(metrics["normalization"]["mean"]) == 1
    with Image.open(tmp_path / "wide" / "reconstruction.png") as im:
        assert im.size == (2 + 128 + 2, 2 + 2 * (96 + 2))
    dataset = load_dataset("folder", photos, image_size=(96, 128), channels=1)
    assert dataset.image_shape == (1, 96, 128)


def test_square_size_crops_the_centre_of_non_square_sources(photos):
    # a 150×200 source at 128 px: the centred 150×150 square, resized (not squashed)
    dataset = load_dataset("folder", photos, image_size=128, channels=3)
    source = np.asarray(Image.open(photos / "cat" / "0.png").convert("RGB"), dtype=np.float32) / 255
    crop = torch.from_numpy(source[:, 25:175]).permute(2, 0, 1)
    expected = torch.nn.functional.interpolate(crop[None], size=(128, 128), mode="bilinear", antialias=True,
                                               align_corners=False)[0]
    assert torch.allclose(dataset.image(0), expected.clamp(0, 1), atol=1e-5)


def test_mixed_grey_and_colour_without_channels_is_one_line(photos, tmp_path, monkeypatch, capsys):
    code, out, err = fedleak(monkeypatch, capsys, "attack", "--dataset", "folder", "--root", str(photos),
                             "--image-size", "128", *SMALL, "--out", str(tmp_path / "run"))
    assert code == 2 and len(err.splitlines()) == 1 and "--channels 3" in err


def test_imagenet_checkpoint_at_224_uses_the_cards_normalisation(photos, tmp_path, monkeypatch, capsys):
    source = create_model("resnet18", 2, 3, 224, width=0.125, seed=5)
    torch.save(foreign_state(source, "resnet18"), tmp_path / "tv.pt")  # torchvision's names
    metrics, config = _attack(monkeypatch, capsys, tmp_path / "run", "--dataset", "folder", "--root", str(photos),
                              "--image-size", "224", "--channels", "3", "--checkpoint", str(tmp_path / "tv.pt"))
    assert metrics["normalization"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "source": "card"}
    assert config["model"]["mean"] == list(IMAGENET_MEAN) and config["model"]["std"] == list(IMAGENET_STD)


def test_study_images_are_drawn_at_their_size(photos, tmp_path):
    from fedleak.config import build_config
    from fedleak.pipeline import run
    from fedleak.modalities.image import image_files

    config = build_config(flags={"data.name": "folder", "data.root": str(photos), "data.image_size": 128,
                                 "data.channels": 3, "model.name": "resnet18", "model.width": 0.125,
                                 "attack.iterations": 1, "device": "cpu"})
    result = run(config)
    files = image_files(result.truth, result.reconstruction, result.evaluation)
    assert set(files) == {"original-0.png", "reconstruction-0.png"}
    import io

    with Image.open(io.BytesIO(files["reconstruction-0.png"])) as im:
        assert im.size == (128, 128)


@pytest.mark.parametrize("side, factor", [(8, 4), (28, 4), (32, 4), (64, 2), (112, 1), (128, 1), (224, 1)])
def test_grid_upscale(side, factor):
    assert upscale(side, side) == factor
    grid = image_grid([torch.rand(2, 3, side, side)], pad=0)
    assert grid.size == (2 * side * factor, side * factor)
    assert image_grid([torch.rand(1, 1, side, side)], scale=3, pad=0).size == (3 * side, 3 * side)  # explicit wins


def test_orl_faces_at_128(shared_data, tmp_path, monkeypatch, capsys):
    metrics, config = _attack(monkeypatch, capsys, tmp_path / "orl", "--dataset", "folder",
                              "--root", str(shared_data / "orl_faces"), "--image-size", "128", "--index", "0")
    assert config["data"]["image_size"] == 128 and np.isfinite(metrics["psnr"])
    assert len(metrics["normalization"]["mean"]) == 1  # grey faces
    dataset = load_dataset("folder", shared_data / "orl_faces", image_size=128)
    assert dataset.image_shape == (1, 128, 128) and len(dataset) == 400 and dataset.num_classes == 40


def test_an_image_outside_the_statistics_sample_is_checked_when_read(tmp_path, monkeypatch, capsys):
    # regression: only a sample of a large folder was checked, so a grey file elsewhere in a colour folder
    # reached the model (an internal error) instead of the one-line advice
    import fedleak.data.folder as folder

    monkeypatch.setattr(folder, "_STATS_SAMPLE", 2)
    root = tmp_path / "big"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(5):
        image = Image.fromarray(rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8))
        (image.convert("L") if i == 1 else image).save(root / "a" / f"{i}.png")
    dataset = load_dataset("folder", root)  # the sample (files 0 and 4) is colour
    from fedleak.errors import DataError

    with pytest.raises(DataError, match="1.png has 1 channel"):
        dataset.image(1)
    assert load_dataset("folder", root, channels=3).image(1).shape == (3, 20, 20)
    code, out, err = fedleak(monkeypatch, capsys, "attack", "--dataset", "folder", "--root", str(root),
                             "--index", "1", "--model", "lenet", "--iterations", "1", "-q", "--out", str(tmp_path / "r"))
    assert code == 2 and len(err.splitlines()) == 1 and "--channels 3" in err


@pytest.mark.gpu
def test_folder_attack_at_224_on_cuda_matches_the_cpu(photos, tmp_path, monkeypatch, capsys):
    runs = {}
    for device in ("cpu", "cuda"):
        code, _, err = fedleak(monkeypatch, capsys, "attack", "--dataset", "folder", "--root", str(photos),
                               "--image-size", "224", "--channels", "3", *SMALL[:-1], device,
                               "--set", "client.seed=1", "--out", str(tmp_path / device))
        assert code == 0, err
        runs[device] = json.loads((tmp_path / device / "metrics.json").read_text())
    assert runs["cuda"]["device"].startswith("cuda")
    assert runs["cuda"]["normalization"] == runs["cpu"]["normalization"]
    assert runs["cuda"]["psnr"] == pytest.approx(runs["cpu"]["psnr"], abs=0.5)
