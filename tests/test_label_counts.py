"""Label histograms from multi-step FedAvg updates (issue #23, 2b): a client written in plain PyTorch
(shuffled DataLoader, batches of 32, SGD with momentum, epochs), the payload built from its
before/after weights, and the class counts the server recovers from it."""

from __future__ import annotations

import copy
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedleak.attacks.base import AttackerKnowledge
from fedleak.attacks.label_counts import (
    CountSettings,
    Observed,
    counts_to_labels,
    histogram_error,
    integer_counts,
    label_histogram,
    recover_label_counts,
)
from fedleak.attacks.labels import LABEL_METHODS
from fedleak.data import load_dataset
from fedleak.data.normalization import Normalization
from fedleak.errors import FedleakError
from fedleak.fl.payload import ClientTraining, Payload
from fedleak.models import create_model
from tests.conftest import SHARED_DATA

SKEW = torch.tensor([0.26, 0.18, 0.14, 0.11, 0.09, 0.07, 0.06, 0.04, 0.03, 0.02])  # a non-IID client
CIFAR = Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def client_round(model, images, labels, norm, lr=0.05, epochs=2, momentum=0.9, nesterov=False, seed=0):
    """A PyTorch client: DataLoader(shuffle=True) with its own generator, batches of 32, SGD. Returns
    the payload the server sees and, per step, the classifier bias gradient (the test's reference)."""
    start = copy.deepcopy(model.state_dict())
    loader = DataLoader(TensorDataset(norm.to_input(images), labels), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(1000 + seed))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov)
    bias = [p for n, p in model.named_parameters() if n.endswith("bias")][-1]
    grads = []
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads.append(bias.grad.detach().double().clone())
            opt.step()
    update = {n: (start[n] - p.detach()).clone() for n, p in model.named_parameters()}
    extra = {"nesterov": nesterov} if nesterov else {}
    hyper = ClientTraining(protocol="fedavg", model_mode="train", lr=lr, epochs=epochs, local_batch_size=32,
                           momentum=momentum, **extra).public(len(labels))
    return Payload(model_state=start, update=update, hyper=hyper), grads


def knowledge(model, shape, norm) -> AttackerKnowledge:
    return AttackerKnowledge(architecture=copy.deepcopy(model), input_shape=shape, num_classes=10,
                             mean=norm.mean, std=norm.std)


def skewed_labels(n: int, seed: int) -> torch.Tensor:
    counts = integer_counts(SKEW.numpy() * n, n)
    labels = counts_to_labels(counts)
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def synthetic(labels: torch.Tensor, seed: int, side: int = 16) -> torch.Tensor:
    """CIFAR-like images: a smooth colour pattern per class (fixed), per image a brightness and
    strong pixel noise, so that a small model fits them in one round about as well as CIFAR-10
    (training accuracy 0.25–0.4 after 2 epochs, not a trivially separable toy)."""
    templates = F.interpolate(torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(7)), size=side,
                              mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    shift = 0.15 * torch.randn(len(labels), 1, 1, 1, generator=g)
    noise = 0.3 * torch.randn(len(labels), 3, side, side, generator=g)
    return (0.4 * templates[labels] + 0.2 + shift + noise).clamp(0, 1)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the many small steps of a client round run fastest so on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_update_is_the_momentum_weighted_sum_of_the_clients_own_gradients():
    """S = Δ/lr = Σ_s c_s g_s exactly, against the gradients the client's loop computed (SGD with
    momentum, and Nesterov)."""
    labels = skewed_labels(100, 0)
    images = synthetic(labels, 0)
    for nesterov in (False, True):
        if nesterov and "nesterov" not in {f.name for f in fields(ClientTraining)}:
            continue
        model = create_model("lenet5", 10, 3, 16, seed=0)
        payload, grads = client_round(model, images, labels, CIFAR, epochs=3, nesterov=nesterov)
        observed = Observed.of(payload, 10)
        assert len(observed.steps.weights) == len(grads) == 12
        reference = sum(c * g for c, g in zip(observed.steps.weights, grads))
        torch.testing.assert_close(torch.from_numpy(observed.signal), reference, rtol=1e-4, atol=1e-6)


