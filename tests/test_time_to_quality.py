"""IG's time-to-quality settings (issue 25, item 1): successive halving of restarts keeps the restart
a full run chooses and shrinks what is computed; coarse-to-fine's upsampling step and stages."""

from __future__ import annotations

import math

import pytest
import torch

from fedleak.attacks import build_attack, engine
from fedleak.attacks.engine import Variable, optimize_variable
from fedleak.attacks.inverting import upsample, warm_start
from fedleak.attacks.matching import GradientMatching
from fedleak.attacks.optimization import best_restart, halving_points, keep_best
from fedleak.errors import ConfigError
from tests.test_batched_attacks import _clients


def test_halving_points_halve_at_the_fractions():
    assert halving_points(1200, [0.125, 0.25, 0.5], 8) == {149: 4, 299: 2, 599: 1}
    assert halving_points(100, [0.5, 0.9], 2) == {49: 1}  # one restart left: nothing more to drop
    assert halving_points(100, [0.5], 5) == {49: 3}
    assert halving_points(100, [0.5], 1) == {}
    assert halving_points(4, [0.1], 8) == {}  # int(0.4) = 0: before the first step


def test_keep_best_ranks_by_loss_diverged_last():
    losses = torch.tensor([[3.0, float("nan"), 1.0, 2.0], [0.5, 0.1, float("inf"), 0.1]])
    assert keep_best(losses, 2).tolist() == [[2, 3], [1, 3]]
    assert keep_best(losses, 3).tolist() == [[0, 2, 3], [0, 1, 3]]


class Quadratic:
    """A stand-in objective: trial loss ‖x − target‖² (x: P×R×D); records the restarts it computes."""

    def __init__(self, target: torch.Tensor) -> None:
        self.count, self.data, self.target, self.widths = 1, {"t": target[None]}, target, []

    def gradients(self, x, labels, data=None, chunk=None):
        self.widths.append(x.shape[1])
        return 2 * (x - self.target), ((x - self.target) ** 2).sum(-1)

    def losses(self, x, labels, data=None, chunk=None):
        return ((x - self.target) ** 2).sum(-1)


def _quadratic_run(halve):
    """Four restarts of signed Adam (lr 0.1, 30 steps) on ‖x − 0‖², D = 16, built so that the leader
    when the halving reads the losses (those the first step computed) is not the final winner: restart 0 is off in
    one coordinate by 6 (loss 36, and still 9 after 30 steps), restart 1 by 2 in every coordinate
    (loss 64, at the optimum after 20 steps), restarts 2 and 3 by 5 and 6 everywhere (still ≥ 64)."""
    start = torch.zeros(1, 4, 16)
    start[0, 0, 0], start[0, 1], start[0, 2], start[0, 3] = 6.0, 2.0, 5.0, 6.0
    value = start.clone().requires_grad_(True)
    objective = Quadratic(torch.zeros(16))
    variable = Variable(value, grad_transform=torch.sign)
    optimizer = torch.optim.Adam([value], lr=0.1)
    (result,) = optimize_variable(objective, variable, torch.zeros(1, 1), optimizer, None, 30, None, 0.0, None,  # type: ignore[arg-type]
                                  False, "test", 1, halve)
    return result, variable, objective


def test_halving_keeps_the_restart_a_full_run_chooses_where_the_leader_differs():
    full, full_var, full_obj = _quadratic_run(None)
    half, half_var, half_obj = _quadratic_run({0: 2})  # after the first step keep 2 of 4
    # The construction: the full run's winner is restart 1, yet restart 0 led when the halving looked.
    assert best_restart(full.final) == 1
    assert half.origin is not None and half.origin.tolist() == [0, 1]
    read = torch.tensor([36.0, 64.0, 400.0, 576.0])  # the losses the first step returned (before it)
    assert torch.argmin(read) == 0
    winner = best_restart(half.final)
    assert half.restart(winner) == 1
    assert torch.equal(half_var.value[0, winner], full_var.value[0, 1])  # the same steps, same image
    assert half.final[winner] == full.final[1]
    # The dropped restarts report the loss they were dropped at; the survivors their final one.
    losses = half.restart_losses()
    assert losses[2:].tolist() == [400.0, 576.0]
    assert losses[:2].tolist() == full.final[:2].tolist()
    # Dropping restarts shrinks what every later step computes.
    assert full_obj.widths == [4] * 30 and half_obj.widths == [4] + [2] * 29
    assert half_var.value.shape == (1, 2, 16)


