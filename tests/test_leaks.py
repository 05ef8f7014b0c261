"""What an audited update gives away besides images (fedleak.leaks): the malicious-server figure in
closed form, the label histogram with its error, and the histogram as a verdict's evidence."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedleak.attacks.base import AttackerKnowledge
from fedleak.fl import Client, ClientData
from fedleak.fl.payload import ClientTraining
from fedleak.leaks import HISTOGRAM_TV, IMPRINT_BINS, label_histogram_leak, malicious_server
from fedleak.verdicts import INCONCLUSIVE, LEAKS, Findings, decide


def test_the_malicious_server_figure_is_the_closed_form_and_its_bins_reach_half():
    m = malicious_server(500, (3, 32, 32))
    assert math.isclose(m.share, (IMPRINT_BINS / (IMPRINT_BINS + 1)) ** 500, rel_tol=1e-12)
    assert math.isclose(m.count, 500 * m.share, rel_tol=1e-12) and m.std > 0
    assert m.parameters == 2 * 3 * 32 * 32 * IMPRINT_BINS + IMPRINT_BINS
    b = m.bins_for_half
    assert (b / (b + 1)) ** 500 >= 0.5 > ((b - 1) / b) ** 500  # the fewest bins that recover half
    assert malicious_server(1, (3, 32, 32)).share == IMPRINT_BINS / (IMPRINT_BINS + 1)


def _knowledge(model: nn.Module) -> AttackerKnowledge:
    return AttackerKnowledge(architecture=model, input_shape=(3, 8, 8), num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_the_label_histogram_is_scored_against_the_truth_and_adam_says_why_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 4))
    labels = torch.tensor([0] * 30 + [1] * 6 + [2] * 4 + [3] * 0)
    data = ClientData(torch.rand(40, 3, 8, 8), labels)
    sgd = ClientTraining(protocol="fedavg", lr=0.05, epochs=2, local_batch_size=8, momentum=0.9, shuffle_seed=1)
    payload = Client(model, _knowledge(model).normalization, sgd, "none", seed=0).update(data)
    found = label_histogram_leak(payload, _knowledge(model), labels)
    assert found.true == [30, 6, 4, 0] and sum(found.counts) == 40
    tv = 0.5 * sum(abs(a / 40 - b / 40) for a, b in zip(found.counts, found.true))
    assert math.isclose(found.error, tv, abs_tol=1e-12) and found.error < 0.25 and found.counts[0] == max(found.counts)
    adam = ClientTraining(protocol="fedavg", lr=1e-3, epochs=1, local_batch_size=8, optimizer="adam", shuffle_seed=1)
    refused = label_histogram_leak(Client(model, _knowledge(model).normalization, adam, "none", seed=0).update(data),
                                   _knowledge(model), labels)
    assert refused.counts is None and "'adam'" in refused.reason


def test_a_recovered_histogram_is_a_leak_only_within_its_bound():
    base = dict(attack="ig", iterations=5, minimum=1000, images=500, truth_fit=0.9999, recognisable=0, label_accuracy=0.3)
    assert decide(Findings(**base, histogram_error=HISTOGRAM_TV / 2)).verdict == LEAKS
    assert "label histogram" in decide(Findings(**base, histogram_error=HISTOGRAM_TV / 2)).reason
    assert decide(Findings(**base, histogram_error=HISTOGRAM_TV * 2)).verdict == INCONCLUSIVE  # and under budget
