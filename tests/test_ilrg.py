"""iLRG label counts (Ma et al., ICLR 2023) and ``auto``'s choice of it, against autograd gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedleak.attacks.labels import LABEL_METHODS, ilrg_applies, ilrg_condition, ilrg_counts, wainakh
from fedleak.errors import FedleakError
from fedleak.fl.payload import ClientTraining, Payload

LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 4, 5, 5]  # class 3 absent, the others repeated


def _payload(labels, classes=6, width=32, inputs=16, seed=0, same_input=False, logit_scale=1.0,
             training=ClientTraining(), bias=True):
    """A two-layer ReLU MLP's mean cross-entropy gradient on random inputs, by torch.autograd."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, classes, bias=bias))
    with torch.no_grad():
        for p in net[2].parameters():
            p.mul_(logit_scale)
    y = torch.tensor(labels)
    x = torch.rand(1, inputs, generator=g).repeat(len(y), 1) if same_input else torch.rand(len(y), inputs, generator=g)
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    update = {n: t.detach() for (n, _), t in zip(net.named_parameters(), grads)}
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return Payload(model_state=state, update=update, hyper=training.public(len(y)))


def _truth(labels, classes=6):
    return torch.bincount(torch.tensor(labels), minlength=classes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ilrg_counts_repeated_labels_exactly(seed):
    payload = _payload(LABELS, seed=seed)
    assert torch.equal(ilrg_counts(payload, 6), _truth(LABELS))
    assert LABEL_METHODS.get("ilrg")(payload, 6).tolist() == sorted(LABELS)


def test_ilrg_exact_when_every_image_shares_its_embedding():
    """One input under several labels, confident logits: the mean-embedding fit is exact."""
    labels = [0, 1, 1, 1, 3, 3, 5, 5]
    payload = _payload(labels, same_input=True, logit_scale=20.0)
    assert torch.equal(ilrg_counts(payload, 6), _truth(labels))


def test_auto_picks_ilrg_where_it_applies():
    payload = _payload(LABELS, seed=1)  # B = 12 ≤ d = 32, FedSGD, a biased classifier
    assert ilrg_applies(payload, 6)
    assert LABEL_METHODS.get("auto")(payload, 6).tolist() == sorted(LABELS)
    assert wainakh(payload, 6).tolist() != sorted(LABELS)  # where iLRG is better than the fallback


def test_auto_falls_back_to_wainakh_for_batches_wider_than_the_features():
    labels = [k % 6 for k in range(40)]
    payload = _payload(labels, width=8)  # B = 40 > d = 8
    assert ilrg_condition(payload, 6) is None and not ilrg_applies(payload, 6)
    assert torch.equal(LABEL_METHODS.get("auto")(payload, 6), wainakh(payload, 6))


def test_auto_falls_back_for_fedavg_and_ilrg_refuses_it():
    training = ClientTraining(protocol="fedavg", lr=0.1, local_steps=2)
    payload = _payload(LABELS, training=training)  # a gradient, but declared a FedAvg update
    assert not ilrg_applies(payload, 6)
    assert torch.equal(LABEL_METHODS.get("auto")(payload, 6), wainakh(payload, 6))
    with pytest.raises(FedleakError, match=r"^iLRG label recovery does not apply: it needs a single FedSGD "
                                           r"gradient \(client.protocol=fedsgd\), this round ran fedavg"):
        LABEL_METHODS.get("ilrg")(payload, 6)


def test_ilrg_refuses_a_classifier_without_bias_and_a_noised_update():
    with pytest.raises(FedleakError, match="a final linear layer with a bias"):
        ilrg_counts(_payload(LABELS, bias=False), 6)
    payload = _payload(LABELS[:4])  # B = 4: the weight gradient's rank is at most 4
    noised = {n: t + 1e-3 * torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
              for n, t in payload.update.items()}
    noised["2.bias"] = payload.update["2.bias"]  # keep the bias sum at 0: the rank check must catch it
    bad = Payload(model_state=payload.model_state, update=noised, hyper=payload.hyper)
    assert ilrg_condition(payload, 6) is None
    with pytest.raises(FedleakError, match=r"has rank 6 > min\(B, C − 1\) = 4"):
        ilrg_counts(bad, 6)
