"""Threat models: the letters and what they grant, what a run needs, the one-line refusal, what a
result records, and studies granting each run the weakest model its protocol needs."""

import json

import pytest

from fedleak.attacks import build_attack
from fedleak.config import build_config
from fedleak.errors import ConfigError
from fedleak.fl.server import server_flags
from fedleak.needs import check_run, run_needs
from fedleak.pipeline import run
from fedleak.run_unit import RunSpec
from fedleak.threats import CAPABILITIES, THREAT_MODELS, check, letters_granting, smallest, threat_model
from tests.test_cli import TINY, fedleak


def test_the_letters_are_ordered_and_grant_known_capabilities():
    assert list(THREAT_MODELS) == list("ABCDEFGH")
    assert THREAT_MODELS["A"].grants == frozenset()
    assert THREAT_MODELS["B"].grants == {"settings"}
    assert THREAT_MODELS["H"].grants == set(CAPABILITIES)
    for m in THREAT_MODELS.values():  # every model but A grants the public training settings
        assert m.grants <= set(CAPABILITIES) and (m.letter == "A" or "settings" in m.grants)
    assert smallest([]) == "A" and smallest(["settings"]) == "B" and smallest(["labels"]) == "C"
    assert smallest(["labels", "bn_stats"]) == "F" and smallest(["model_manipulation"]) == "G"
    assert smallest(["model_manipulation", "labels"]) == "H"
    assert letters_granting(["bn_stats"]) == ["D", "F", "H"]
    assert threat_model("c").letter == "C"
    with pytest.raises(ConfigError, match="unknown threat model 'Z'"):
        threat_model("Z")


def test_check_names_the_missing_capability_and_the_letters_that_grant_it():
    check("C", {"labels": "knowledge.labels=true"})  # granted: no error
    with pytest.raises(ConfigError) as err:
        check("B", {"settings": "a fedavg update", "labels": "knowledge.labels=true"})
    line = str(err.value)
    assert "\n" not in line and line.startswith("knowledge.labels=true needs the client's labels (labels)")
    assert "threat model B" in line and "--threat C" in line and "C, F, H" in line


def _needs(**flags):
    cfg = build_config(flags=flags)
    return run_needs(cfg, build_attack(cfg.attack.name, cfg.attack.settings()))


def test_what_a_run_needs_comes_from_its_knowledge_server_protocol_defense_and_attack():
    assert _needs() == {}  # FedSGD, no defense, no declared knowledge: the update alone (threat model A)
    assert set(_needs(**{"knowledge.labels": True, "knowledge.bn_stats": True})) == {"labels", "bn_stats"}
    assert set(_needs(**{"client.protocol": "fedavg", "client.lr": 0.1, "client.local_steps": 2})) == {"settings"}
    assert set(_needs(**{"client.defense": "noise:snr_db=10"})) == {"settings"}
    imprint = _needs(**server_flags("imprint:bins=8"))
    assert set(imprint) == {"model_manipulation", "surrogate_data"}
    assert "quantiles of public images" in imprint["surrogate_data"]
    rog = _needs(**{"attack.name": "rog", "attack.prior": "prior.safetensors"})
    assert rog == {"surrogate_data": "attack rog's restoration prior prior.safetensors"}
    assert _needs(**{"attack.name": "rog"}) == {}


def test_a_run_is_refused_before_any_work_and_records_the_threat_it_ran_under():
    labels = {"data.image_size": 8, "model.name": "lenet", "attack.iterations": 1, "knowledge.labels": True}
    with pytest.raises(ConfigError, match="threat model B .* --threat C"):
        run(build_config(flags=labels))
    result = run(build_config(flags={**labels, "threat": "C"}))
    assert result.config.threat == "C"
    assert result.metrics()["threat"] == {"granted": "C", "needs": {"labels": "knowledge.labels=true"},
                                          "smallest": "C", "enough": ["C", "F", "H"]}
    plain = run(build_config(flags={**labels, "knowledge.labels": False}))
    assert plain.config.threat == "B" and plain.metrics()["threat"]["smallest"] == "A"


def test_the_cli_refuses_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--known-labels", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "--threat C" in err and not out.exists()
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--threat", "Q", "--out", str(out))
    assert code == 2 and "unknown threat model 'Q'" in err and not out.exists()
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--known-labels", "--threat", "c", "--out", str(out))
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["threat"]["granted"] == "C"


def test_the_threat_granted_is_not_part_of_a_runs_identity():
    base = build_config(flags={"knowledge.labels": True}).model_dump(mode="json")
    keys = {RunSpec(config={**base, "threat": letter}, study="s").key for letter in ("C", "H", None)}
    assert len(keys) == 1


def test_a_study_grants_each_run_the_weakest_model_its_protocol_needs():
    from fedleak.studies.planning import with_threat

    assert with_threat(build_config(flags={"knowledge.labels": True})).threat == "C"
    assert with_threat(build_config(flags=server_flags("fishing:target=1"))).threat == "G"
    assert with_threat(build_config(flags={"threat": "H"})).threat == "H"  # an explicit grant stays
    cfg = with_threat(build_config(flags={"knowledge.bn_stats": True}))
    assert check_run(cfg, build_attack(cfg.attack.name, {}))["granted"] == "D"
