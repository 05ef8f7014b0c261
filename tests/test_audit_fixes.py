"""Regression tests for the audit's findings (issue 12, items 1, 4–11; issue 13's snr_db=-inf)."""

import copy
import json
import math

import pytest
import torch
import yaml

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.labels import LABEL_METHODS, wainakh
from fedleak.attacks.matching import GradientMatching
from fedleak.attacks.optimization import best_restart
from fedleak.attacks.simulation import Simulation
from fedleak.config import build_config
from fedleak.data import load_dataset, pick_indices
from fedleak.defenses import parse_defense
from fedleak.defenses.compression import keep_count
from fedleak.errors import ConfigError, FedleakError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientTraining, ClientData, Payload, PublicHyperparameters, normalize
from fedleak.fl.federated import FederatedSettings, federated_train, shards
from fedleak.models import create_model
from fedleak.models.batchnorm import batch_norm_layers
from fedleak.pipeline import run
from fedleak.studies.base import StudySettings
from tests.test_cli import fedleak

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TINY = {"data.image_size": 8, "model.name": "lenet", "metrics.lpips": [], "attack.iterations": 2}


def tiny_config(overrides=(), **flags):
    return build_config(flags={**TINY, **flags}, overrides=list(overrides))


def _data(b, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ClientData(torch.rand(b, 3, size, size, generator=g), torch.arange(b) % 5)


# 1. FedAvg with a public shuffle seed: the schedule is drawn outside vmap
@pytest.mark.parametrize("attack", ["ig", "rog"])
def test_fedavg_shuffle_seed_attack_runs(attack):
    cfg = tiny_config(**{"client.protocol": "fedavg", "client.batch_size": 2, "client.local_steps": 3,
                         "client.local_batch_size": 1, "client.shuffle_seed": 3, "attack.name": attack,
                         "attack.restarts": 2, "attack.iterations": 5, "knowledge.labels": True, "threat": "C"})
    rec = run(cfg).reconstruction
    assert len(rec.restart_losses) == 2 and all(math.isfinite(v) for v in rec.restart_losses)
    assert rec.trace[0]["loss"] > rec.matching_loss  # it optimised


# 4. attack.labels=auto: iDLG for one image, a batch method otherwise
def test_default_labels_auto_recovers_batches(monkeypatch, capsys, tmp_path):
    assert build_attack("ig").config.labels == "auto" and build_attack("rog").config.labels == "auto"
    model = create_model("lenet", 5, 3, 8, seed=0)
    one = Client(model, Normalization(MEAN, STD)).update(_data(1))
    batch = Client(model, Normalization(MEAN, STD)).update(_data(4))
    auto = LABEL_METHODS.get("auto")
    assert torch.equal(auto(one, 5), LABEL_METHODS.get("idlg")(one, 5))
    assert torch.equal(auto(batch, 5), LABEL_METHODS.get("ilrg")(batch, 5)) and auto(batch, 5).tolist() == [0, 1, 2, 3]
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--batch-size", "4", "--model", "lenet", "--iterations", "2",
                           "--set", "data.image_size=8", "--set", "metrics.lpips=[]", "-q", "--out", str(tmp_path / "r"))
    assert code == 0, err
    with pytest.raises(FedleakError, match=r"the batch has 4: set attack.labels=auto\|yin\|wainakh, or declare"):
        LABEL_METHODS.get("idlg")(batch, 5)


