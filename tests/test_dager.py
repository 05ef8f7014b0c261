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


def test_lora_after_the_first_round_checks_against_b_when_a_s_span_is_saturated():
    """Regression (examples/flower_text round 2 read ``inconclusive``): once B ≠ 0, A's update is the
    float32 difference of a small step of a large A, so its span has the full rank r — noise, which
    passes every token; the attack refused. It now drops that span and checks against B's."""
    net = _lm(lora="r=96,alpha=96,targets=c_attn")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:  # what one round of training leaves: small, non-zero adapters
                p.copy_(5e-4 * torch.randn(p.shape, generator=g))
    tokens = _tokens(4, 12, seed=3)
    training = ClientTraining(protocol="fedavg", lr=0.05, local_steps=1, momentum=0.9)
    rec = _attack(net, tokens, lm_targets(tokens, PAD), training)
    assert any("dropped the span" in n and "lora_A" in n for n in rec.notes)
    assert _rows(rec.images) == _rows(tokens)


def test_the_cached_one_position_step_gives_the_full_forward_s_inputs():
    from fedleak.attacks.dager_layout import base_model, layer_inputs, layout_of, next_inputs

    for net in (_lm(), _lm(lora="r=8,targets=c_attn")):
        net.eval()
        layout = layout_of(net.hf)
        probe = layout.probes(layout.blocks(base_model(net.hf))[1])[0]
        prefixes, nxt = _tokens(3, 5, seed=7), torch.tensor([5, 17, 2999, 40])
        grown = torch.cat([prefixes.repeat_interleave(len(nxt), 0), nxt.repeat(len(prefixes)).view(-1, 1)], 1)
        want = layer_inputs(net, probe, grown)[:, -1]
        got = next_inputs(net, probe, prefixes, nxt, chunk=5)  # several chunks
        assert got.shape == want.shape == (12, 128)
        assert torch.allclose(got, want, atol=1e-5)
        first = next_inputs(net, probe, prefixes[:1, :0], nxt)  # the empty prefix: position 0
        assert torch.allclose(first, layer_inputs(net, probe, nxt.view(-1, 1))[:, 0], atol=1e-6)


def test_pair_moves_free_two_sequences_stuck_on_each_other_s_tokens():
    from fedleak.attacks.dager_last import _descend

    a = torch.tensor([[0.0, 1, 0.3], [1, 0, 0]], dtype=torch.float64)  # sequence 0's candidates
    b = torch.tensor([[1.0, 0, 0.3], [0, 1, 0]], dtype=torch.float64)  # sequence 1's
    target = a[1] + b[1]
    # from (0, 0) no single change lowers the residual (0.6 → 1.45 either way): a local minimum
    assert (target - a[0] - b[0]).norm() < (target - a[1] - b[0]).norm()
    assert (target - a[0] - b[0]).norm() < (target - a[0] - b[1]).norm()
    choice = [0, 0]
    assert _descend(target, [a, b], choice, fresh=False) < 1e-12
    assert choice == [1, 1]


def test_a_last_token_fit_with_nothing_to_fit_is_uncertified_not_exact():
    """Regression: in LoRA's first round the fitted slice was A's, whose update is 0; the residual 0/0
    read as 0, "exact". The slice is now taken from tensors the update moved; nothing moved → nan."""
    import math
    import re

    from fedleak.attacks.dager_last import _descend

    zero = torch.zeros(3, dtype=torch.float64)
    assert math.isnan(_descend(zero, [torch.eye(3, dtype=torch.float64)], [0], fresh=True))
    net = _lm(lora={"r": 48, "targets": ["c_attn"]})
    tokens = _tokens(4, 8, seed=3, lengths=(8, 8, 6, 8))
    rec = _attack(net, tokens, lm_targets(tokens, PAD))
    note = next(n for n in rec.notes if "relative residual" in n)
    residual = float(re.search(r"relative residual (\S+) ", note).group(1))
    assert 0 < residual < 1e-3  # a real fit (on B's update), exact up to rounding
    assert _rows(rec.images) == _rows(tokens)


@pytest.mark.parametrize("lora", [None, {"r": 64, "targets": ["q_proj", "v_proj"]}])
def test_dager_recovers_a_batch_from_a_rotary_decoder(lora):
    """LLaMA's layout: rotary positions (the first block's input is the same at every position), so
    the order comes from block 2 alone; a run of one token would pass forever (attention over equal
    values) and is not grown; under LoRA on q_proj the query's span misses position 0 and is set aside."""
    net = create_model("llama-tiny", V, 1, 32, vocab_size=V, pad_id=PAD, max_length=32, seed=0,
                       **({"lora": lora} if lora else {}))
    tokens = _tokens(4, 10, lengths=(10, 7, 10, 4))
    rec = _attack(net, tokens, lm_targets(tokens, PAD))
    assert _rows(rec.images) == _rows(tokens)
    assert ("not checking against" in " ".join(rec.notes)) == (lora is not None)


