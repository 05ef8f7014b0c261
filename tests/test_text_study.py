"""`fedleak study text`: attack × batch size × sequence length × defense on a language model."""

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("faker")

from fedleak.data import load_dataset  # noqa: E402
from fedleak.errors import ConfigError  # noqa: E402
from fedleak.studies import build_study  # noqa: E402
from fedleak.studies.planning import plan  # noqa: E402
from tests.test_cli import fedleak  # noqa: E402

TINY = ["model=gpt2-tiny", "batch_sizes=[2]", "lengths=[12]", "defenses=[none]", "batches=1", "device=cpu",
        "attacks={dager: {name: dager}}", "data_options={n: 64}"]


def test_the_plan_covers_the_grid_and_gives_aggregated_clients_their_own_sentences():
    study = build_study("text", "cpu", overrides=[*TINY, "batch_sizes=[2, 3]", "lengths=[8, 12]", "batches=2",
                                                  "defenses=[none, 'aggregate:clients=2']",
                                                  "defense_batch_sizes=[3]",
                                                  "attacks={dager: {name: dager}, "
                                                  "tag: {name: tag, iterations: 2, defenses: [none]}}"])
    planned = plan(study)
    # dager: B=2 without a defense (2 T × 2 batches), B=3 with both (2 T × 2 defenses × 2 batches);
    # tag only without a defense: 2 B × 2 T × 2 batches
    assert len(planned) == 4 + 8 + 8
    assert {p.run.params["batch_size"] for p in planned if p.run.params["defense"] != "none"} == {3}
    cell = [p for p in planned if p.run.params["attack"] == "dager" and p.run.params["batch_size"] == 3
            and p.run.params["length"] == 8 and p.run.params["defense"] == "aggregate:clients=2"]
    assert [p.config.data.index for p in cell] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    assert all(p.config.client.batch_size == 3 and p.config.data.options["seq_len"] == 8 for p in cell)
    tag = [p for p in planned if p.run.params["attack"] == "tag"]
    assert {p.config.attack.name for p in tag} == {"tag"} and all(p.config.client.defense is None for p in tag)
    with pytest.raises(ConfigError, match="names no attack"):
        build_study("text", "cpu", overrides=[*TINY, "attacks={x: {iterations: 2}}"])
    with pytest.raises(ConfigError, match="positive integers"):
        build_study("text", "cpu", overrides=[*TINY, "batch_sizes=[0]"])


@pytest.mark.slow  # about 20 s on the 2-core CPU (the report's figures, BPE training, two dataset loads)
def test_dager_recovers_a_small_batch_exactly_end_to_end_through_the_cli(tmp_path, monkeypatch, capsys):
    out = tmp_path / "text"
    args = [a for o in TINY for a in ("--set", o)]
    code, _, err = fedleak(monkeypatch, capsys, "study", "text", "--out", str(out), "-q", *args)
    assert code == 0, err
    rows = json.loads((out / "table.json").read_text())
    assert len(rows) == 1
    row = rows[0]
    assert (row["attack"], row["batch_size"], row["length"], row["defense"]) == ("dager", 2, 12, "none")
    assert row["runs"] == 1 and row["sequences"] == 2
    # B·T = 24 tokens < d = 128: DAGER's span test is exact, so every sequence comes back token for token
    assert row["exact"] == 1.0 and row["rouge1"] == 1.0 and row["token_accuracy"] == 1.0
    assert row["exact_ci_low"] < 1.0 == row["exact_ci_high"]  # Wilson's interval at 2 of 2
    assert row["rouge1_no_leak"] < 1.0
    # the independent reference: the first two test sentences, as the dataset tokenizes them at T = 12
    data = load_dataset("pii", None, split="test", n=64, seq_len=12)
    truth = [data.tokenizer.decode([int(t) for t in row_ids]) for row_ids in data.tokens([0, 1])]
    record = next((out / "runs").iterdir())
    texts = json.loads((record / "sequences.json").read_text())
    assert sorted(t["original"] for t in texts) == sorted(truth)
    assert sorted(t["recovered"] for t in texts) == sorted(truth)
    # every PII span that fits in 12 tokens is in the (exact) reconstruction
    assert row["pii"] == 1.0 or row["pii_n"] == 0
    assert (out / "figures" / "exact-by-batch-size.png").is_file()