def test_label_counts_of_a_realistic_synthetic_client():
    """500 examples, 2 epochs of shuffled batches of 32, SGD momentum 0.9: the recovered histogram
    is within total variation 0.1 of the client's (issue #23's goal), and far better than a uniform
    guess."""
    labels = skewed_labels(500, 0)
    images = synthetic(labels, 0)
    model = create_model("lenet5", 10, 3, 16, seed=0)
    payload, _ = client_round(model, images, labels, CIFAR, seed=0)
    public_labels = torch.arange(2000) % 10
    public = synthetic(public_labels, 100)
    true = label_histogram(labels, 10)
    counts = recover_label_counts(payload, knowledge(model, (3, 16, 16), CIFAR), public, public_labels)
    assert counts.dtype == torch.int64 and int(counts.sum()) == 500 and (counts >= 0).all()
    error = histogram_error(counts, true)
    assert error <= 0.1, (error, counts.tolist(), true.tolist())
    assert error < 0.5 * histogram_error(torch.ones(10), true)


@pytest.fixture(scope="module")
def cifar16(shared_data_root):
    train = load_dataset("cifar10", shared_data_root, split="train", image_size=16)
    test = load_dataset("cifar10", shared_data_root, split="test", image_size=16)
    return train, test


@pytest.fixture(scope="module")
def shared_data_root():
    if not (SHARED_DATA / "cifar-10-batches-py").is_dir():
        pytest.skip(f"CIFAR-10 not present at {SHARED_DATA}")
    return SHARED_DATA


def test_label_counts_of_a_cifar_client(cifar16):
    """The same on 500 real CIFAR-10 images (16 px) drawn with the skewed class mix; public data:
    2,000 images of the test split with their labels."""
    train, test = cifar16
    g = torch.Generator().manual_seed(3)
    wanted = integer_counts(SKEW.numpy() * 500, 500)
    pools = [torch.nonzero(train.labels == k).flatten() for k in range(10)]
    idx = torch.cat([p[torch.randperm(len(p), generator=g)[: int(m)]] for p, m in zip(pools, wanted)])
    idx = idx[torch.randperm(len(idx), generator=g)].tolist()
    images, labels = train.images(idx), train.labels[idx]
    norm = Normalization(train.mean, train.std)
    model = create_model("lenet5", 10, 3, 16, seed=3)
    payload, _ = client_round(model, images, labels, norm, seed=3)
    public = list(range(2000))
    counts = recover_label_counts(payload, knowledge(model, (3, 16, 16), norm), test.images(public),
                                  test.labels[public])
    error = histogram_error(counts, label_histogram(labels, 10))
    assert error <= 0.1, (error, counts.tolist(), wanted.tolist())


def test_without_a_model_the_uniform_count_is_registered_as_a_label_method():
    labels = skewed_labels(200, 4)
    model = create_model("lenet5", 10, 3, 16, seed=4)
    payload, _ = client_round(model, synthetic(labels, 4), labels, CIFAR, epochs=1, momentum=0.0)
    recovered = LABEL_METHODS.get("counts")(payload, 10)
    assert recovered.shape == (200,) and torch.equal(recovered, recovered.sort().values)
    assert histogram_error(label_histogram(recovered, 10), label_histogram(labels, 10)) < 0.3
    with pytest.raises(FedleakError, match="architecture"):
        recover_label_counts(payload, 10, settings=CountSettings(method="simulate"))


def test_histogram_error_and_rounding():
    assert histogram_error(torch.tensor([3, 0]), torch.tensor([0, 5])) == 1.0
    assert histogram_error(torch.tensor([1, 1, 2]), torch.tensor([2, 2, 4])) == 0.0
    assert histogram_error(torch.tensor([3, 1]), torch.tensor([1, 1])) == pytest.approx(0.25)
    with pytest.raises(FedleakError):
        histogram_error(torch.tensor([1, 2]), torch.tensor([1, 2, 3]))
    counts = integer_counts([-3.0, 10.4, 20.6, 0.2], 31)
    assert counts.tolist() == [0, 10, 21, 0] and int(counts.sum()) == 31


def test_adam_updates_are_refused():
    if "optimizer" not in {f.name for f in fields(ClientTraining)}:
        pytest.skip("this ClientTraining has no optimizer field")
    labels = skewed_labels(64, 5)
    model = create_model("lenet5", 10, 3, 16, seed=5)
    payload, _ = client_round(model, synthetic(labels, 5), labels, CIFAR, epochs=1)
    hyper = ClientTraining(protocol="fedavg", lr=0.01, optimizer="adam", epochs=1,
                           local_batch_size=32).public(64)  # type: ignore[call-arg]
    with pytest.raises(FedleakError, match="linear in its gradients"):
        recover_label_counts(Payload(payload.model_state, payload.update, hyper), 10)
