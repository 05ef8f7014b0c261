"""Bad data, loader options and prior metadata: each is one `fedleak: error:` line and exit 2."""

import gzip
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedleak.attacks.restoration_prior import PRIOR_KEY, RestorationNet, load_prior
from fedleak.errors import FedleakError
from fedleak.models.checkpoint import save_tensors
from tests.conftest import write_idx
from tests.test_cli import fedleak
from tests.test_security import one_error_line


def attack_fails(tmp_path, monkeypatch, capsys, *args) -> str:
    """Run `fedleak attack` with ``args``; return its one error line (nothing may be written)."""
    code, _, err = fedleak(monkeypatch, capsys, "attack", *args, "--iterations", "1", "--out",
                           str(tmp_path / "run"), "-q")
    line = one_error_line(code, err)
    assert not (tmp_path / "run").exists()
    return line


# --- MNIST ---------------------------------------------------------------------------------------

def _images(n=4):
    return np.zeros((n, 28, 28), np.uint8)


MNIST_CASES = {
    "label ≥ 10": (lambda raw: write_idx(raw / "t10k-labels-idx1-ubyte", np.array([0, 1, 10, 2]), gz=False),
                   "label 10 is out of range for 10 classes"),
    "wrong magic": (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x0d\x03" + bytes(12)),
                    "is not an IDX file of unsigned bytes"),
    "empty file": (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(b""), "is not an IDX file"),
    "truncated header": (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + bytes(4)),
                         "is truncated (header)"),
    "truncated data": (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(
        (raw / "t10k-images-idx3-ubyte").read_bytes()[:-5]), "bytes of data, expected"),
    "huge declared shape": (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(
        b"\0\0\x08\x03" + b"\xff\xff\xff\xff" * 3 + bytes(8)), "bytes of data, expected"),
    "no images": (lambda raw: (write_idx(raw / "t10k-images-idx3-ubyte", _images(0), gz=False),
                               write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(0), gz=False)),
                  "hold no image"),
    "2-d labels": (lambda raw: write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros((4, 1)), gz=False),
                   "do not match"),
    "corrupt gzip": (lambda raw: (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bgarbage"),
                     "cannot read"),
    "broken deflate stream": (lambda raw: (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(bytes(100))[:10] + b"\xff" * 20), "cannot read"),
}


@pytest.mark.parametrize("case", list(MNIST_CASES))
def test_bad_mnist_files(tmp_path, monkeypatch, capsys, case):
    raw = tmp_path / "data"
    raw.mkdir()
    write_idx(raw / "t10k-images-idx3-ubyte", _images(), gz=False)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3]), gz=False)
    mutate, message = MNIST_CASES[case]
    if "gzip" in case or "deflate" in case:
        (raw / "t10k-labels-idx1-ubyte").unlink()
    mutate(raw)
    assert message in attack_fails(tmp_path, monkeypatch, capsys, "--dataset", "mnist", "--root", str(raw))


# --- CIFAR ---------------------------------------------------------------------------------------

def _batch(n=2, **change):
    batch = {"data": np.zeros((n, 3072), np.uint8), "labels": list(range(n))}
    batch.update(change)
    return {k: v for k, v in batch.items() if v is not None}


CIFAR_CASES = {
    "labels an int": (_batch(labels=5), "'labels' should be a list of integers, got int"),
    "labels strings": (_batch(labels=["a", "b"]), "'labels' should be a list of integers"),
    "negative label": (_batch(labels=[-1, 0]), "label -1 is out of range for 10 classes"),
    "label ≥ classes": (_batch(labels=[0, 10]), "label 10 is out of range for 10 classes"),
    "no images": (_batch(0), "holds no images"),
    "too few labels": (_batch(labels=[0]), "1 'labels' for 2 images"),
    "no data": (_batch(data=None), "has no 'data'"),
    "no labels": (_batch(labels=None), "has no 'labels'"),
    "data of wrong shape": (_batch(data=np.zeros((2, 100), np.uint8)), "should be a uint8 N×3072 array, got uint8"),
    "data of wrong dtype": (_batch(data=np.zeros((2, 3072), np.float32)), "got float32"),
    "data as bytes": (_batch(data=b"\0" * 3072), "got bytes"),
    "not a dict": ([1, 2, 3], "does not hold a dict"),
    "empty file": (b"", "cannot read CIFAR batch"),
    "truncated pickle": (pickle.dumps(_batch(), protocol=2)[:50], "cannot read CIFAR batch"),
    "garbage": (b"\x80\x02garbage", "cannot read CIFAR batch"),
}
META_CASES = {
    "no class names": ({"num_vis": 3072}, "'label_names' should be a non-empty list of class names"),
    "class names an int": ({"label_names": 10}, "'label_names' should be a non-empty list"),
    "empty class names": ({"label_names": []}, "'label_names' should be a non-empty list"),
}


def _cifar(tmp_path: Path, batch, meta) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    raw = batch if isinstance(batch, bytes) else pickle.dumps(batch)
    (folder / "test_batch").write_bytes(raw)
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return tmp_path


NAMES = {"label_names": [f"c{i}" for i in range(10)]}
ALL_CIFAR = {**{case: (batch, NAMES, message) for case, (batch, message) in CIFAR_CASES.items()},
             **{case: (_batch(), meta, message) for case, (meta, message) in META_CASES.items()}}


@pytest.mark.parametrize("case", list(ALL_CIFAR))
def test_bad_cifar_batches(tmp_path, monkeypatch, capsys, case):
    batch, meta, message = ALL_CIFAR[case]
    root = _cifar(tmp_path, batch, meta)
    assert message in attack_fails(tmp_path, monkeypatch, capsys, "--dataset", "cifar10", "--root", str(root))