def test_halved_ig_chooses_the_full_runs_restart(monkeypatch):
    items = _clients(2, batch=1, size=8)
    payloads, knows = [p for _, p, _ in items], [k for *_, k in items]
    widths: list[int] = []
    original = GradientMatching.gradients

    def recording(self, x, *args, **kwargs):
        widths.append(x.shape[1])
        return original(self, x, *args, **kwargs)

    full = build_attack("ig", {"iterations": 8, "restarts": 4}).run_many(payloads, knows, [0, 1])
    monkeypatch.setattr(GradientMatching, "gradients", recording)
    half = build_attack("ig", {"iterations": 8, "restarts": 4, "halving": [0.25, 0.5]}).run_many(payloads, knows,
                                                                                                 [0, 1])
    assert widths == [4] * 2 + [2] * 2 + [1] * 4
    kept = 0
    for f, h in zip(full, half):
        assert len(h.restart_losses) == 4 and h.iterations == 8
        # A survivor ends where it ends in the full run; a dropped restart reports an earlier loss.
        survivors = [r for r in range(4) if h.restart_losses[r] == pytest.approx(f.restart_losses[r], rel=1e-4)]
        assert len(survivors) == 1
        winner = f.restart_losses.index(f.matching_loss)
        if winner in survivors:
            kept += 1
            assert h.matching_loss == pytest.approx(f.matching_loss, rel=1e-5)
            torch.testing.assert_close(h.images, f.images, atol=1e-5, rtol=0)
    assert kept >= 1  # the construction: some payload's full-run winner survives the halving


def test_upsample_is_bilinear_with_half_pixel_centres():
    low = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).expand(2, 3, 1, 1, 2, 2)  # P×R×B×C×h×w
    out = upsample(low, (4, 4))
    assert out.shape == (2, 3, 1, 1, 4, 4)
    # Output centre i sits at source (i + ½)/2 − ½ = −¼, ¼, ¾, 1¼, clamped to [0, 1]: weights a.
    a = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = a[None, :] * 1.0 + a[:, None] * 2.0
    torch.testing.assert_close(out[1, 2, 0, 0], expected)


def test_warm_start_clamps_to_the_box():
    low = torch.tensor([[[-5.0, 0.5], [0.2, 9.0]], [[0.0, 0.0], [0.0, 0.0]]])[None]  # 1×C=2×2×2
    lower, upper = torch.tensor([-1.0, -0.5]).view(2, 1, 1), torch.tensor([1.0, 0.5]).view(2, 1, 1)
    x = warm_start(low, (3, 5), lower, upper)
    assert x.shape == (1, 2, 3, 5) and x.requires_grad and x.is_leaf
    free = upsample(low, (3, 5))
    torch.testing.assert_close(x.detach(), torch.maximum(torch.minimum(free, upper), lower))
    assert x[0, 0].min() == -1.0 and x[0, 0].max() == 1.0  # the box binds on channel 0
    assert (free[0, 0] < -1).any() and (free[0, 0] > 1).any()
    torch.testing.assert_close(warm_start(low, (3, 5)).detach(), free)  # no box: the upsampled values


def test_coarse_to_fine_runs_both_stages(monkeypatch):
    items = _clients(1, batch=2, size=8)
    (payload,), (know,) = [p for _, p, _ in items], [k for *_, k in items]
    shapes: list[tuple[int, ...]] = []
    original = GradientMatching.gradients

    def recording(self, x, *args, **kwargs):
        shapes.append(tuple(x.shape))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(GradientMatching, "gradients", recording)
    rec = build_attack("ig", {"iterations": 10, "restarts": 2, "log_every": 1,
                              "coarse": {"scale": 0.5, "share": 0.3}}).run(payload, know)
    assert shapes == [(1, 2, 2, 3, 8, 8)] * 10  # the model always sees full-resolution inputs
    assert rec.images.shape == (2, 3, 8, 8) and rec.iterations == 10 and len(rec.restart_losses) == 2
    steps = [row["iteration"] for row in rec.trace]
    assert steps == sorted(steps) and steps[0] == 0 and 3 in steps and 9 in steps
    assert all(math.isfinite(v) for v in rec.restart_losses)


def test_coarse_variable_is_low_resolution(monkeypatch):
    items = _clients(1, batch=1, size=8)
    (payload,), (know,) = [p for _, p, _ in items], [k for *_, k in items]
    seen: list[tuple[int, ...]] = []
    original = engine.optimize_variable

    def recording(objective, variable, *args, **kwargs):
        seen.append(tuple(variable.value.shape))
        return original(objective, variable, *args, **kwargs)

    monkeypatch.setattr(engine, "optimize_variable", recording)
    build_attack("ig", {"iterations": 6, "coarse": {"scale": 0.5, "share": 0.5}}).run(payload, know)
    assert seen == [(1, 1, 1, 3, 4, 4), (1, 1, 1, 3, 8, 8)]


@pytest.mark.parametrize("settings", [
    {"halving": [0.5, 0.25]}, {"halving": [1.0]}, {"coarse": {"scale": 1.5}}, {"coarse": {"share": 0}},
    {"coarse": {"size": 2}},
])
def test_bad_settings_are_config_errors(settings):
    with pytest.raises(ConfigError):
        build_attack("ig", settings)


def test_coarse_needs_a_step_in_each_stage():
    items = _clients(1, batch=1, size=8)
    (payload,), (know,) = [p for _, p, _ in items], [k for *_, k in items]
    with pytest.raises(ConfigError, match="coarse"):
        build_attack("ig", {"iterations": 2, "coarse": {"share": 0.3}}).run(payload, know)
