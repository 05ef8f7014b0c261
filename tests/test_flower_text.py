"""Auditing a Flower *text* app: LeakageAudit and the leakage gate on a GPT-2-style language model
whose FedSGD clients train on sentences of the ``pii`` corpus (token ids), attacked with DAGER.
The federation runs in this process on the stand-in grid of ``tests/test_flower.py``."""

from __future__ import annotations

import copy
import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("faker")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from fedleak.data import load_dataset  # noqa: E402
from fedleak.errors import ConfigError  # noqa: E402
from fedleak.integrations.flower import LeakageAudit, SharedBatches, leakage_gate, record_batch  # noqa: E402
from fedleak.models import create_model  # noqa: E402
from fedleak.models.text import lm_targets  # noqa: E402
from fedleak.store import ResultsDB  # noqa: E402
from tests.test_flower import LocalGrid, task_identity  # noqa: E402, F401  (the grid; the ServerApp's identity)

SEQ_LEN = 12
PER_CLIENT = 2
TRAIN = {"lr": 0.05, "local-steps": 1, "batch-size": PER_CLIENT, "fedleak-defense": "none"}  # FedSGD: one step


@pytest.fixture(scope="module")
def corpus():
    return load_dataset("pii", None, split="train", seq_len=SEQ_LEN, n=48)


def language_model(corpus, hidden: int = 128):
    tok = corpus.tokenizer
    return create_model("gpt2-tiny", tok.vocab_size, 1, SEQ_LEN, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                        max_length=SEQ_LEN, hidden=hidden, seed=0)


def partition(k: int) -> list[int]:
    return [k * PER_CLIENT + i for i in range(PER_CLIENT)]


def client_app(corpus, model, mods=()):
    """A plain text client: its sentences' token ids, next-token cross-entropy, torch.optim.SGD."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        config = message.content["config"]
        net = copy.deepcopy(model)
        net.load_state_dict(message.content["arrays"].to_torch_state_dict())
        indices = partition(int(context.node_config["partition-id"]))
        tokens = corpus.tokens(indices)
        targets = lm_targets(tokens, corpus.tokenizer.pad_id)
        optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=float(config["lr"]))
        for _ in range(int(config["local-steps"])):
            optimizer.zero_grad()
            F.cross_entropy(net(tokens), targets).backward()
            optimizer.step()
        record_batch(context, message, tokens, targets, indices)
        return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(indices)})}), reply_to=message)

    return app


def audit(model, out, **kw) -> LeakageAudit:
    return LeakageAudit(FedAvg(fraction_evaluate=0.0), model=model, out=out,
                        **{"attack": "dager", "strict": True, "workers": 0, **kw})


def federate(strategy, app, model, rounds: int = 1):
    return strategy.start(grid=LocalGrid(app, 2), initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds,
                          train_config=ConfigRecord(dict(TRAIN)))


def rows(out):
    with ResultsDB(out / "results.sqlite", create=False) as db:
        return sorted(db.records(), key=lambda r: r.metrics["client"])


def originals(corpus, k: int) -> set[str]:
    """Client ``k``'s sentences as its batch holds them (decoded from its token ids)."""
    tok = corpus.tokenizer
    return {tok.decode([t for t in row.tolist() if t != tok.pad_id]) for row in corpus.tokens(partition(k))}


def test_the_audit_recovers_the_clients_sentences_exactly_and_calls_it_a_leak(corpus, tmp_path, monkeypatch, capsys):
    model = language_model(corpus)
    shared = SharedBatches(tmp_path / "shared")
    out = tmp_path / "audit"
    federate(audit(model, out, evaluation=shared, tokenizer=corpus), client_app(corpus, model, [shared.mod()]), model)
    found = rows(out)
    assert len(found) == 2
    for k, r in enumerate(found):
        m = r.metrics
        recovered = set((out / r.artifacts["recovered"]).read_text().splitlines())
        assert recovered & originals(corpus, k)  # a sentence of the client's batch, word for word
        assert m["modality"] == "text" and m["exact_sequences"] >= 1 and m["verdict"] == "leaks"
        assert "recovered exactly" in m["verdict_reason"]
        sequences = json.loads((out / r.artifacts["sequences"]).read_text())
        assert {s["original"] for s in sequences} == originals(corpus, k)
        spans = [s for seq in sequences for s in seq["pii"] if s["recovered"]]
        assert m["pii_recovered_spans"] == len(spans) and all(s["text"] in m["texts"][0]["original"] + " ".join(
            q["recovered"] for q in sequences) for s in spans)
        assert m["other_text"] is not None  # the no-leak baseline: an unrelated sentence of the corpus
    assert "2 of 2 audited updates finished" in (out / "report.html").read_text()
    # `fedleak runs list` shows a text audit's own numbers (not image columns: PSNR, class counts)
    from tests.test_cli import fedleak

    code, listing, _ = fedleak(monkeypatch, capsys, "runs", "list", str(out))
    assert code == 0 and "ROUGE-1" in listing and "no-leak ROUGE-1" in listing and "PSNR" not in listing
    exact = found[0].metrics["exact_sequences"]
    assert f"{exact}/{found[0].metrics['sequences']}" in listing
    # the study page too: text columns and a ROUGE-1 figure, not risk, class counts or imprint share
    table = json.loads((out / "table.json").read_text())
    assert set(table[0]) == {"round", "client", "verdict", "update_fit", "exact", "rouge1", "no_leak_rouge1", "pii"}
    html = (out / "report.html").read_text()
    assert "rouge1.png" in html and "risk.png" not in html and "A text federation" in html