def test_cifar_labels_as_an_integer_array_load(tmp_path):
    from fedleak.data import load_dataset

    root = _cifar(tmp_path, _batch(labels=np.array([3, 4])), NAMES)
    assert load_dataset("cifar10", root).labels.tolist() == [3, 4]


# --- image folders -------------------------------------------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` grey pixels but holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(16))) + chunk(b"IEND", b"")


def _good_png(path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


FOLDER_CASES = {
    "decompression bomb": (png_header(30000, 30000), "exceeds limit"),
    "over the warning limit": (png_header(10000, 10000), "exceeds limit"),
    "garbage": (b"not a png", "cannot read image"),
    "empty file": (b"", "cannot read image"),
    "truncated": (png_header(8, 8)[:40], "cannot read image"),
}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_bad_images_in_a_folder_are_named(tmp_path, monkeypatch, capsys, case):
    root = tmp_path / "faces"
    for person in ("a", "b"):
        (root / person).mkdir(parents=True)
    content, message = FOLDER_CASES[case]
    (root / "a" / "0.png").write_bytes(content)
    _good_png(root / "b" / "0.png")
    line = attack_fails(tmp_path, monkeypatch, capsys, "--dataset", "folder", "--root", str(root))
    assert message in line and "0.png" in line


@pytest.mark.parametrize("layout", ["empty class folders", "images but no class folders", "nothing"])
def test_folder_without_images(tmp_path, monkeypatch, capsys, layout):
    root = tmp_path / "faces"
    root.mkdir()
    if layout == "empty class folders":
        (root / "a").mkdir()
        (root / "a" / "notes.txt").write_text("x")
    elif layout == "images but no class folders":
        _good_png(root / "0.png")
    line = attack_fails(tmp_path, monkeypatch, capsys, "--dataset", "folder", "--root", str(root))
    assert "no class sub-folders with images" in line


# --- loader options ------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, option, message", [
    ("samples", "nosuch=1", "dataset 'samples' has no option 'nosuch' (options: subset)"),
    ("samples", "subset=1", "dataset 'samples' option 'subset' must be str, got 1"),
    ("mnist", "subset=faces", "dataset 'mnist' has no option 'subset' (options: none)"),
    ("folder", "square=[1]", "dataset 'folder' option 'square' must be bool or null, got [1]"),
])
def test_unknown_or_wrong_typed_loader_options(tmp_path, monkeypatch, capsys, dataset, option, message):
    line = attack_fails(tmp_path, monkeypatch, capsys, "--dataset", dataset, "--root", str(tmp_path),
                        "--set", f"data.options.{option}")
    assert message in line


# --- restoration priors --------------------------------------------------------------------------

GOOD_PRIOR = {"channels": 3, "scale": 2, "width": 4, "depth": 3}
BAD_PRIORS = [
    ({"width": "32"}, "field 'width' must be an integer from 1 to 1024, got '32'"),
    ({"width": 0}, "field 'width' must be an integer"),
    ({"width": 10**9}, "field 'width' must be an integer"),
    ({"width": 4.0}, "field 'width' must be an integer"),
    ({"depth": "3"}, "field 'depth' must be an integer from 2 to 256"),
    ({"channels": 2}, "field 'channels' must be 1 or 3"),
    ({"scale": 0}, "field 'scale' must be an integer from 1 to 64"),
    ({"noise": "x"}, "field 'noise' must be a number"),
    ({"validation": [1]}, "field 'validation' must be an object of numbers"),
    ({"image_size": "8"}, "field 'image_size' must be an integer from 0 to 4096"),
    ({"evil": 1}, "unknown field 'evil'"),
]


def _prior(path: Path, metadata) -> Path:
    net = RestorationNet(3, 4, 3)
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    return save_tensors(path, net.state_dict(), {PRIOR_KEY: text})


@pytest.mark.parametrize("change, message", BAD_PRIORS, ids=[m for _, m in BAD_PRIORS])
def test_bad_prior_metadata(tmp_path, change, message):
    with pytest.raises(FedleakError, match=message.replace("(", r"\(")) as info:
        load_prior(_prior(tmp_path / "p.safetensors", {**GOOD_PRIOR, **change}))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("change", [{"width": 1024}, {"depth": 256}])
def test_prior_metadata_cannot_ask_for_a_network_larger_than_its_weights(tmp_path, change):
    with pytest.raises(FedleakError, match="the metadata does not match the weights"):
        load_prior(_prior(tmp_path / "p.safetensors", {**GOOD_PRIOR, **change}))


@pytest.mark.parametrize("metadata, message", [
    ("{broken", "unreadable metadata"),
    ("[1]", "metadata is not a JSON object"),
    (json.dumps({"channels": 3}), "missing field 'scale'"),
])
def test_unreadable_prior_metadata(tmp_path, metadata, message):
    with pytest.raises(FedleakError, match=message):
        load_prior(_prior(tmp_path / "p.safetensors", metadata))


def test_broken_prior_through_the_cli(tmp_path, monkeypatch, capsys):
    prior = _prior(tmp_path / "p.safetensors", {**GOOD_PRIOR, "width": "32"})
    line = attack_fails(tmp_path, monkeypatch, capsys, "--attack", "rog", "--prior", str(prior),
                        "--set", "data.image_size=8", "--model", "lenet", "--threat", "E")
    assert "field 'width' must be an integer" in line


def test_valid_prior_metadata_loads(tmp_path):
    prior = load_prior(_prior(tmp_path / "p.safetensors", {**GOOD_PRIOR, "image_size": [8, 12],
                                                            "validation": {"prior_psnr": 20.5}}))
    assert prior.info.width == 4 and prior(torch.rand(1, 3, 4, 4), (8, 8)).shape == (1, 3, 8, 8)
