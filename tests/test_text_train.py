"""``fedleak train`` on text: a small GPT-2 language model on the generated ``pii`` corpus."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytest.importorskip("transformers")
pytest.importorskip("faker")

from tests.test_cli import fedleak  # noqa: E402  (the CLI in-process: exit code, stdout, stderr)
from fedleak.data import load_dataset  # noqa: E402
from fedleak.models import create_model  # noqa: E402
from fedleak.models.checkpoint import load_into, read_info, save_checkpoint  # noqa: E402
from fedleak.models.text import CausalLM  # noqa: E402
from fedleak.training import TrainSettings, text_score, tokenizer_facts, train_target  # noqa: E402

DATA = {"n": 64, "seq_len": 24, "vocab_size": 300}  # 51 train / 13 test sentences, 24 tokens of a near-byte BPE
TINY = {"layers": 1, "hidden": 32, "heads": 2}  # a 1-layer gpt2-tiny: seconds on a CPU


@pytest.fixture(scope="module")
def run():
    settings = TrainSettings(epochs=3, batch_size=16, lr=1e-2, device="cpu")
    return train_target("gpt2-tiny", "pii", options=TINY, settings=settings, progress=False, data_options=DATA)


@pytest.fixture(scope="module")
def held_out():
    test = load_dataset("pii", split="test", **DATA)
    return test, test.tokens(range(len(test)))


def next_tokens(tokens: torch.Tensor, pad: int) -> torch.Tensor:
    """A language model's targets, written out: the next token, padding −100."""
    return tokens[:, 1:].masked_fill(tokens[:, 1:] == pad, -100)


def hf_scores(model: CausalLM, tokens: torch.Tensor) -> tuple[float, float]:
    """transformers' own mean next-token loss (labels = tokens, padding −100) and the top-1 share of real next tokens."""
    with torch.no_grad():
        labels = tokens.masked_fill(tokens == model.pad_id, -100)
        out = model.hf(input_ids=tokens, attention_mask=(tokens != model.pad_id).long(), labels=labels)
        predicted, nxt = out.logits[:, :-1].argmax(-1), tokens[:, 1:]
        real = nxt != model.pad_id
    return float(out.loss), float((predicted == nxt)[real].float().mean())


def test_language_model_learns_the_corpus(run, held_out):
    test, tokens = held_out
    assert isinstance(run.model, CausalLM) and run.info.options["task"] == "lm"
    fresh = create_model("gpt2-tiny", 1, 1, 24, seed=0, **run.info.options)  # what training started from
    before = hf_scores(fresh, tokens)[0]
    loss, acc = hf_scores(run.model, tokens)
    assert before == pytest.approx(math.log(run.info.options["vocab_size"]), abs=0.3)  # untrained: ≈ ln V
    assert loss < before - 1.0 and run.history.train_loss[-1] < run.history.train_loss[0]
    assert run.history.test_loss[-1] == pytest.approx(loss, rel=1e-5)  # fedleak's held-out loss = transformers'
    assert run.info.test_accuracy == pytest.approx(acc, abs=1e-6)  # LM test_accuracy: next-token top-1
    t = run.info.training
    assert t["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4) and t["lr"] == 1e-2
    assert (t["train_images"], t["test_images"]) == (51, 13) and len(test) == 13


def test_checkpoint_round_trip_reproduces_logits(run, held_out, tmp_path):
    test, tokens = held_out
    path = save_checkpoint(tmp_path / "lm.safetensors", run.model, run.info)
    stored = load_file(str(path))  # tensors only; the tied output layer is written as its own copy
    assert torch.equal(stored["hf.lm_head.weight"], stored["hf.transformer.wte.weight"])
    info = read_info(path)
    assert info is not None and (info.modality, info.dataset, info.image_size) == ("text", "pii", 24)
    assert info.data_options == DATA and info.tokenizer == tokenizer_facts(test.tokenizer, 24)
    assert info.options["pad_id"] == test.tokenizer.pad_id == info.tokenizer["pad_id"]
    rebuilt = create_model(info.architecture, info.num_classes, info.in_channels, info.image_size, info.width,
                           seed=1, **info.options)
    load_into(rebuilt, path, info.architecture)
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(tokens), run.model(tokens))
    assert rebuilt.hf.lm_head.weight.data_ptr() == rebuilt.hf.transformer.wte.weight.data_ptr()  # still tied
    assert text_score(rebuilt, tokens, next_tokens(tokens, rebuilt.pad_id)).loss == pytest.approx(
        run.history.test_loss[-1], rel=1e-6)


OPTIONS = [*(a for k, v in DATA.items() for a in ("--data-option", f"{k}={v}")),
           *(a for k, v in TINY.items() for a in ("--option", f"{k}={v}"))]


def test_cli_trains_a_language_model(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "lm.safetensors"
    code, out, err = fedleak(monkeypatch, capsys, "train", "--model", "gpt2-tiny", "--dataset", "pii", *OPTIONS,
                             "--epochs", "1", "-b", "16", "--device", "cpu", "--out", str(ckpt), "-q")
    assert code == 0, err
    assert "perplexity" in out and "test accuracy" in out
    info = read_info(ckpt)
    assert info is not None and info.modality == "text" and info.training["lr"] == 1e-3  # the text default
    assert info.training["perplexity"] == pytest.approx(math.exp(info.training["test_loss"]), rel=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--model", "lenet5", "--dataset", "pii", "--data-option", "n=8"], "not a text model"),
    (["--model", "gpt2-tiny", "--dataset", "samples"], "is a text model"),
    (["--model", "gpt2-tiny", "--dataset", "pii", "--data-option", "n=8", "--data-option", "seq_len=200"],
     "longer than the model's context"),
    (["--model", "gpt2-tiny", "--dataset", "pii", "--image-size", "32"], "image_size and channels do not apply"),
    (["--model", "gpt2-tiny", "--dataset", "pii", "--data-option", "nope=1"], "nope"),
])
def test_cli_bad_text_input_is_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = fedleak(monkeypatch, capsys, "train", *args, "--epochs", "1", "-q")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.rglob("*.safetensors"))


def test_attack_the_trained_language_model(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "lm.safetensors"
    data = [a for k, v in DATA.items() for a in ("--data-option", f"{k}={v}")]
    code, _, err = fedleak(monkeypatch, capsys, "train", "--model", "gpt2-tiny", "--dataset", "pii", *data,
                           "--epochs", "1", "-b", "16", "--device", "cpu", "--out", str(ckpt), "-q")
    assert code == 0, err
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--dataset", "pii", "--model", "gpt2-tiny",
                           "--checkpoint", str(ckpt), "--attack", "dager", "--out", str(out), "-q")
    assert code == 0, err
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["options"] == DATA  # the checkpoint's corpus and tokenizer, not pii's defaults
    assert json.loads((out / "metrics.json").read_text())["exact_rate"] == 1.0
    # another corpus size trains another BPE: the checkpoint's ids would mean other words
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--dataset", "pii", "--model", "gpt2-tiny",
                           "--checkpoint", str(ckpt), "--set", "data.options.n=40", "--attack", "dager",
                           "--out", str(tmp_path / "other"), "-q")
    assert code == 2 and "not the one the checkpoint was trained with" in err and len(err.strip().splitlines()) == 1