def test_without_a_shared_batch_the_text_audit_shows_what_it_recovered_and_stays_inconclusive(corpus, tmp_path):
    model = language_model(corpus)
    out = tmp_path / "audit"
    strategy = audit(model, out, tokenizer=corpus.tokenizer)
    federate(strategy, client_app(corpus, model), model)
    for k, r in enumerate(rows(out)):
        m = r.metrics
        assert set(m["preview"]["texts"]) & originals(corpus, k)
        assert m["verdict"] == "inconclusive" and "exact_sequences" not in m  # no truth, no text calibration
        assert m["label_counts"] is None and m["malicious_server"] is None  # image measures do not apply


def test_an_attack_that_cannot_apply_is_inconclusive_not_a_pass(corpus, tmp_path):
    model = language_model(corpus, hidden=16)  # 2 × 12 tokens fill a 16-wide span: DAGER cannot be exact
    shared = SharedBatches(tmp_path / "shared")
    out = tmp_path / "audit"
    federate(audit(model, out, evaluation=shared, tokenizer=corpus), client_app(corpus, model, [shared.mod()]), model)
    for r in rows(out):
        assert r.metrics["verdict"] == "inconclusive" and "does not apply" in r.metrics["verdict_reason"]
        assert r.metrics["exact_sequences"] == 0


def one_exchange(app, model):
    message = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                  "config": ConfigRecord(TRAIN | {"server-round": 1})}),
                      dst_node_id=1000, message_type=MessageType.TRAIN)
    return LocalGrid(app, 1).send_and_receive([message])[0]


def test_the_gate_flags_a_text_update_and_withholds_it_above_a_threshold(corpus):
    model = language_model(corpus)
    reply = one_exchange(client_app(corpus, model, [leakage_gate(model, attack="dager", tokenizer=corpus)]), model)
    metrics = reply.content["metrics"]
    assert metrics["fedleak-exact-rate"] > 0 and metrics["fedleak-leaks"] == 1.0
    assert 0 <= metrics["fedleak-pii-recovered"] <= 1 and "fedleak-psnr" not in metrics
    refused = one_exchange(client_app(corpus, model, [leakage_gate(model, attack="dager", tokenizer=corpus,
                                                                   threshold=0.0)]), model)
    assert refused.has_error() and refused.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "exact-rate" in refused.error.reason and "recovered exactly" in refused.error.reason


def test_text_audits_refuse_what_does_not_apply(corpus, tmp_path):
    model = language_model(corpus)
    with pytest.raises(ConfigError, match="mean/std do not apply"):
        audit(model, tmp_path / "a", mean=(0.5,), std=(0.2,))
    with pytest.raises(ConfigError, match="input_shape is"):
        audit(model, tmp_path / "b", input_shape=(3, 8, 8))
    with pytest.raises(ConfigError, match="token ids"):
        audit(model, tmp_path / "c", public=torch.rand(4, SEQ_LEN))
    with pytest.raises(ConfigError, match="fedleak text model|psnr"):
        leakage_gate(model, score="psnr")


def test_an_adapters_only_record_is_read_as_the_model_s_state():
    """FlowerTune's apps send only the LoRA adapters, under peft's names (no ``hf.`` wrapper, no adapter
    name): the audit matches them and takes the frozen base from its own model; a missing adapter is
    still an error."""
    from peft import get_peft_model_state_dict

    from fedleak.errors import FedleakError
    from fedleak.integrations.flower.records import state_dict

    tok = load_dataset("pii", None, split="train", seq_len=SEQ_LEN, n=16).tokenizer
    model = create_model("gpt2-tiny", tok.vocab_size, 1, SEQ_LEN, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                         max_length=SEQ_LEN, seed=0, lora="r=4,targets=c_attn")
    adapters = {k: v.detach().clone() + 1.0 for k, v in get_peft_model_state_dict(model.hf).items()}
    assert adapters and all(".default." not in k and not k.startswith("hf.") for k in adapters)
    state = state_dict(ArrayRecord(adapters), model, "the reply")
    assert set(state) == {n for n, _ in model.named_parameters()}  # every parameter, frozen ones filled in
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert name.endswith(".default.weight") and torch.equal(state[name], p.detach() + 1.0)
        else:
            assert torch.equal(state[name], p.detach())
    del adapters[next(iter(adapters))]
    with pytest.raises(FedleakError, match="lacks parameter"):
        state_dict(ArrayRecord(adapters), model, "the reply")
