"""Shared fixtures: tiny synthetic datasets on disk and the optional real data in ../shared/data."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not present at {SHARED_DATA}")
    return SHARED_DATA


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    write_idx(raw / "t10k-images-idx3-ubyte.gz", images, gz=True)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels, gz=True)
    write_idx(raw / "train-images-idx3-ubyte", images[:6], gz=False)
    write_idx(raw / "train-labels-idx1-ubyte", labels[:6], gz=False)
    return tmp_path


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, n in (("data_batch_1", 20), ("test_batch", 10)):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [i % 10 for i in range(n)],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return tmp_path


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    root = tmp_path / "faces"
    for person in ("s1", "s2", "s10"):
        (root / person).mkdir(parents=True)
        for k in range(3):
            a = rng.integers(0, 256, size=(14, 12), dtype=np.uint8)
            Image.fromarray(a).save(root / person / f"{k}.pgm")
    (root / "s1" / "notes.txt").write_text("not an image")
    return root


def pytest_collection_modifyitems(config, items):
    """Every ``gpu``-marked test skips, with the reason, where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
