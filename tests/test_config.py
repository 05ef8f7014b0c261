import pytest

from fedleak.config import build_config, parse_override
from fedleak.errors import ConfigError


def test_layers_override_in_order(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("seed: 3\nmodel: {name: lenet, width: 0.5}\nattack: {name: ig, iterations: 50}\n")
    cfg = build_config(f, {"model.width": 2.0, "data.index": "1,2"}, ["attack.iterations=7", "seed=9"])
    assert cfg.seed == 9 and cfg.model.name == "lenet" and cfg.model.width == 2.0
    assert cfg.attack.settings() == {"iterations": 7}
    assert cfg.data.index == [1, 2]


def test_override_values_are_yaml():
    assert parse_override("attack.tv=1e-3") == (["attack", "tv"], 1e-3)
    assert parse_override("knowledge.labels=true") == (["knowledge", "labels"], True)
    assert parse_override("data.index=[1, 2]") == (["data", "index"], [1, 2])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["attack.iterations"], "malformed --set"),
        (["=3"], "malformed --set"),
        (["data..name=x"], "malformed --set"),
        (["data.nmae=x"], "unknown config key 'data.nmae'"),
        (["client.batch_size=0"], "client.batch_size"),
        (["seed=abc"], "config seed"),
        (["data=3", "data.name=x"], "not a section"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(listy)