# 5. the client's seed is its own
def _attacker_subtracts_regenerated_noise(spec, seed):
    """What an attacker holding the run seed (and, as a bound, the clean update) gets by regenerating the
    client's noise with that seed and subtracting it."""
    result = run(tiny_config(**{"seed": seed, "client.defense": spec, "client.batch_size": 2}))
    model, truth = result.target.model, result.truth
    g = torch.Generator().manual_seed(seed)
    if spec.startswith("noise"):
        clean = Client(model, Normalization(result.target.mean, result.target.std)).update(truth).update
        noise = {n: t.var(unbiased=False).sqrt() * torch.randn(t.shape, generator=g) if t.numel() > 1
                 else torch.zeros_like(t) for n, t in clean.items()}  # σ at 0 dB; one-entry tensors get none
    else:  # DP-SGD: Opacus draws N(0, σ²C²) per parameter, in order, then divides by the batch size
        clipped = spec.replace("noise_multiplier=1", "noise_multiplier=0")
        clean = Client(model, Normalization(result.target.mean, result.target.std), defense=clipped).update(truth).update
        noise = {n: torch.normal(0.0, 1.0, size=t.shape, generator=g) / 2 for n, t in clean.items()}
    return {n: result.payload.update[n] - noise[n] for n in clean}, clean


@pytest.mark.parametrize("spec", ["noise:snr_db=0", "dpsgd:clip=1,noise_multiplier=1"])
def test_run_seed_does_not_regenerate_client_noise(spec):
    recovered, clean = _attacker_subtracts_regenerated_noise(spec, seed=3)
    assert not any(torch.allclose(recovered[n], clean[n], atol=1e-5) for n in clean if clean[n].numel() > 1)


def test_client_seed_fresh_when_unset_and_reproducible_when_set():
    flags = {"seed": 1, "client.defense": "noise:snr_db=0"}
    a, b = run(tiny_config(**flags)), run(tiny_config(**flags))
    assert a.metrics()["client_seed"] != b.metrics()["client_seed"]
    assert any(not torch.equal(t, b.payload.update[n]) for n, t in a.payload.update.items())
    same = [run(tiny_config(**flags, **{"client.seed": 11})).metrics() for _ in range(2)]
    for m in same:
        for key in ("seconds", "attack_seconds", "peak_memory"):  # how long and how much memory: not what
            m.pop(key)
    assert same[0] == same[1] and same[0]["client_seed"] == 11 and same[0]["seed"] == 1


def test_config_yaml_client_seed_reproduces_the_run(monkeypatch, capsys, tmp_path):
    args = ["attack", "--model", "lenet", "--iterations", "2", "--defense", "noise:snr_db=0", "-q",
            "--set", "data.image_size=8", "--set", "metrics.lpips=[]", "--set", "data.index=null"]
    assert fedleak(monkeypatch, capsys, *args, "--out", str(tmp_path / "a"))[0] == 0
    written = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert isinstance(written["client"]["seed"], int)
    assert fedleak(monkeypatch, capsys, "attack", "-c", str(tmp_path / "a" / "config.yaml"), "-q",
                   "--out", str(tmp_path / "b"))[0] == 0
    metrics = [json.loads((tmp_path / f / "metrics.json").read_text()) for f in ("a", "b")]
    keep = ("psnr", "ssim", "matching_loss", "restart_losses", "client_seed", "images")
    assert [{k: m[k] for k in keep} for m in metrics][0] == {k: metrics[1][k] for k in keep}


def test_seeded_image_draw_uses_the_client_seed():
    result = run(tiny_config(overrides=["data.index=null"], **{"seed": 0, "client.seed": 5, "client.batch_size": 3}))
    dataset = load_dataset("samples", None, image_size=8)
    assert list(result.truth.indices) == pick_indices(dataset, 3, seed=5)
    assert list(result.truth.indices) != pick_indices(dataset, 3, seed=0)


def test_study_client_seed_is_derived_per_run():
    from fedleak.studies.secret import client_seed

    for s in (StudySettings(), StudySettings(client_seed=7)):  # no public flag holds it (issue 21)
        assert "client.seed" not in s.flags(**{"data.index": [0], "seed": 0})
    secret = b"\x05" * 32
    first = client_seed(secret, 7, {"key": "a"})
    assert first == client_seed(secret, 7, {"key": "a"})
    assert first != client_seed(secret, 7, {"key": "b"})
    assert first != client_seed(secret, 8, {"key": "a"})
    assert first != client_seed(b"\x06" * 32, 7, {"key": "a"})


