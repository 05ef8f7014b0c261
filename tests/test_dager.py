"""DAGER: exact text batches from a decoder, an encoder and LoRA adapters; its refusal when B·T ≥ d."""

import copy

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402

from fedleak.attacks import AttackerKnowledge, build_attack  # noqa: E402
from fedleak.attacks.dager_span import basis_of  # noqa: E402
from fedleak.data.tokens import TokenEncoding  # noqa: E402
from fedleak.fl import Client, ClientData  # noqa: E402
from fedleak.fl.payload import ClientTraining  # noqa: E402
from fedleak.models import create_model  # noqa: E402
from fedleak.models.text import lm_targets  # noqa: E402

V, PAD = 3000, 0


def _tokens(b: int, t: int, seed: int = 0, lengths: tuple[int, ...] = ()) -> torch.Tensor:
    """Random sequences of ids 1…V−1, right-padded to ``lengths`` (the rest full length)."""
    x = torch.randint(1, V, (b, t), generator=torch.Generator().manual_seed(seed))
    for i, n in enumerate(lengths):
        x[i, n:] = PAD
    return x


def _attack(net, tokens, labels, training=ClientTraining(), classes=V, **settings):
    encoding = TokenEncoding(V, PAD, net.max_length)
    payload = Client(net, encoding, training).update(ClientData(tokens, labels))
    knowledge = AttackerKnowledge(copy.deepcopy(net), (1, 1, tokens.shape[1]), classes, (0.0,), (1.0,))
    return build_attack("dager", settings).run(payload, knowledge)


def _rows(x: torch.Tensor) -> set[tuple[int, ...]]:
    """Each sequence without its padding."""
    return {tuple(t for t in row.tolist() if t != PAD) for row in x}


def _lm(**options):
    return create_model("gpt2-tiny", V, 1, 32, vocab_size=V, pad_id=PAD, max_length=32, seed=0, **options)


def test_dager_recovers_four_sequences_from_a_decoder_exactly():
    tokens = _tokens(4, 10, lengths=(10, 7, 10, 4))
    rec = _attack(_lm(), tokens, lm_targets(tokens, PAD))
    assert rec.images.dtype == torch.long and rec.images.shape == (4, 10)
    assert _rows(rec.images) == _rows(tokens)
    assert (rec.labels == 0).all()
    assert "4 of 4 sequences found" in " ".join(rec.notes)
    assert rec.matching_loss < 1e-3


def test_without_the_residual_step_the_last_tokens_stay_padding():
    tokens = _tokens(2, 6, seed=1)
    rec = _attack(_lm(), tokens, lm_targets(tokens, PAD), last_token=False)
    assert _rows(rec.images) == _rows(tokens[:, :-1])  # the last token is in no span


@pytest.mark.parametrize("combinations", [4096, 1])  # the paper's exhaustive search; the coordinate search
def test_dager_recovers_four_sequences_from_an_encoder(combinations):
    # Three blocks: a classifier's last block sees only [CLS]'s gradient, so block 2 must not be the last.
    net = create_model("bert-tiny", 3, 1, 32, vocab_size=V, pad_id=PAD, max_length=32, layers=3, seed=0)
    tokens = _tokens(4, 6, seed=2, lengths=(6, 6, 4, 5))
    rec = _attack(net, tokens, torch.tensor([0, 2, 1, 2]), classes=3, max_combinations=combinations, restarts=8)
    assert _rows(rec.images) == _rows(tokens)
    assert "4 of 4 sequences found" in " ".join(rec.notes)


def test_dager_recovers_a_batch_through_lora_adapters():
    net = _lm(lora={"r": 48, "targets": ["c_attn"]})
    tokens = _tokens(4, 8, seed=3, lengths=(8, 8, 6, 8))
    rec = _attack(net, tokens, lm_targets(tokens, PAD))
    assert "lora_B" in rec.notes[0]  # first round: B = 0, so ∂L/∂A = 0 and the span is ∂L/∂B's
    assert _rows(rec.images) == _rows(tokens)


def test_the_last_token_fit_works_when_every_tensor_exceeds_its_budget():
    """Regression: with every trainable tensor above ``budget`` (LoRA at a large rank) the residual fit
    had no tensor to fit and raised; it now fits the smallest one alone."""
    net = _lm(lora={"r": 48, "targets": ["c_attn"]})
    tokens = _tokens(4, 8, seed=3, lengths=(8, 8, 6, 8))
    rec = _attack(net, tokens, lm_targets(tokens, PAD), budget=16)
    # the prefixes are the spans' (exact); the last tokens come from a fit on one small tensor only
    assert {r[:-1] for r in _rows(rec.images)} == {r[:-1] for r in _rows(tokens)}
    assert any("residual" in n for n in rec.notes)


def test_dager_recovers_a_fedavg_batch_from_the_span_of_the_accumulated_update():
    # Two local steps: the inputs moved a little between them, so rank and thresholds are looser.
    tokens = _tokens(4, 8, seed=5, lengths=(8, 6, 8, 7))
    training = ClientTraining(protocol="fedavg", lr=1e-3, local_steps=2)
    tight = _attack(_lm(), tokens, lm_targets(tokens, PAD), training)
    assert any("cannot be exact" in n for n in tight.notes)  # every small singular value counted
    rec = _attack(_lm(), tokens, lm_targets(tokens, PAD), training, rank_tol=1e-4, tau1=1e-2, tau2=1e-2)
    assert _rows(rec.images) == _rows(tokens)


def test_dager_says_it_cannot_be_exact_when_the_tokens_fill_the_width():
    net = create_model("gpt2-tiny", V, 1, 32, vocab_size=V, pad_id=PAD, max_length=32, hidden=32, heads=2, seed=0)
    tokens = _tokens(4, 12, seed=4)  # 4 × 11 scored positions ≥ d = 32
    rec = _attack(net, tokens, lm_targets(tokens, PAD))
    assert any("cannot be exact" in n for n in rec.notes)
    assert (rec.images == PAD).all()


def test_the_span_basis_is_the_inputs_column_space():
    x = torch.randn(16, 3, dtype=torch.float64)
    grad = x @ torch.randn(3, 40, dtype=torch.float64)  # Σᵢ xᵢ δᵢᵀ: rank 3
    basis, rank, _ = basis_of(grad, 1e-6)
    assert rank == 3
    assert torch.allclose(basis @ (basis.T @ x), x)
