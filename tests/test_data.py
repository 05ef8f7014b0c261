import pickle

import numpy as np
import pytest
import torch

from fedleak.data import load_dataset, pick_indices
from fedleak.data.cifar import safe_load
from fedleak.errors import ConfigError, DataError


def test_samples_photos_are_unit_range_squares():
    ds = load_dataset("samples")
    assert len(ds) == 10 and ds.num_classes == 10
    x = ds.images(range(10))
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert ds.labels.tolist() == list(range(10))
    assert len(ds.mean) == 3 and all(s > 0 for s in ds.std)


def test_samples_faces_and_size_options():
    faces = load_dataset("samples", subset="faces", image_size=16, channels=1)
    assert len(faces) == 200 and faces.classes == ["face", "non-face"]
    assert faces.images([0]).shape == (1, 1, 16, 16)
    assert faces.labels[:100].eq(0).all() and faces.labels[100:].eq(1).all()
    both = load_dataset("samples", subset="all")
    assert len(both) == 210 and both.classes[-2:] == ["face", "non-face"]
    with pytest.raises(DataError, match="subset"):
        load_dataset("samples", subset="cats")


def test_mnist_idx_gz_and_plain(mnist_root):
    test = load_dataset("mnist", mnist_root)
    assert len(test) == 12 and test.image_shape == (1, 28, 28)
    assert test.labels.tolist() == [i % 10 for i in range(12)]
    train = load_dataset("mnist", mnist_root / "MNIST" / "raw", split="train", channels=3, image_size=8)
    assert len(train) == 6 and train.images([0]).shape == (1, 3, 8, 8)
    assert train.mean == (0.1307,) * 3


def test_mnist_pixels_match_file(mnist_root):
    import gzip

    raw = gzip.decompress((mnist_root / "MNIST/raw/t10k-images-idx3-ubyte.gz").read_bytes())
    first = np.frombuffer(raw, np.uint8, offset=16)[: 28 * 28].reshape(28, 28).copy()
    ds = load_dataset("mnist", mnist_root)
    assert torch.allclose(ds.image(0)[0], torch.from_numpy(first).float() / 255)


def test_mnist_truncated_file_is_a_clear_error(mnist_root):
    path = mnist_root / "MNIST/raw/train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="holds"):
        load_dataset("mnist", mnist_root, split="train")


def test_cifar10_batches(cifar_root):
    train = load_dataset("cifar10", cifar_root, split="train")
    test = load_dataset("cifar10", cifar_root)
    assert len(train) == 20 and len(test) == 10 and train.classes[0] == "c0"
    x = train.images([3])
    assert x.shape == (1, 3, 32, 32)
    raw = safe_load(cifar_root / "cifar-10-batches-py/data_batch_1")["data"][3]
    assert torch.allclose(x[0], torch.from_numpy(raw.reshape(3, 32, 32)).float() / 255)


def test_cifar_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match="not allowed"):
        load_dataset("cifar10", tmp_path)


def test_folder_dataset(folder_root):
    ds = load_dataset("folder", folder_root)
    assert ds.classes == ["s1", "s2", "s10"]  # natural order
    assert len(ds) == 9 and ds.image_shape == (1, 14, 12)
    rgb = load_dataset("folder", folder_root, image_size=8, channels=3)
    x = rgb.images([0, 8])
    assert x.shape == (2, 3, 8, 8) and torch.equal(x[:, 0], x[:, 1])


def test_folder_mixed_sizes_need_a_size(folder_root):
    from PIL import Image

    Image.new("L", (30, 30)).save(folder_root / "s2" / "big.png")
    with pytest.raises(DataError, match="image size"):
        load_dataset("folder", folder_root)
    assert load_dataset("folder", folder_root, image_size=10).images([5]).shape == (1, 1, 10, 10)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: load_dataset("imagenet"), ConfigError, "unknown dataset 'imagenet'"),  # a name, not data
        (lambda: load_dataset("mnist"), DataError, "needs a data root"),
        (lambda: load_dataset("mnist", "/nonexistent/fedleak"), DataError, "does not exist"),
        (lambda: load_dataset("samples").image(10), DataError, "out of range"),
        (lambda: load_dataset("samples", split="val"), DataError, "unknown split 'val'"),
    ],
)
def test_bad_input_is_a_named_error(call, error, message, monkeypatch):
    monkeypatch.delenv("FEDLEAK_DATA", raising=False)
    with pytest.raises(error, match=message):
        call()


def test_pick_indices():
    ds = load_dataset("samples", subset="all")
    assert pick_indices(ds, 2, indices=[5, 7]) == [5, 7]
    a = pick_indices(ds, 4, seed=3)
    assert a == pick_indices(ds, 4, seed=3) and len(set(a)) == 4
    assert a != pick_indices(ds, 4, seed=4)
    chosen = pick_indices(ds, 4, classes=["face", "chelsea"], seed=0)
    assert [ds.classes[int(ds.labels[i])] for i in chosen] == ["face", "chelsea", "face", "face"]
    assert len(set(chosen)) == 4
    with pytest.raises(DataError, match="not enough"):
        pick_indices(ds, 3, classes=["chelsea", "coffee"])
    with pytest.raises(DataError, match="2 image indices"):
        pick_indices(ds, 1, indices=[1, 2])
    with pytest.raises(DataError, match="no class"):
        pick_indices(ds, 1, classes=["dragon"])


def test_real_datasets(shared_data):
    mnist = load_dataset("mnist", shared_data)
    assert len(mnist) == 10000 and mnist.labels.max() == 9
    cifar = load_dataset("cifar10", shared_data, split="train")
    assert len(cifar) == 10000 and cifar.classes[3] == "cat"
    orl = load_dataset("folder", shared_data / "orl_faces", image_size=32)
    assert len(orl) == 400 and orl.num_classes == 40 and orl.image_shape == (1, 32, 32)