# 6. clip after aggregate: the attacker's simulation clips the mean as the client does
@pytest.mark.parametrize("protocol, extra", [("fedsgd", {}), ("fedavg", {"lr": 0.1, "local_steps": 2})])
def test_clip_after_aggregate_is_simulated(protocol, extra):
    model = create_model("lenet", 5, 3, 8, seed=0)
    data = _data(4)
    spec = "aggregate:clients=2+clip:c=0.1"
    payload = Client(model, Normalization(MEAN, STD), ClientTraining(protocol, **extra), defense=spec).update(data)
    plain = Client(model, Normalization(MEAN, STD), ClientTraining(protocol, **extra), defense="aggregate:clients=2").update(data)
    assert math.sqrt(sum(float(t.pow(2).sum()) for t in plain.update.values())) > 0.1  # clipping acts
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 5, MEAN, STD)
    simulated = Simulation(payload, knowledge).update(normalize(data.images, MEAN, STD), data.labels)
    for n, t in payload.update.items():
        torch.testing.assert_close(simulated[n], t, atol=1e-6, rtol=1e-4)
    # ROG's L2 matching: the true images match (almost) exactly, random ones do not
    objective = GradientMatching(payload, knowledge, "l2")
    at_truth = float(objective.matching_loss(normalize(data.images, MEAN, STD), data.labels).detach())
    at_random = float(objective.matching_loss(torch.randn(4, 3, 8, 8), data.labels).detach())
    assert at_truth < 1e-6 * at_random


def test_server_side_re_run_stops_where_the_client_side_did():
    update = {"w": torch.full((4,), 1.0)}
    stopped = parse_defense("noise:snr_db=0+aggregate:clients=2+clip:c=0.1")
    assert torch.equal(stopped.simulate_server(update)["w"], update["w"])
    partial = parse_defense("aggregate:clients=2+clip:c=0.1+noise:snr_db=0+clip:c=0.01")
    assert torch.allclose(partial.simulate_server(update)["w"], torch.full((4,), 0.05))


# 7. a diverged restart never wins
def test_nan_restart_never_wins():
    assert best_restart(torch.tensor([math.nan, 0.5, 0.2])) == 2
    assert best_restart(torch.tensor([math.inf, 0.5, math.nan, 0.7])) == 1
    with pytest.raises(FedleakError, match="every restart of the attack diverged"):
        best_restart(torch.tensor([math.nan, math.nan]))


@pytest.mark.parametrize("attack", ["ig", "rog"])
def test_nan_restart_never_wins_in_attacks(attack, monkeypatch):
    model = create_model("lenet", 5, 3, 8, seed=0)
    data = _data(1)
    payload = Client(model, Normalization(MEAN, STD)).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 5, MEAN, STD, labels=data.labels)
    monkeypatch.setattr(GradientMatching, "losses",  # the final scoring of every payload's restarts
                        lambda self, x, labels, data=None, chunk=None: torch.tensor([[math.nan, 0.5, 0.2]]))
    rec = build_attack(attack, {"iterations": 2, "restarts": 3}).run(payload, knowledge)
    assert rec.matching_loss == pytest.approx(0.2) and torch.isfinite(rec.images).all()


# 8. top-k keeps exactly ⌈(1 − p)·n⌉ entries
def test_topk_keep_count_is_exact():
    assert keep_count(20_000_000, 0.95) == 1_000_000
    assert keep_count(3, 0.3333333333) == 3  # 0.6666666667 · 3 = 2.0000000001
    kept = parse_defense("topk:sparsity=0.3333333333").on_client({"w": torch.tensor([3.0, -1.0, 2.0])}, None)
    assert int((kept["w"] != 0).sum()) == 3


# 9. Wainakh keeps the B most negative rows
def test_wainakh_keeps_the_most_negative_rows():
    sums = torch.tensor([-0.1, 1.0, -5.0, -4.0, 0.2])  # classes 0, 2, 3 negative; 2 and 3 the most
    weight = sums[:, None].repeat(1, 6) / 6
    payload = Payload({}, {"fc.weight": weight}, PublicHyperparameters("fedsgd", batch_size=2))
    assert wainakh(payload, 5).tolist() == [2, 3]


