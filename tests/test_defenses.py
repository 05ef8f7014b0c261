"""Every obfuscation formula, the spec language, and the client applying defenses."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedleak.attacks import AttackerKnowledge
from fedleak.attacks.simulation import Simulation
from fedleak.defenses import DEFENSES, dp_epsilon, parse_defense
from fedleak.defenses.compression import keep_count
from fedleak.errors import ConfigError, DataError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientTraining, ClientData
from fedleak.models import create_model

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def apply(spec, update, seed=0):
    pipeline = parse_defense(spec)
    return pipeline.on_server(pipeline.on_client(update, gen(seed)), gen(seed))


def one(spec, t, seed=0):
    return apply(spec, {"w": t}, seed)["w"]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantize_distinct_values_and_error(bits):
    t = torch.rand(100000, generator=gen(1)) * 2 - 1  # every level is hit
    q = one(f"quantize:bits={bits}", t)
    levels = 2 ** (bits - 1) - 1
    assert torch.unique(q).numel() == 2 * levels + 1  # sign × levels, zero included
    scale = t.abs().max()
    assert float(q.abs().max()) == pytest.approx(float(scale))
    assert float((q - t).abs().max()) <= float(scale) / (2 * levels) + 1e-6
    # deterministic
    assert torch.equal(q, one(f"quantize:bits={bits}", t, seed=9))


def test_qsgd_is_unbiased_and_on_its_grid():
    t = torch.randn(64, generator=gen(2))
    s = 4
    draws = torch.stack([one(f"qsgd:levels={s}", t, seed=k) for k in range(3000)])
    norm = t.norm()
    grid = draws.abs() / norm * s
    assert torch.allclose(grid, grid.round(), atol=1e-4)  # multiples of ‖g‖₂/s
    assert (torch.sign(draws) * torch.sign(t) >= 0).all()
    # E[q] = g: the standard error of each mean is at most ‖g‖/(2s·√3000)
    tolerance = 4 * float(norm) / (2 * s * math.sqrt(3000))
    assert float((draws.mean(0) - t).abs().max()) < tolerance
    # ‖g‖₂, not max-abs, is the scale (the ROG release's defect): a level-s entry equals ‖g‖₂
    assert float(draws.abs().max()) <= float(norm) + 1e-5


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.95, 0.999])
def test_topk_keeps_exactly_k_per_tensor(sparsity):
    update = {"a": torch.randn(1000, generator=gen(3)), "b": torch.randn(7, 13, generator=gen(4))}
    out = apply(f"topk:sparsity={sparsity}", update)
    for name, t in update.items():
        k = keep_count(t.numel(), sparsity)
        assert k == max(1, math.ceil(round((1 - sparsity) * t.numel(), 9)))
        kept = out[name] != 0
        assert int(kept.sum()) == k
        # the kept entries are the largest and keep their values
        if (~kept).any():
            assert float(t.abs()[kept].min()) >= float(t.abs()[~kept].max())
        assert torch.equal(out[name][kept], t[kept])


def test_topk_global_ranks_across_tensors_and_breaks_ties_by_index():
    update = {"a": torch.tensor([5.0, 1.0, 1.0]), "b": torch.tensor([4.0, 1.0, 3.0, 1.0])}
    out = apply("topk:sparsity=0.5,scope=global", update)  # k = ⌈0.5·7⌉ = 4: 5, 4, 3 and the first 1
    assert out["a"].tolist() == [5.0, 1.0, 0.0] and out["b"].tolist() == [4.0, 0.0, 3.0, 0.0]
    assert keep_count(10, 0.9) == 1 and keep_count(100, 0.95) == 5  # no float noise in ⌈·⌉
    ties = one("topk:sparsity=0.5", torch.ones(4))
    assert ties.tolist() == [1.0, 1.0, 0.0, 0.0]  # k entries exactly, not k − 1


def test_sign_and_mean_scale():
    t = torch.tensor([0.5, -2.0, 0.0, 3.5])  # mean |g| = 1.5 (a mean of 1 would hide the scale)
    assert one("sign", t).tolist() == [1.0, -1.0, 0.0, 1.0]
    assert one("sign:scale=mean", t).tolist() == pytest.approx([1.5, -1.5, 0.0, 1.5])


@pytest.mark.parametrize("snr", [-10.0, 0.0, 10.0, 20.0])
def test_noise_hits_the_target_snr(snr):
    t = torch.randn(50000, generator=gen(5)) * 0.01 + 0.003
    noisy = one(f"noise:snr_db={snr}", t)
    achieved = 10 * math.log10(float(t.var(unbiased=False)) / float((noisy - t).var(unbiased=False)))
    assert abs(achieved - snr) < 0.5
    assert torch.equal(one("noise:snr_db=inf", t), t)


def test_clip_global_and_per_tensor():
    update = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 4.0])}  # global norm 5
    out = apply("clip:c=1", update)
    assert float(torch.sqrt(sum(v.pow(2).sum() for v in out.values()))) == pytest.approx(1.0)
    assert out["a"].tolist() == pytest.approx([0.6, 0.0])
    per = apply("clip:c=1,scope=tensor", update)
    assert per["a"].tolist() == pytest.approx([1.0, 0.0]) and per["b"].tolist() == pytest.approx([0.0, 1.0])
    small = apply("clip:c=10", update)
    assert torch.equal(small["a"], update["a"])


def test_prune_follows_the_percentile_threshold():
    t = torch.randn(1001, generator=gen(6))
    out = one("prune:ratio=0.9", t)
    threshold = np.percentile(t.abs().numpy(), 90)
    assert torch.equal(out != 0, torch.from_numpy(t.abs().numpy() >= threshold))
    assert int((out == 0).sum()) == 900


def test_composition_runs_left_to_right():
    t = torch.randn(100, generator=gen(7))
    both = one("topk:sparsity=0.9+sign", t)
    assert int((both != 0).sum()) == 10 and set(both.unique().tolist()) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("quantize:bits=0", "defense 'quantize': bits"),
        ("topk:sparsity=1", "defense 'topk': sparsity"),
        ("topk:sparsity=1.5", "defense 'topk': sparsity"),
        ("topk:ratio=0.5", "has no setting 'ratio'"),
        ("qsgd:levels=0", "levels"),
        ("noise:snr=3", "has no setting 'snr'"),
        ("gauss", "unknown defense 'gauss'"),
        ("quantize:bits", "expected key=value"),
        ("quantize:bits=3,bits=4", "given twice"),
        ("sign+", "empty stage"),
        ("aggregate:clients=2+aggregate:clients=3", "more than one aggregate"),
        ("dpsgd:clip=0", "clip"),
    ],
)
def test_impossible_specs_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_defense(spec)
    assert "\n" not in str(info.value)


def test_canonical_spec_round_trips():
    spec = "clip:c=1+noise:snr_db=0+topk:sparsity=0.95,scope=global+aggregate:clients=4+quantize:bits=3"
    canonical = parse_defense(spec).spec
    assert parse_defense(canonical).spec == canonical
    assert canonical.startswith("clip:c=1.0,scope=global+noise:snr_db=0.0")
    assert parse_defense("none").spec is None and parse_defense(None).stages == ()
    assert set(DEFENSES.names()) == {"aggregate", "clip", "dpsgd", "noise", "prune", "qsgd", "quantize", "sign", "soteria", "topk"}


def _data(n=4, size=8, seed=0):
    g = gen(seed)
    return ClientData(torch.rand(n, 3, size, size, generator=g), torch.arange(n) % 5)


def test_client_applies_the_defense_and_the_payload_records_it():
    model = create_model("lenet", 5, 3, 8, seed=0)
    data = _data(2)
    plain = Client(model, Normalization(MEAN, STD)).update(data)
    defended = Client(model, Normalization(MEAN, STD), defense="topk:sparsity=0.9").update(data)
    assert plain.hyper.defense is None and defended.hyper.defense == "topk:sparsity=0.9,scope=tensor"
    for name, t in plain.update.items():
        expected = one("topk:sparsity=0.9", t)
        assert torch.equal(defended.update[name], expected)


def _per_sample_grads(model, x, y):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def test_dpsgd_clips_every_sample_and_adds_calibrated_noise():
    model = create_model("lenet", 5, 3, 8, seed=0)
    data = _data(4)
    x = (data.images - 0.5) / 0.25
    per = _per_sample_grads(model, x, data.labels)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()))
    clip = float(norms.median())  # some samples above, some below C
    assert (norms > clip).any() and (norms < clip).any()
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    expected = {n: (g * factor.view(-1, *[1] * (g.ndim - 1))).sum(0) / 4 for n, g in per.items()}
    quiet = Client(model, Normalization(MEAN, STD), defense=f"dpsgd:clip={clip},noise_multiplier=0").update(data)
    for n in expected:  # every sample, the first included, is clipped
        assert torch.allclose(quiet.update[n], expected[n], atol=1e-6)
    noisy = Client(model, Normalization(MEAN, STD), defense=f"dpsgd:clip={clip},noise_multiplier=2").update(data)
    residual = torch.cat([(noisy.update[n] - expected[n]).flatten() for n in expected])
    assert float(residual.std()) == pytest.approx(2 * clip / 4, rel=0.1)  # σ·C/B per coordinate


def test_dpsgd_refuses_batch_norm_and_reports_epsilon():
    model = create_model("convnet", 5, 3, 9, width=0.25, seed=0)
    with pytest.raises(ConfigError, match="norm=group"):
        Client(model, Normalization(MEAN, STD), defense="dpsgd").update(_data(2, size=9))
    grouped = create_model("convnet", 5, 3, 9, width=0.25, seed=0, norm="group")
    client = Client(grouped, Normalization(MEAN, STD), defense="dpsgd:noise_multiplier=1.1")
    payload = client.update(_data(2, size=9))
    info = client.privacy(payload.hyper)["dpsgd"]
    assert info["steps"] == 1 and info["sample_rate"] == 1.0
    assert info["epsilon"] == pytest.approx(dp_epsilon(1.1, 1.0, 1, 1e-5))
    assert dp_epsilon(2.0, 0.01, 1000, 1e-5) < dp_epsilon(1.0, 0.01, 1000, 1e-5) < dp_epsilon(1.0, 0.01, 5000, 1e-5)
    assert 0 < dp_epsilon(1.1, 0.01, 1000, 1e-5) < 10
    assert math.isinf(dp_epsilon(0.0, 0.01, 10, 1e-5))


@pytest.mark.parametrize("protocol, extra", [("fedsgd", {}), ("fedavg", {"lr": 0.1, "local_steps": 2})])
def test_aggregation_is_the_mean_of_clients_and_the_attacker_can_simulate_it(protocol, extra):
    model = create_model("lenet", 5, 3, 8, seed=0)
    data = _data(4)
    agg = Client(model, Normalization(MEAN, STD), ClientTraining(protocol, **extra), defense="aggregate:clients=2").update(data)
    assert agg.hyper.batch_size == 2 and agg.hyper.clients == 2 and agg.hyper.observed_images == 4
    halves = [Client(model, Normalization(MEAN, STD), ClientTraining(protocol, **extra)).update(ClientData(data.images[s], data.labels[s]))
              for s in (slice(0, 2), slice(2, 4))]
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 5, MEAN, STD)
    simulated = Simulation(agg, knowledge).update((data.images - 0.5) / 0.25, data.labels)
    for n, t in agg.update.items():
        assert torch.allclose(t, (halves[0].update[n] + halves[1].update[n]) / 2, atol=1e-6)
        assert torch.allclose(simulated[n], t, atol=1e-5)
    with pytest.raises(DataError, match="4 images cannot be split among 3 clients"):
        Client(model, Normalization(MEAN, STD), defense="aggregate:clients=3").update(data)


def test_stages_after_aggregation_act_on_the_mean():
    model = create_model("lenet", 5, 3, 8, seed=0)
    data = _data(4)
    payload = Client(model, Normalization(MEAN, STD), defense="aggregate:clients=2+sign").update(data)
    for t in payload.update.values():
        assert set(t.unique().tolist()) <= {-1.0, 0.0, 1.0}
    before = Client(model, Normalization(MEAN, STD), defense="sign+aggregate:clients=4").update(data)
    values = torch.cat([t.flatten() for t in before.update.values()]).unique().tolist()
    assert set(values) <= {-1.0, -0.5, 0.0, 0.5, 1.0} and {-0.5, 0.5} & set(values)  # means of 4 signs


def test_canonical_spec_with_unset_options_parses_back():
    # regression: "sample_rate=None" was written into the canonical DP-SGD spec and could not be re-read
    canonical = parse_defense("dpsgd:clip=1").spec
    assert "None" not in canonical and parse_defense(canonical).spec == canonical


@pytest.mark.parametrize("spec", ["clip:c=0.05", "clip:c=0.01,scope=tensor", "clip:c=0.05+aggregate:clients=2"])
@pytest.mark.parametrize("protocol, extra", [("fedsgd", {}), ("fedavg", {"lr": 0.1, "local_steps": 2})])
def test_the_attacker_re_runs_clipping(spec, protocol, extra):
    """Clipping is deterministic and public: the simulated update equals the clipped one (regression:
    ROG's L2 matching compared an unclipped simulation with the clipped update)."""
    model = create_model("lenet", 5, 3, 8, seed=0)
    data = _data(4)
    payload = Client(model, Normalization(MEAN, STD), ClientTraining(protocol, **extra), defense=spec).update(data)
    plain = Client(model, Normalization(MEAN, STD), ClientTraining(protocol, **extra)).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 8, 8), 5, MEAN, STD)
    simulated = Simulation(payload, knowledge).update((data.images - 0.5) / 0.25, data.labels)
    assert any(not torch.allclose(plain.update[n], t) for n, t in payload.update.items())  # clipping acted
    for n, t in payload.update.items():
        assert torch.allclose(simulated[n], t, atol=1e-6, rtol=1e-4)


