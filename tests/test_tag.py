"""TAG: gradient matching over relaxed token inputs improves on its initialisation; T read off the update."""

import copy

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from fedleak.attacks import AttackerKnowledge, build_attack  # noqa: E402
from fedleak.data.tokens import TokenEncoding  # noqa: E402
from fedleak.errors import FedleakError  # noqa: E402
from fedleak.fl import Client, ClientData  # noqa: E402
from fedleak.models import create_model  # noqa: E402
from fedleak.models.text import lm_targets  # noqa: E402

V, PAD = 300, 0


def _case(t: int = 5, **options):
    net = create_model("gpt2-tiny", V, 1, 16, vocab_size=V, pad_id=PAD, max_length=16, hidden=32, heads=2, seed=0,
                       **options)
    tokens = torch.randint(1, V, (2, t), generator=torch.Generator().manual_seed(0))
    payload = Client(net, TokenEncoding(V, PAD, 16)).update(ClientData(tokens, lm_targets(tokens, PAD)))
    return tokens, payload, AttackerKnowledge(copy.deepcopy(net), (1, 1, t), V, (0.0,), (1.0,))


def _accuracy(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of positions right after the best one-to-one matching of sequences."""
    hits = (found[:, None, :] == truth[None]).float().mean(dim=-1)
    rows, cols = linear_sum_assignment(-hits.numpy())
    return float(hits[rows, cols].mean())


def test_tag_improves_token_accuracy_over_its_initialisation():
    tokens, payload, knowledge = _case()
    start = build_attack("tag", {"iterations": 0}).run(payload, knowledge, seed=0)
    rec = build_attack("tag", {"iterations": 40, "lr": 0.3}).run(payload, knowledge, seed=0)
    assert rec.images.shape == tokens.shape and rec.images.dtype == torch.long
    assert rec.matching_loss < start.matching_loss
    assert _accuracy(rec.images, tokens) >= _accuracy(start.images, tokens) + 0.3
    assert "read off the position-embedding gradient" in rec.notes[0]


def test_tag_needs_the_length_when_the_update_holds_no_position_embeddings():
    _, payload, knowledge = _case(lora={"r": 4})
    with pytest.raises(FedleakError, match="attack.length"):
        build_attack("tag", {"iterations": 0}).run(payload, knowledge)
    rec = build_attack("tag", {"iterations": 0, "length": 5}).run(payload, knowledge)
    assert rec.images.shape == (2, 5)