def test_a_clipped_update_still_gives_the_last_tokens():
    """Regression: under clipping (the update a fraction of the gradient, the factor unknown to the
    server) the prefixes stayed exact but the last-token fit, which divided by the stated scale, got
    about one token per sequence wrong. The factor is now read off the head's untouched rows."""
    import dataclasses

    net = _lm()
    tokens = _tokens(4, 10, seed=6, lengths=(10, 7, 10, 9))
    encoding = TokenEncoding(V, PAD, net.max_length)
    payload = Client(net, encoding, ClientTraining()).update(ClientData(tokens, lm_targets(tokens, PAD)))
    total = torch.sqrt(sum((u.double() ** 2).sum() for u in payload.update.values()))
    clipped = dataclasses.replace(payload, update={k: u / total for k, u in payload.update.items()})  # norm 1
    knowledge = AttackerKnowledge(copy.deepcopy(net), (1, 1, tokens.shape[1]), V, (0.0,), (1.0,))
    rec = build_attack("dager", {}).run(clipped, knowledge)
    assert _rows(rec.images) == _rows(tokens)
    assert any("times a gradient (read off the head)" in n for n in rec.notes)


def test_the_noise_rule_finds_the_rank_of_a_low_rank_matrix_under_gaussian_noise():
    from fedleak.attacks.dager_span import basis_of

    g = torch.Generator().manual_seed(0)
    signal = torch.randn(96, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 300, generator=g,
                                                                               dtype=torch.float64)
    noisy = signal + 0.05 * torch.randn(96, 300, generator=g, dtype=torch.float64)
    assert basis_of(noisy, 1e-6)[1] == 96  # the relative rule counts the noise: the span fills
    basis, rank, _ = basis_of(noisy, 1e-6, "noise")
    assert rank == 12
    truth = torch.linalg.svd(signal, full_matrices=False).U[:, :12]
    assert torch.linalg.matrix_norm(basis @ basis.T - truth @ truth.T, 2) < 0.05  # the same subspace


def test_dager_recovers_a_batch_through_gaussian_noise():
    """Regression: under a noise defense the relative rank rule counted the noise, the span filled
    and DAGER recovered nothing; the public defense now selects the noise rule (and looser thresholds)."""
    net = _lm()
    tokens = _tokens(2, 8, seed=8)
    encoding = TokenEncoding(V, PAD, net.max_length)
    client = Client(net, encoding, ClientTraining(), defense="noise:snr_db=40", seed=3)
    payload = client.update(ClientData(tokens, lm_targets(tokens, PAD)))
    knowledge = AttackerKnowledge(copy.deepcopy(net), (1, 1, tokens.shape[1]), V, (0.0,), (1.0,))
    rec = build_attack("dager", {}).run(payload, knowledge)
    assert any("a noisy update" in n for n in rec.notes)
    assert _rows(rec.images) == _rows(tokens)
    plain = build_attack("dager", {"rank_rule": "relative"}).run(payload, knowledge)
    assert any("cannot be exact" in n for n in plain.notes)


def test_under_noise_the_decoder_keeps_only_extensions_near_each_prefix_s_best():
    """With a loosened threshold a wrong token passes beside the true one; ``relative`` keeps only the
    extensions within that factor of the prefix's best distance (measured on GPT-2 small's shape at
    40 dB, B = 8: 0.38 → 0.62 of the sequences exact)."""
    import math

    from fedleak.attacks.dager_search import greedy_decoder
    from fedleak.attacks.dager_span import Span

    basis = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    span = Span(basis, lambda x: x, 1, 2, torch.ones(1), "test")
    far = {1: 0.01, 2: 0.02, 3: 0.05, 4: 0.09}  # each token's distance to the span, at every position

    def extend(prefixes, tokens):
        d = torch.tensor([far[int(t)] for _ in range(len(prefixes)) for t in tokens], dtype=torch.float64)
        return torch.stack([torch.cos(torch.asin(d)), d], 1)  # relative distance d from the span

    candidates = [torch.tensor([1]), torch.tensor([3, 4]), torch.tensor([2])]
    loose, _ = greedy_decoder(candidates, [span], extend, 0.1, 16)
    assert sorted(loose.sequences) == [[1, 3, 2], [1, 4, 2]]  # both pass an absolute 0.1
    tight, _ = greedy_decoder(candidates, [span], extend, 0.1, 16, relative=1.5)
    assert tight.sequences == [[1, 3, 2]] and math.isclose(tight.distances[0], 0.05, rel_tol=1e-6)
