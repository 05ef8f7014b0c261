"""The malicious-server figure (issue #23, 2c): the closed-form share of a client's examples that
Robbing the Fed's imprint recovers exactly, checked by running fedleak's real imprint modification and
attack on random images, and the formula's limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedleak.attacks import build_attack
from fedleak.attacks.base import AttackerKnowledge
from fedleak.attacks.imprint import imprint_block
from fedleak.attacks.imprint_yield import (
    bin_probabilities,
    bins_for_share,
    block_measurement,
    imprint_parameters,
    imprint_share,
    imprint_yield,
)
from fedleak.data import ImageDataset
from fedleak.data.normalization import Normalization
from fedleak.errors import FedleakError
from fedleak.fl.client import Client
from fedleak.fl.payload import ClientData, ClientTraining
from fedleak.fl.server import ServerContext, parse_modification
from fedleak.models import create_model

SHAPE = (3, 8, 8)
NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def random_dataset(count: int, seed: int) -> ImageDataset:
    images = torch.rand(count, *SHAPE, generator=torch.Generator().manual_seed(seed))
    return ImageDataset(name="random", labels=torch.arange(count) % 10, classes=[str(i) for i in range(10)],
                        mean=NORM.mean, std=NORM.std, read=lambda i: images[i], image_shape=SHAPE)


def imprint_round(examples: int, bins: int, seed: int):
    """A FedSGD round of ``examples`` random images through fedleak's imprint modification (its
    thresholds at the quantiles of 1,000 public random images) and the imprint attack: the number of
    images recovered exactly (every pixel within 1e-4) and the sent block."""
    public = random_dataset(1000, 10_000 + seed)
    context = ServerContext(input_shape=SHAPE, num_classes=10, mean=NORM.mean, std=NORM.std, seed=seed,
                            public=lambda split: public)
    sent = parse_modification(f"imprint:bins={bins}").modify(create_model("mlp", 10, 3, 8, width=0.125, seed=seed),
                                                             context)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(examples, *SHAPE, generator=g)
    labels = torch.randint(10, (examples,), generator=g)
    payload = Client(sent, NORM, ClientTraining(), seed=seed).update(ClientData(images, labels))
    knowledge = AttackerKnowledge(architecture=sent, input_shape=SHAPE, num_classes=10, mean=NORM.mean, std=NORM.std)
    found = build_attack("imprint").run(payload, knowledge).images
    error = (images.flatten(1)[:, None, :] - found.flatten(1)[None, :, :]).abs().amax(-1)  # original × recon
    return int((error.min(1).values < 1e-4).sum()), imprint_block(sent)[1]


@pytest.mark.parametrize("examples,bins", [(8, 16), (32, 32), (64, 16)])
def test_the_closed_form_matches_exact_recoveries_of_the_real_attack(examples, bins):
    """Summed over 8 seeds: the observed exact recoveries lie within 4 standard deviations (the exact
    occupancy variance) of the formula at the block's own thresholds, with the bin probabilities of
    the client's measurement taken from 20,000 further random images, and near (B/(B+1))^N."""
    observed, expected, variance, closed = 0, 0.0, 0.0, 0.0
    sample = random_dataset(20_000, 99).images(range(20_000))
    for seed in range(8):
        exact, block = imprint_round(examples, bins, seed)
        measured, thresholds = block_measurement(block.encoder.weight, block.encoder.bias, NORM.to_input(sample))
        y = imprint_yield(examples, thresholds.numpy(), measured.numpy())
        observed, expected, variance = observed + exact, expected + y.count, variance + y.std**2
        closed += examples * imprint_share(examples, bins)
    assert abs(observed - expected) <= 4 * math.sqrt(variance) + 1, (observed, expected, math.sqrt(variance))
    assert abs(observed - closed) <= 4 * math.sqrt(variance) + 0.05 * closed + 1, (observed, closed)


def test_the_formulas_limits():
    assert imprint_share(1, 16) == pytest.approx(16 / 17)  # only the untracked lower tail is lost
    in_range = np.linspace(0.1, 0.9, 101)
    assert imprint_share(1, np.array([0.0, 0.5]), in_range) == pytest.approx(1.0)  # in range: always exact
    assert imprint_share(2000, 16) < 1e-40  # N ≫ bins: every bin shared
    assert imprint_share(64, 64) == pytest.approx((64 / 65) ** 64)  # ≈ 1/e at N = B
    assert imprint_share(100, 100_000) > 0.99
    y = imprint_yield(1, 16)
    assert y.count == pytest.approx(16 / 17) and y.std == pytest.approx(math.sqrt(16 / 17 * (1 / 17)))
    assert imprint_yield(32, 32, input_shape=SHAPE).parameters == imprint_parameters(32, SHAPE) == 2 * 192 * 32 + 32


def test_the_share_is_a_monte_carlo_occupancy_average():
    """Independent check of the general form on unequal bins: throw N examples into bins with the
    given probabilities many times and count singletons of bins 1 … B."""
    p = np.array([0.2, 0.1, 0.3, 0.25, 0.15])  # I_0 first
    rng = np.random.default_rng(0)
    draws = rng.choice(len(p), size=(40_000, 6), p=p)
    counts = np.stack([(draws == j).sum(1) for j in range(len(p))], 1)
    singles = (counts[:, 1:] == 1).sum(1)
    y = imprint_yield(6, np.array([0.0, 1.0, 2.0, 3.0]), np.repeat([-1.0, 0.5, 1.5, 2.5, 3.5], (p * 1000).astype(int)))
    assert singles.mean() == pytest.approx(y.count, abs=0.02)
    assert singles.std() == pytest.approx(y.std, abs=0.02)


def test_bins_a_server_would_choose():
    for n, share in [(1, 0.5), (10, 0.9), (500, 0.5), (800, 0.99)]:
        b = bins_for_share(n, share)
        assert imprint_share(n, b) >= share and (b == 1 or imprint_share(n, b - 1) < share)
    with pytest.raises(FedleakError):
        bins_for_share(10, 1.0)


def test_bin_probabilities_follow_the_blocks_firing_rule():
    """A measurement equal to a threshold does not fire that row (ReLU(0) passes no gradient)."""
    p = bin_probabilities(np.array([1.0, 2.0]), np.array([0.5, 1.0, 1.5, 2.0, 2.5]))
    assert p.tolist() == [0.4, 0.4, 0.2]
    with pytest.raises(FedleakError):
        imprint_share(0, 16)
    with pytest.raises(FedleakError):
        imprint_share(4, np.array([1.0]))  # thresholds without a measurement sample
