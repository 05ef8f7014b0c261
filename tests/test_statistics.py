"""The statistics of aggregated tables: n, mean and 95 % confidence intervals (t for means, Wilson for
rates), checked against SciPy, and shown in every study's table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from fedleak.report.study import stat_cell, table_view
from fedleak.store import RunRecord
from fedleak.studies.aggregate import proportion, stats, summarize, t_interval


@pytest.mark.parametrize("values", [[1.0, 2.0], [12.5, 13.1, 11.9, 14.0], list(np.linspace(-3, 7, 25))])
def test_the_t_interval_is_scipys(values):
    s = t_interval(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert s.n == len(values) and s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values, ddof=1))
    assert (s.ci_low, s.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_one_value_has_no_interval_and_none_has_no_mean():
    one = t_interval([3.0])
    assert (one.n, one.mean, one.std) == (1, 3.0, 0.0) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = t_interval([None, float("nan"), "n/a"])  # what n/a metrics store
    assert none.n == 0 and math.isnan(none.mean)
    assert t_interval([1.0, None, 3.0]).n == 2  # missing values are not counted


def test_the_wilson_interval_is_scipys():
    for k, n in ((0, 5), (3, 10), (10, 10), (1, 1)):
        cols = proportion("rate", k, n)
        ci = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert cols["rate"] == k / n and cols["rate_n"] == n
        assert (cols["rate_ci_low"], cols["rate_ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert math.isnan(proportion("rate", 0, 0)["rate"])


def record(alpha: float, psnr: float | None) -> RunRecord:
    return RunRecord("k", "tv", "r", {"alpha": alpha}, {}, 0, {"psnr": psnr})


def test_summarize_gives_every_metric_n_mean_and_interval():
    rows = summarize([record(0.0, 10.0), record(0.0, 12.0), record(0.0, None), record(1.0, 9.0)], ["alpha"], ["psnr"])
    first, second = rows
    assert first["runs"] == 3 and first["psnr_n"] == 2 and first["psnr"] == 11.0
    assert first == {**first, **stats("psnr", [10.0, 12.0])}
    assert second["psnr_n"] == 1 and math.isnan(second["psnr_ci_low"])


def test_the_page_shows_mean_and_interval_with_n_where_it_differs():
    rows = summarize([record(0.0, 10.0), record(0.0, 12.0), record(0.0, 11.0), record(0.0, None), record(1.0, 9.0)],
                     ["alpha"], ["psnr"])
    view = table_view(rows, identity={"alpha"})
    assert view["columns"] == ["alpha", "runs", "psnr"]
    low, high = rows[0]["psnr_ci_low"], rows[0]["psnr_ci_high"]
    assert view["rows"][0] == ["0", "4", f"11 [{low:.4g}, {high:.4g}] (n = 3)"]  # an interval from n = 3
    assert view["rows"][1] == ["1", "1", "9 [n/a]"]
    assert stat_cell({"x": 0.5, "x_std": 0.1}, "x") == "0.5 ± 0.1"  # a row with only the spread


def test_every_studys_table_has_intervals(tmp_path, cifar_root):
    from fedleak.studies import build_study
    from tests.studying import run_study
    import json

    study = build_study("stacking", "cpu", overrides=[f"root={cifar_root}", "image_size=8", "model=lenet",
                                                       "width=1.0", "images=[0, 1]", "batch_sizes=[2]",
                                                       "attack.iterations=2"])
    run_study(study, "cpu", tmp_path / "st", progress=False)
    row = json.loads((tmp_path / "st" / "table.json").read_text())[0]
    for metric in ("psnr", "ssim", "rate_a", "rate_b"):
        assert {f"{metric}_n", f"{metric}_ci_low", f"{metric}_ci_high"} <= set(row), metric
    assert row["rate_a_n"] == 4 and row["rate_b_n"] == 2  # reconstructions and originals
    assert row["rate_a_ci_low"] <= row["rate_a"] <= row["rate_a_ci_high"]
    assert "95 % confidence interval" in (tmp_path / "st" / "report.html").read_text()
