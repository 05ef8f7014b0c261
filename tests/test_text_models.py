"""Text models (GPT-2 LM, BERT/GPT-2 classifiers from transformers configs), LoRA adapters through
peft, and fedleak's unchanged FL stack (protocols, update defenses, DP-SGD, the client) on token batches."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import math  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fedleak.data.tokens import TokenEncoding  # noqa: E402
from fedleak.defenses import batch_gradient, parse_defense  # noqa: E402
from fedleak.errors import ConfigError  # noqa: E402
from fedleak.fl import Client  # noqa: E402
from fedleak.fl.payload import ClientData, ClientTraining  # noqa: E402
from fedleak.fl.protocols import fedavg, fedsgd  # noqa: E402
from fedleak.models import card_of, create_model  # noqa: E402
from fedleak.models.lora import add_lora  # noqa: E402
from fedleak.models.text import CausalLM, SequenceClassifier, lm_targets  # noqa: E402
from fedleak.parameters import trainable  # noqa: E402

V, PAD = 97, 0


def tiny_lm(**options):
    return create_model("gpt2-tiny", 1, vocab_size=V, pad_id=PAD, seed=0, **options)


def batch(b=3, t=9, seed=0):
    """Token ids 1…V−1, right-padded: sequence 0 has 3 pad positions at the end."""
    tokens = torch.randint(1, V, (b, t), generator=torch.Generator().manual_seed(seed))
    tokens[0, t - 3:] = PAD
    return tokens


def hf_loss(model, tokens):
    """transformers' own LM loss: labels = the tokens with padding −100, shifted inside the model."""
    labels = tokens.masked_fill(tokens == PAD, -100)
    return model.hf(input_ids=tokens, attention_mask=(tokens != PAD).long(), labels=labels).loss


def test_forward_shapes_and_attributes():
    tokens = batch()
    lm = tiny_lm()
    assert isinstance(lm, CausalLM) and lm(tokens).shape == (3, V, 8)
    assert (lm.pad_id, lm.vocab_size, lm.max_length) == (PAD, V, 128)
    assert lm.embeddings().shape == (V, 128) and lm.embeddings() is lm.hf.transformer.wte.weight
    bert = create_model("bert-tiny", 4, vocab_size=V, pad_id=PAD, seed=0)
    gpt_cls = create_model("gpt2-tiny", 4, vocab_size=V, pad_id=PAD, task="classify", seed=0)
    for model in (bert, gpt_cls):
        assert isinstance(model, SequenceClassifier) and model(tokens).shape == (3, 4)
    assert bert.embeddings().shape == (V, 128)
    with pytest.raises(ValueError, match="context of 128"):
        lm(torch.ones(1, 129, dtype=torch.long))


def test_lm_loss_is_transformers_own_lm_loss():
    model, tokens = tiny_lm(), batch()
    ours = F.cross_entropy(model(tokens), lm_targets(tokens, PAD))
    assert float(ours.detach()) == pytest.approx(float(hf_loss(model, tokens).detach()), rel=1e-6)
    targets = lm_targets(tokens, PAD)
    assert targets.shape == (3, 8) and (targets[0, 5:] == -100).all() and (targets[1:] == tokens[1:, 1:]).all()


def test_padding_does_not_change_the_real_positions_logits():
    model, tokens = tiny_lm(), batch()
    alone = model(tokens[:1, :6])  # sequence 0 without its padding
    assert torch.allclose(model(tokens)[:1, :, :5], alone, atol=1e-5)


def test_cards_say_token_ids_and_context_length():
    for name, context in [("gpt2-small-shape", 1024), ("gpt2-tiny", 128), ("bert-tiny", 512), ("bert-small-shape", 512)]:
        card = card_of(name)
        assert card.modality == "text" and card.context_length == context
        assert "token ids" in card.summary() and f"≤{context} tokens" in card.summary()
        assert card.as_dict()["context_length"] == context
    assert card_of("convnet").context_length is None and "modality" not in card_of("convnet").as_dict()


def test_gpt2_small_shape_is_the_gpt2_small_config():
    model = create_model("gpt2-small-shape", 1, vocab_size=64, seed=0)
    c = model.hf.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_positions, c.vocab_size) == (12, 768, 12, 1024, 64)
    blocks = sum(p.numel() for n, p in model.named_parameters() if ".h." in n)
    assert blocks == 12 * (12 * 768 * 768 + 13 * 768)  # per block: qkv, proj, 2 MLP (4d) weights + biases + 2 LN


