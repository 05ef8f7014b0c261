"""`fedleak study worst-case`: every attack that applies under the granted threat model, per image
the strongest result, per attack its success rate, per defense a verdict."""

import json

import pytest

from fedleak.errors import ConfigError
from fedleak.studies import build_study
from fedleak.studies.planning import plan
from tests.studying import run_study
from tests.test_cli import fedleak

TINY = ["dataset=samples", "image_size=8", "model=mlp", "width=0.25", "images=[0, 1]", "device=cpu",
        "defenses=[none, 'noise:snr_db=0']",
        "attacks={ig: {name: ig, iterations: 2}, analytic: {name: analytic}, "
        "imprint: {name: imprint, server: 'imprint:bins=8'}}"]


def test_the_plan_runs_what_the_threat_model_grants_with_the_knowledge_it_grants():
    honest = build_study("worst-case", "cpu", overrides=TINY)
    planned = plan(honest)
    assert {p.run.params["attack"] for p in planned} == {"ig", "analytic"}  # imprint needs a malicious server
    assert honest.refused() == {"imprint": "needs model_manipulation, surrogate_data"}
    assert all(p.config.threat == "B" and not p.config.knowledge.labels for p in planned)
    assert len(planned) == 2 * 2 * 2  # attacks × defenses × images
    malicious = plan(build_study("worst-case", "cpu", overrides=[*TINY, "threat=H"]))
    assert {p.run.params["attack"] for p in malicious} == {"ig", "analytic", "imprint"}
    assert all(p.config.knowledge.labels and p.config.knowledge.bn_stats for p in malicious)
    assert {p.config.server.modification.split(":")[0] for p in malicious if p.run.params["attack"] == "imprint"} == {"imprint"}
    with pytest.raises(ConfigError, match="do not split into batches of 3"):
        build_study("worst-case", "cpu", overrides=[*TINY, "batch_size=3"])
    with pytest.raises(ConfigError, match="unknown threat model"):
        build_study("worst-case", "cpu", overrides=[*TINY, "threat=Z"])


def test_the_worst_case_end_to_end_through_the_cli(tmp_path, monkeypatch, capsys):
    out = tmp_path / "wc"
    args = [a for o in [*TINY, "model=lenet"] for a in ("--set", o)]  # analytic needs a linear first layer
    code, _, err = fedleak(monkeypatch, capsys, "study", "worst-case", "--out", str(out), "-q", *args)
    assert code == 0, err
    rows = json.loads((out / "table.json").read_text())
    analytic = [r for r in rows if r["attack"] == "analytic"]
    assert analytic and all(r["applies"].startswith("n/a: ") and "fully connected" in r["applies"] for r in analytic)
    worst = {r["defense"]: r for r in rows if r["attack"] == "worst case"}
    assert set(worst) == {"none", "noise:snr_db=0"}
    for row in worst.values():  # IG at 2 of its 1000 iterations proves nothing either way
        assert row["verdict"] == "inconclusive" and "ig ran 2 of its 1000 iterations" in row["reason"]
        assert row["images"] == 2 and row["strongest"] == "ig"
    html = (out / "report.html").read_text()
    assert "Not run under this threat model: imprint" in html


def test_an_exact_attack_makes_the_worst_case_leak(tmp_path):
    study = build_study("worst-case", "cpu", overrides=TINY)
    out = tmp_path / "wc"
    outcome = run_study(study, "cpu", out, progress=False)
    assert outcome.ran == 8
    rows = json.loads((out / "table.json").read_text())
    exact = next(r for r in rows if r["attack"] == "analytic" and r["defense"] == "none")
    assert exact["applies"] == "yes" and exact["exact"] == 1.0 and exact["recovered"] == 1.0
    worst = next(r for r in rows if r["attack"] == "worst case" and r["defense"] == "none")
    assert worst["verdict"] == "leaks" and "by analytic" in worst["reason"] and worst["strongest"] == "analytic"
    assert worst["per_image"].count("analytic") == 2
    noisy = next(r for r in rows if r["attack"] == "analytic" and r["defense"] == "noise:snr_db=0")
    assert noisy["exact"] == 0.0  # noise at 0 dB breaks the exact ratio


def test_a_closed_form_attack_needs_no_iteration_minimum(tmp_path):
    """SPEAR through a first linear layer solves in closed form (0 iterations) although its settings
    count feature-inversion steps; that must not make a clean result inconclusive. With SSIM 1 as the
    bar no noisy reconstruction counts, so both closed-form attacks finishing means no leak found."""
    overrides = [*TINY[:5], "defenses=['noise:snr_db=0']", "ssim=1",
                 "attacks={spear: {name: spear}, analytic: {name: analytic}}"]
    out = tmp_path / "wc"
    run_study(build_study("worst-case", "cpu", overrides=overrides), "cpu", out, progress=False)
    rows = {r["attack"]: r for r in json.loads((out / "table.json").read_text())}
    for label in ("spear", "analytic"):
        assert rows[label]["applies"] == "yes" and rows[label]["images"] == 2
        assert rows[label]["iterations"] == 0 and rows[label]["minimum"] == 0
        assert rows[label]["exact"] == 0.0 and rows[label]["recovered"] == 0.0
    worst = rows["worst case"]
    assert worst["verdict"] == "no leak found", worst["reason"]
    assert "2 attacks at their minimum budgets" in worst["reason"]
