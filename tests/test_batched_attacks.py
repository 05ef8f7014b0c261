"""Many payloads in one batched optimisation (issue 14, items 2–3): the same numbers as one payload
at a time, each payload its own restarts, early stopping and trace; the memory bound; the BN prior
read from the main forward; the flattened cosine; attack.precision; run_many and study batches."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.engine import groups
from fedleak.attacks.matching import GradientMatching, take
from fedleak.attacks.objectives import COSTS
from fedleak.attacks.optimization import PRECISIONS, matmul_precision
from fedleak.attacks.regularizers import forward_statistics
from fedleak.config import build_config
from fedleak.errors import ConfigError, FedleakError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientTraining, ClientData
from fedleak.models import create_model
from fedleak.pipeline import run, run_many
from tests.test_cli import fedleak

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _clients(count, batch=1, model="lenet", size=8, classes=5, seed=0, mode="eval", protocol="fedsgd",
             device="cpu", **client):
    """``count`` payloads of one global model, each from its own images (drawn on the CPU, then moved)."""
    net = create_model(model, classes, 3, size, width=0.25, seed=seed).to(device)
    net.train(mode == "train")
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for i in range(count):
        data = ClientData(torch.rand(batch, 3, size, size, generator=g).to(device),
                          torch.randint(0, classes, (batch,), generator=g).to(device))
        c = Client(net, Normalization(MEAN, STD), ClientTraining(protocol, mode, **client))
        know = AttackerKnowledge(copy.deepcopy(net), (3, size, size), classes, MEAN, STD, labels=data.labels,
                                 bn_stats=c.batch_norm_statistics(data) if mode == "train" else None)
        out.append((data, c.update(data), know))
    return out


def test_group_gradients_equal_each_payload_alone():
    items = _clients(3, batch=2)
    payloads, knows = [p for _, p, _ in items], [k for *_, k in items]
    group = GradientMatching(payloads, knows)
    x = torch.randn(3, 2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    labels = torch.stack([d.labels for d, *_ in items])
    gx, match = group.gradients(x, labels)
    assert gx.shape == x.shape and match.shape == (3, 2)
    for p, (data, payload, know) in enumerate(items):
        alone = GradientMatching(payload, know)
        for r in range(2):
            g1, m1 = (t[0] for t in alone.gradients(x[p, r:r + 1][None], data.labels[None]))  # one trial: plain autograd
            torch.testing.assert_close(gx[p, r], g1[0], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(match[p, r], m1[0], rtol=1e-4, atol=1e-6)
    # the memory bound changes how many trials go through at once, not the numbers
    for chunk in (1, 2, 3, 5):
        gc, mc = group.gradients(x, labels, chunk=chunk)
        torch.testing.assert_close(gc, gx, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(mc, match, rtol=1e-4, atol=1e-6)


def test_payloads_of_another_model_are_not_batched_together():
    a, b = _clients(2), _clients(1, seed=3)
    payloads = [a[0][1], b[0][1], a[1][1]]
    knows = [a[0][2], b[0][2], a[1][2]]
    assert groups(payloads, knows, "all", None) == [[0, 2], [1]]
    with pytest.raises(FedleakError, match="share the model"):
        GradientMatching(payloads, knows)


@pytest.mark.parametrize("attack,settings", [
    ("ig", {"iterations": 6, "restarts": 2, "signed": False}),
    ("rog", {"iterations": 6, "restarts": 2, "scale": 2}),
])
def test_run_many_gives_each_payload_its_own_run(attack, settings):
    items = _clients(3, batch=1, model="lenet")
    a = build_attack(attack, settings)
    seeds = [4, 9, 4]
    many = a.run_many([p for _, p, _ in items], [k for *_, k in items], seeds)
    for (data, payload, know), seed, rec in zip(items, seeds, many):
        alone = a.run(payload, know, seed=seed)
        assert len(rec.restart_losses) == 2 and rec.iterations == 6
        assert rec.restart_losses == pytest.approx(alone.restart_losses, rel=1e-3, abs=1e-6)
        torch.testing.assert_close(rec.images, alone.images, rtol=1e-3, atol=1e-3)
        assert rec.labels.tolist() == data.labels.tolist()
    assert not torch.allclose(many[0].images, many[1].images)  # each payload is its own problem


def test_each_payload_stops_early_on_its_own_and_stays_frozen():
    items = _clients(2, batch=1, model="lenet")
    a = build_attack("ig", {"iterations": 60, "restarts": 1, "patience": 3, "min_delta": 0.5, "log_every": 1,
                            "signed": False, "lr": 0.01})
    payloads, knows = [p for _, p, _ in items], [k for *_, k in items]
    alone = [a.run(p, k, seed=s) for p, k, s in zip(payloads, knows, (0, 1))]
    many = a.run_many(payloads, knows, [0, 1])
    for one, rec in zip(alone, many):
        assert rec.iterations == one.iterations < 60  # a plateau: each stops on its own
        assert rec.trace[-1]["iteration"] == one.trace[-1]["iteration"]
        torch.testing.assert_close(rec.images, one.images, rtol=1e-3, atol=1e-3)


def test_a_lone_payload_keeps_its_numbers_when_batched_with_others():
    """A payload optimised in a batch of four yields its own restart losses."""
    items = _clients(4, batch=2, model="lenet")
    a = build_attack("ig", {"iterations": 4, "restarts": 1, "signed": False, "chunk": 2})
    many = a.run_many([p for _, p, _ in items], [k for *_, k in items], [0] * 4)
    one = a.run(items[2][1], items[2][2], seed=0)
    assert many[2].restart_losses == pytest.approx(one.restart_losses, rel=1e-3, abs=1e-6)


def test_bn_prior_reads_the_statistics_of_the_main_forward():
    (data, payload, know), = _clients(1, batch=4, model="resnet18", size=16, mode="train")
    objective = GradientMatching(payload, know, regularizers={"bn": 0.1, "tv": 0.01})
    assert objective.observe
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    _, seen = objective.simulation.update_and_statistics(x, data.labels, observe=True)
    again = forward_statistics(x, objective.context)
    assert len(seen) == len(again) == len(objective.context.bn_layers) > 0
    for (m1, v1), (m2, v2) in zip(seen, again):
        torch.testing.assert_close(m1, m2)
        torch.testing.assert_close(v1, v2)
    # the prior's value is the same either way, and batched trials agree with single ones
    total, match = objective.trial(x, data.labels)
    data0 = take(objective.data, 0)
    ctx = dataclasses.replace(objective.context, bn_targets=data0["bn"], seen=None)
    from fedleak.attacks.regularizers import REGULARIZERS, total_variation
    expected = match + 0.1 * REGULARIZERS.get("bn")(x, ctx) + 0.01 * total_variation(x)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    trials = torch.stack([x.detach(), x.detach().flip(0)])
    gx, _ = (t[0] for t in objective.gradients(trials[None], data.labels[None]))
    g0, _ = (t[0] for t in objective.gradients(trials[:1][None], data.labels[None]))
    torch.testing.assert_close(gx[0], g0[0], rtol=1e-4, atol=1e-6)


def test_fedavg_minibatches_fall_back_to_a_forward_of_their_own():
    (data, payload, know), = _clients(1, batch=4, model="resnet18", size=16, mode="train", protocol="fedavg",
                                      lr=0.1, local_steps=2, local_batch_size=2)
    objective = GradientMatching(payload, know, regularizers={"bn": 0.1})
    x = torch.randn(4, 3, 16, 16)
    _, seen = objective.simulation.update_and_statistics(x, data.labels, observe=True)
    assert seen is None  # no forward pass sees the whole batch: the prior runs its own
    total, match = objective.trial(x, data.labels)
    assert torch.isfinite(total) and float(total) > float(match)


def test_cosine_with_precomputed_norm_equals_the_formula():
    g = [torch.randn(5, 3), torch.randn(7)]
    t = [torch.randn(5, 3), torch.randn(7)]
    dot = sum((a * b).sum() for a, b in zip(g, t))
    norms = math.sqrt(sum(float(a.pow(2).sum()) for a in g)) * math.sqrt(sum(float(b.pow(2).sum()) for b in t))
    assert float(COSTS.get("cosine")(g, t)) == pytest.approx(1 - float(dot) / norms, rel=1e-5)
    state = COSTS.get("cosine").prepare(t)
    assert float(state["norm"]) == pytest.approx(math.sqrt(sum(float(b.pow(2).sum()) for b in t)), rel=1e-6)


def test_precision_setting_is_scoped_and_checked():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.get_float32_matmul_precision())
    with matmul_precision("tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    with matmul_precision("fp32"):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    after = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    assert after == before and set(PRECISIONS) == {"fp32", "tf32"}
    with pytest.raises(ConfigError, match="precision"):
        build_attack("ig", {"precision": "fp16"})


def _config(index, **extra):
    return build_config(flags={"data.name": "samples", "data.index": [index], "data.image_size": 8,
                               "model.name": "lenet", "attack.name": "ig", "attack.iterations": 5,
                               "attack.signed": False, "client.seed": 11, **extra})


def test_run_many_equals_runs_and_records_the_batch_and_memory():
    configs = [_config(i) for i in (0, 1, 2)]
    many = run_many(configs)
    for config, result in zip(configs, many):
        alone = run(config)
        assert result.truth.indices == alone.truth.indices
        assert result.evaluation.psnr == pytest.approx(alone.evaluation.psnr, abs=0.05)
        m = result.metrics()
        assert m["attack_batch"] == 3 and alone.metrics()["attack_batch"] == 1
        assert m["peak_memory"]["kind"] in {"process-peak-rss", "cuda-allocated"}
        assert m["peak_memory"]["bytes"] is None or m["peak_memory"]["bytes"] > 0
    # another attack setting is another batch
    mixed = run_many([_config(0), _config(1, **{"attack.tv": 0.05})])
    assert [r.batch for r in mixed] == [1, 1]


def test_study_batches_give_the_runs_of_one_at_a_time(tmp_path, monkeypatch, capsys):
    args = ["sweep", "--grid", "attack.tv=1e-3", "--images", "0-2", "--set", "attack.iterations=5",
            "--set", "model.width=0.25", "--set", "data.image_size=16", "--set", "attack.signed=false",
            "--client-seed", "1", "-q"]
    code, _, err = fedleak(monkeypatch, capsys, *args, "--out", str(tmp_path / "one"))
    assert code == 0, err
    code, out, err = fedleak(monkeypatch, capsys, *args, "--out", str(tmp_path / "three"), "--batch", "3")
    assert code == 0, err
    assert "3 runs per batch" in out
    code, one, _ = fedleak(monkeypatch, capsys, "runs", "export", str(tmp_path / "one"), "--json")
    code, three, _ = fedleak(monkeypatch, capsys, "runs", "export", str(tmp_path / "three"), "--json")
    rows = [{r["key"]: r for r in json.loads(text)["runs"]} for text in (one, three)]
    assert rows[0].keys() == rows[1].keys() and len(rows[0]) == 3  # the same runs, the same keys
    for key, row in rows[1].items():
        assert row["metrics"]["attack_batch"] == 3
        assert row["metrics"]["psnr"] == pytest.approx(rows[0][key]["metrics"]["psnr"], abs=0.05)
    code, _, err = fedleak(monkeypatch, capsys, *args, "--out", str(tmp_path / "ray"), "--backend", "ray",
                           "--batch", "2")
    assert code == 2 and "--batch applies to --backend local" in err


@pytest.mark.gpu
def test_run_many_on_cuda_matches_the_cpu():
    items = _clients(4, batch=1, model="lenet")
    a = build_attack("ig", {"iterations": 5, "restarts": 2, "signed": False, "init": "zeros"})
    cpu = a.run_many([p for _, p, _ in items], [k for *_, k in items], [0] * 4)
    on_gpu = _clients(4, batch=1, model="lenet", device="cuda")
    gpu = a.run_many([p for _, p, _ in on_gpu], [k for *_, k in on_gpu], [0] * 4)
    for c, g in zip(cpu, gpu):
        assert g.images.device.type == "cuda" and g.labels.device.type == "cuda"
        torch.testing.assert_close(g.images.cpu(), c.images, rtol=1e-3, atol=1e-3)
        assert g.restart_losses == pytest.approx(c.restart_losses, rel=1e-3, abs=1e-5)


def test_a_failing_run_in_a_batch_gets_its_own_error_and_the_others_their_results():
    from fedleak.run_unit import RunSpec, attempt_many

    good = [RunSpec(_config(i).model_dump(mode="json")) for i in (0, 1)]
    bad = RunSpec(_config(0).model_dump(mode="json") | {"data": {**_config(0).model_dump(mode="json")["data"],
                                                                  "index": [10_000]}})
    outcomes = attempt_many([good[0], bad, good[1]])
    assert [o.ok for o in outcomes] == [True, False, True]
    assert "10000" in outcomes[1].error and "\n" not in outcomes[1].error
    assert [o.key for o in outcomes] == [good[0].key, bad.key, good[1].key]
    assert outcomes[0].metrics["attack_batch"] == 1  # the batch failed, so each ran alone
