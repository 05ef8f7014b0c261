"""The realistic Flower example's task module (examples/flower_realistic): each client's CIFAR-10
shard is its own (disjoint, ≥ 500 images, the labels of data_batch_1 at those positions), its loader
reshuffles every epoch, and the model class reaches the audit's spawned worker (it pickles by path)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar-10-batches-py"
pytestmark = pytest.mark.skipif(not (DATA / "data_batch_1").is_file(), reason=f"no CIFAR-10 at {DATA}")

sys.path.insert(0, str(ROOT / "examples" / "flower_realistic"))
from flower_realistic import task  # noqa: E402  (the example is no package of the project)

CONFIG = {"data-root": str(DATA), "examples-per-client": 500, "partition-seed": 0}
CLIENTS = 10


def test_shards_are_disjoint_full_and_match_the_file():
    with (DATA / "data_batch_1").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    pixels = np.asarray(raw[b"data"], dtype=np.uint8)
    seen: set[int] = set()
    for client in range(CLIENTS):
        index = task.shard_indices(client, CLIENTS, 500, len(raw[b"labels"]), seed=0)
        assert len(set(index.tolist())) == 500 and not seen & set(index.tolist())
        seen |= set(index.tolist())
        images, labels = task.client_data(CONFIG, client, CLIENTS)
        assert images.shape == (500, 3, 32, 32) and 0.0 <= images.min() and images.max() <= 1.0
        assert labels.tolist() == [raw[b"labels"][i] for i in index.tolist()]
        first = int(index[0])  # the image itself, decoded independently of the task module
        assert torch.equal((images[0] * 255).round().to(torch.uint8).flatten(), torch.from_numpy(pixels[first]))
    assert len(seen) == CLIENTS * 500


def test_too_many_clients_for_the_file_is_refused():
    with pytest.raises(ValueError, match="exceed"):
        task.shard_indices(0, 21, 500, 10_000, seed=0)


def test_the_loader_reshuffles_every_epoch_in_minibatches_of_32():
    images, labels = torch.rand(100, 3, 32, 32), torch.arange(100)
    loader = task.train_loader(images, labels, batch_size=32)
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    assert [len(y) for _, y in loader] == [32, 32, 32, 4]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(100))
    assert epochs[0].tolist() != list(range(100)) and epochs[0].tolist() != epochs[1].tolist()


def test_the_model_pickles_by_module_path_and_trains_in_train_mode():
    model = task.build_model()
    again = pickle.loads(pickle.dumps(model))
    assert type(again).__module__ == "flower_realistic.task"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert torch.equal(task.build_model().classifier.weight, model.classifier.weight)  # seeded
    images, labels = task.client_data(CONFIG, 0, CLIENTS)
    before = model.features[1].running_mean.clone()
    task.train(model, task.train_loader(images[:64], labels[:64], 32), epochs=1, lr=0.01, momentum=0.9,
               weight_decay=5e-4)
    assert not torch.equal(before, model.features[1].running_mean)  # batch norm ran in train mode