def test_seed_makes_weights_reproducible():
    a, b, c = tiny_lm(), tiny_lm(), create_model("gpt2-tiny", 1, vocab_size=V, seed=1)
    assert torch.equal(a.embeddings(), b.embeddings()) and not torch.equal(a.embeddings(), c.embeddings())


def test_bad_options_are_one_line_errors():
    for kwargs, match in [({"task": "lm"}, "task must be one of classify"), ({"hidden": 130, "heads": 4}, "multiple"),
                          ({"pad_id": V}, "outside the vocabulary"), ({"lora": "r=4,rank=2"}, "no setting 'rank'"),
                          ({"lora": {"targets": ["nope"]}}, "no module named nope")]:
        with pytest.raises(ConfigError, match=match) as err:
            create_model("bert-tiny", 2, vocab_size=V, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="needs vocab_size"):
        create_model("gpt2-tiny", 1)


# ------------------------------------------------------------------------------------------- LoRA

def test_lora_update_holds_only_the_adapters_and_is_nonzero():
    model, tokens = tiny_lm(lora={"r": 4, "alpha": 8, "targets": ["c_attn"]}), batch()
    names = [n for n, _ in trainable(model)]
    assert len(names) == 2 * 2 and all(".c_attn.lora_A." in n or ".c_attn.lora_B." in n for n in names)
    hyper = ClientTraining().public(3)
    update, _ = fedsgd(model, tokens, lm_targets(tokens, PAD), hyper)
    assert sorted(update) == sorted(names)
    a = next(p for n, p in trainable(model) if "lora_A" in n)
    assert a.shape == (4, 128)  # r × d_in
    assert any(float(g.abs().max()) > 0 for n, g in update.items() if "lora_B" in n)  # B = 0 at start: A's gradient is 0
    # the update is the adapters' gradient of transformers' own loss
    ref = torch.autograd.grad(hf_loss(model, tokens), [p for _, p in trainable(model)])
    assert all(torch.allclose(update[n], g, atol=1e-7) for n, g in zip(names, ref))


def test_lora_spec_string_equals_the_mapping_and_starts_at_the_base_model():
    base, tokens = tiny_lm(), batch()
    text = tiny_lm(lora="r=4,alpha=8,targets=c_attn+c_proj")
    mapping = tiny_lm(lora={"r": 4, "alpha": 8, "targets": ["c_attn", "c_proj"]})
    assert [n for n, _ in trainable(text)] == [n for n, _ in trainable(mapping)]
    assert len(trainable(text)) == 2 * 2 * 3  # c_attn and the attention's and the MLP's c_proj, 2 layers
    assert torch.allclose(text(tokens), base(tokens), atol=1e-6)  # B = 0: the adapted model is the base one


# ----------------------------------------------------------------------------------- pretrained

@pytest.mark.parametrize("name, classes", [("gpt2-tiny", 1), ("bert-tiny", 3)])
def test_pretrained_folder_round_trip(tmp_path, name, classes):
    model, tokens = create_model(name, classes, vocab_size=V, pad_id=PAD, seed=0), batch()
    model.hf.save_pretrained(tmp_path / "m")
    loaded = create_model(name, classes, pretrained=str(tmp_path / "m"), pad_id=PAD, seed=5)
    assert loaded.vocab_size == V and type(loaded.hf) is type(model.hf)
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    assert torch.allclose(loaded(tokens), model(tokens), atol=1e-6)


def test_missing_or_non_model_pretrained_folder_is_one_line(tmp_path):
    for folder, match in [(tmp_path / "absent", "does not exist"), (tmp_path, "no config.json")]:
        with pytest.raises(ConfigError, match=match) as err:
            create_model("gpt2-tiny", 1, pretrained=str(folder))
        assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot load the pretrained model"):
        create_model("gpt2-tiny", 1, pretrained=str(tmp_path))


# ------------------------------------------------------------------------------- the FL stack