# 10. federated training aggregates batch-norm statistics
def test_federated_train_aggregates_batch_norm_statistics():
    torch.manual_seed(0)
    net = create_model("convnet", 2, 3, 12, width=0.25, seed=0)
    start = copy.deepcopy(net)
    g = torch.Generator().manual_seed(4)
    images, labels = torch.rand(10, 3, 12, 12, generator=g), torch.arange(10) % 2
    settings = FederatedSettings(clients=3, rounds=1, lr=0.1, batch_size=16, seed=2)
    federated_train(net, images, labels, images, labels, MEAN, STD, settings)
    parts = shards(10, 3, seed=2)  # sizes 4, 3, 3: one full-batch local step each
    local = []
    for part in parts:
        copy_ = copy.deepcopy(start).train()
        with torch.no_grad():
            copy_(normalize(images[part], MEAN, STD))
        local.append(dict(copy_.named_buffers()))
    weights = [len(p) for p in parts]
    bn = batch_norm_layers(net)
    assert bn
    for name, value in net.named_buffers():
        before = dict(start.named_buffers())[name]
        if torch.is_floating_point(value):
            expected = sum(w * b[name] for w, b in zip(weights, local)) / sum(weights)
            torch.testing.assert_close(value, expected)
            assert not torch.allclose(value, before)
        else:  # num_batches_tracked: each client's one batch counted
            assert int(value) == int(before) + len(parts)


def test_fedavg_payload_carries_buffers_and_fedsgd_none():
    net = create_model("convnet", 2, 3, 12, width=0.25, seed=0)
    fedavg = Client(net, Normalization(MEAN, STD), ClientTraining("fedavg", "train", lr=0.1)).update(_data(2, size=12))
    assert set(fedavg.buffers) == {n for n, _ in net.named_buffers()}
    assert not Client(net, Normalization(MEAN, STD), ClientTraining("fedsgd", "train")).update(_data(2, size=12)).buffers


# 11. DP-SGD's ε says which sampling it assumes
def test_dpsgd_epsilon_states_its_sampling_assumption():
    model = create_model("lenet", 5, 3, 8, seed=0)
    chunks = Client(model, Normalization(MEAN, STD), ClientTraining("fedavg", lr=0.1, local_steps=2, local_batch_size=1), defense="dpsgd")
    facts = chunks.privacy(chunks.update(_data(2)).hyper)["dpsgd"]
    assert "Poisson sampling q=0.5" in facts["accounting"] and facts["assumption_holds"] is False
    assert "fixed chunks, not Poisson" in facts["sampling"]
    full = Client(model, Normalization(MEAN, STD), defense="dpsgd")
    facts = full.privacy(full.update(_data(2)).hyper)["dpsgd"]
    assert facts["assumption_holds"] is True and "no sampling" in facts["sampling"]
    metrics = run(tiny_config(**{"client.defense": "dpsgd", "client.protocol": "fedavg", "client.batch_size": 2,
                                 "client.local_batch_size": 1, "client.shuffle_seed": 0,
                                 "knowledge.labels": True, "threat": "C"})).metrics()
    assert "shuffled chunks, not Poisson" in metrics["privacy"]["dpsgd"]["sampling"]


# issue 13: noise:snr_db=-inf or nan is refused in one line; inf means no noise
@pytest.mark.parametrize("value", ["-inf", "nan"])
def test_noise_snr_must_be_finite_or_inf(value):
    with pytest.raises(ConfigError, match="finite number of dB, or inf"):
        parse_defense(f"noise:snr_db={value}")
    with pytest.raises(ConfigError, match="finite number of dB"):
        build_config(flags={"client.defense": f"noise:snr_db={value}"})
    t = {"w": torch.randn(16)}
    assert torch.equal(parse_defense("noise:snr_db=inf").on_client(t, torch.Generator())["w"], t["w"])