def test_simulation_stops_at_the_first_random_stage():
    pipeline = parse_defense("clip:c=0.1+noise:snr_db=0+clip:c=0.01")
    update = {"w": torch.full((4,), 1.0)}
    assert torch.allclose(pipeline.simulate_client(update)["w"], torch.full((4,), 0.05))  # only the first clip


def test_qsgd_with_the_rog_releases_max_scale_is_unbiased_on_its_finer_grid():
    # The ROG authors' QSGD: max|g| and s − 1 steps; a hand-made tensor, so the grid is known exactly.
    t = torch.tensor([0.3, -0.15, 0.6, 0.0])
    draws = torch.stack([one("qsgd:levels=4,scale=max", t, seed=k) for k in range(4000)])
    steps = draws / (0.6 / 3)  # the grid: multiples of max|g|/(s − 1) = 0.2
    assert torch.allclose(steps, steps.round(), atol=1e-5)
    assert float(draws[:, 2].abs().max()) == pytest.approx(0.6)  # the largest entry is kept exactly
    assert set(steps[:, 0].round().tolist()) == {1.0, 2.0}  # 0.3 lies between the steps 0.2 and 0.4
    assert (draws[:, 3] == 0).all()
    assert float((draws.mean(0) - t).abs().max()) < 0.01  # E[q] = g (s.e. ≤ 0.1/√4000 ≈ 0.0016)
    # QSGD proper on the same tensor: ‖g‖₂/s steps, so the fine grid above is the release's, not ours
    l2 = one("qsgd:levels=4", t, seed=0) / (float(t.norm()) / 4)
    assert torch.allclose(l2, l2.round(), atol=1e-5)
    with pytest.raises(ConfigError, match="at least 2"):
        parse_defense("qsgd:levels=1,scale=max")