def test_fedsgd_and_fedavg_updates_on_a_token_batch():
    model, tokens = tiny_lm(), batch()
    targets = lm_targets(tokens, PAD)
    names = [n for n, _ in trainable(model)]
    ref = dict(zip(names, torch.autograd.grad(hf_loss(model, tokens), [p for _, p in trainable(model)])))
    sgd, buffers = fedsgd(model, tokens, targets, ClientTraining().public(3))
    assert sorted(sgd) == sorted(names) and buffers == {}
    assert all(torch.allclose(sgd[n], ref[n], atol=1e-6) for n in names)
    lr = 0.1
    avg, _ = fedavg(model, tokens, targets, ClientTraining(protocol="fedavg", lr=lr, local_steps=1).public(3))
    assert all(torch.allclose(avg[n], lr * ref[n], atol=1e-6) for n in names)  # one SGD step: θ₀ − θ₁ = lr·g
    two, _ = fedavg(tiny_lm(), tokens, targets, ClientTraining(protocol="fedavg", lr=lr, local_steps=2).public(3))
    assert not torch.allclose(two[names[0]], 2 * lr * ref[names[0]])  # the second step's gradient moved


def test_update_defenses_apply_to_a_text_update():
    model, tokens = tiny_lm(), batch()
    update = batch_gradient(model, tokens, lm_targets(tokens, PAD))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    flat = lambda u: torch.cat([t.flatten() for t in u.values()])  # noqa: E731
    clipped = parse_defense("clip:c=0.01").on_client(update, g())
    assert float(flat(update).norm()) > 0.01
    assert float(flat(clipped).norm()) == pytest.approx(0.01, rel=1e-4)
    sparse = parse_defense("topk:sparsity=0.9,scope=global").on_client(update, g())
    assert (flat(sparse) != 0).float().mean() == pytest.approx(0.1, abs=0.01)
    quantized = parse_defense("quantize:bits=3").on_client(update, g())
    assert all(q.unique().numel() <= 7 for q in quantized.values())
    noisy = parse_defense("noise:snr_db=0").on_client(update, g())
    diff = flat(noisy) - flat(update)
    assert float(diff.var()) == pytest.approx(float(flat(update).var()), rel=0.5)  # σ² = var(g) at 0 dB
    assert all(noisy[n].shape == update[n].shape for n in update)


@pytest.mark.parametrize("lora", [None, "r=2,alpha=4"])
def test_dpsgd_clips_per_sequence_gradients(lora):
    """Opacus's per-example gradients through the HF model: with noise 0, DP-SGD's gradient is the
    mean of the per-sequence gradients clipped to C, each sequence's gradient being B/N times the
    sum of its tokens' loss gradients (Opacus scales a mean-reduced loss by the batch size B; N the
    number of scored tokens) — computed here one sequence at a time."""
    model, tokens = tiny_lm(lora=lora), batch(b=3)
    targets = lm_targets(tokens, PAD)
    params = [p for _, p in trainable(model)]
    n_scored, clip = int((targets != -100).sum()), 0.05
    clipped, norms = [torch.zeros_like(p) for p in params], []
    for i in range(3):
        loss = F.cross_entropy(model(tokens[i : i + 1]), targets[i : i + 1], reduction="sum") * 3 / n_scored
        grads = torch.autograd.grad(loss, params)
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        norms.append(norm)
        for acc, gr in zip(clipped, grads):
            acc += gr * min(1.0, clip / norm) / 3
    assert max(norms) > clip  # the clipping acts
    dp = parse_defense(f"dpsgd:clip={clip},noise_multiplier=0").gradient(torch.Generator().manual_seed(0))
    got = dp(model, tokens, targets)
    for (n, _), ref in zip(trainable(model), clipped):
        assert torch.allclose(got[n], ref, atol=1e-7, rtol=1e-4), n


def test_client_round_on_a_token_batch():
    model, tokens = tiny_lm(lora="r=2,alpha=4"), batch()
    client = Client(model, TokenEncoding(V, PAD, model.max_length), ClientTraining(), defense="clip:c=0.01")
    payload = client.update(ClientData(images=tokens, labels=lm_targets(tokens, PAD)))
    assert sorted(payload.update) == sorted(n for n, _ in trainable(model))
    norm = torch.cat([u.flatten() for u in payload.update.values()]).norm()
    assert float(norm) == pytest.approx(0.01, rel=1e-4) and payload.hyper.batch_size == 3


def test_without_the_text_extra_building_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers → ImportError
    with pytest.raises(ConfigError, match=r"text extra \(pip install 'fedleak\[text\]'\)"):
        create_model("gpt2-tiny", 1, vocab_size=V)
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ConfigError, match="lora needs the text extra"):
        add_lora(torch.nn.Linear(2, 2), "r=2")
