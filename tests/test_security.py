"""No file fedleak reads can make it run code: checkpoints, presets, YAML and CIFAR pickles."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedleak.errors import ConfigError, FedleakError
from fedleak.models import create_model
from fedleak.models.checkpoint import CheckpointInfo, read_info, save_checkpoint
from fedleak.models.external import refuse_external
from fedleak.presets import load_preset
from tests.test_cli import fedleak

GOOD = {"architecture": "mlp", "num_classes": 10, "in_channels": 3, "image_size": 8, "width": 1.0,
        "options": {"hidden": 16}}


def write_checkpoint(path: Path, metadata, state: dict | None = None) -> Path:
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    save_file(state or {"w": torch.zeros(1)}, str(path), metadata={"fedleak": text})
    return path


def weights(metadata: dict) -> dict:
    """The state dict of the model ``metadata`` describes."""
    m = metadata
    return create_model(m["architecture"], m["num_classes"], m["in_channels"], m["image_size"], m["width"],
                        **m["options"]).state_dict()


def one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fedleak: error:"), err
    return lines[0]


def os_system(marker: Path) -> dict:
    return {**GOOD, "architecture": "os:system", "options": {"command": f"touch {marker}"}}


def test_os_system_checkpoint_runs_nothing_when_attacked(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "PWNED"
    ckpt = write_checkpoint(tmp_path / "evil.safetensors", os_system(marker))
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--checkpoint", str(ckpt), "--iterations", "1",
                           "--out", str(tmp_path / "run"), "-q")
    assert "external model 'os:system'" in one_error_line(code, err)
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_os_system_checkpoint_runs_nothing_as_a_transfer_classifier(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "PWNED"
    ckpt = write_checkpoint(tmp_path / "evil.safetensors", os_system(marker))
    settings = ["dataset=samples", "image_size=8", "model=lenet", "width=1.0", "images=[0]", "batch_sizes=[1]",
                "attack.iterations=1", f"transfer=[{ckpt}]"]
    code, _, err = fedleak(monkeypatch, capsys, "study", "transfer", "--out", str(tmp_path / "study"), "-q",
                           *[a for s in settings for a in ("--set", s)])
    assert "external model 'os:system'" in one_error_line(code, err)
    assert not marker.exists()


def test_external_factory_in_metadata_needs_the_users_own_name(tmp_path):
    """A checkpoint trained with the user's own factory loads only when the user names it again."""
    name = "tests.byo_models:tiny"
    model = create_model(name, 3, 3, 8)
    path = save_checkpoint(tmp_path / "own.safetensors", model, CheckpointInfo(name, 3, 3, 8))
    with pytest.raises(ConfigError, match="external model 'tests.byo_models:tiny'"):
        read_info(path)
    with pytest.raises(ConfigError, match="external model"):
        read_info(path, named="tests.byo_models:other")
    assert read_info(path, named=name).architecture == name


def test_refuse_external_names_the_source():
    with pytest.raises(ConfigError, match=r"^study\.json names the external model 'os:system'"):
        refuse_external("os:system", "study.json")
    refuse_external("convnet", "study.json")  # a registered name passes


def test_valid_metadata_loads_with_declared_options_and_sizes(tmp_path):
    meta = {**GOOD, "mean": [0.5] * 3, "std": [0.2] * 3}
    info = read_info(write_checkpoint(tmp_path / "ok.safetensors", meta, weights(GOOD)))
    assert (info.architecture, info.options, info.image_size, info.mean) == ("mlp", {"hidden": 16}, 8, (0.5,) * 3)
    for size, expected in (([8, 12], (8, 12)), ([8, 8], 8)):
        meta = {**GOOD, "image_size": size}
        assert read_info(write_checkpoint(tmp_path / "hw.safetensors", meta, weights(meta))).image_size == expected


@pytest.mark.parametrize("change", [{"options": {"hidden": 10**9}}, {"num_classes": 100_000}, {"width": 16},
                                    {"image_size": 1024}])
def test_metadata_cannot_ask_for_a_model_larger_than_its_weights(tmp_path, monkeypatch, capsys, change):
    """Checked on the meta device: a hostile size allocates nothing before it is refused."""
    ckpt = write_checkpoint(tmp_path / "big.safetensors", {**GOOD, **change}, weights(GOOD))
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--checkpoint", str(ckpt), "--out", str(tmp_path / "run"),
                           "-q")
    assert "the metadata does not match the weights" in one_error_line(code, err)


BAD_METADATA = [
    ({"architecture": "nosuch"}, "architecture 'nosuch' is not a registered fedleak model"),
    ({"architecture": 7}, "field 'architecture' must be a string"),
    ({"architecture": "x" * 100_000}, "field 'architecture' must be a string"),
    ({"options": {"command": "touch x"}}, "model 'mlp' has no option 'command' (options: hidden, depth)"),
    ({"architecture": "lenet", "options": {"hidden": 16}}, "model 'lenet' has no option 'hidden' (options: none)"),
    ({"options": {"hidden": "16"}}, "option 'hidden' must be int, got '16'"),
    ({"options": {"hidden": True}}, "option 'hidden' must be int, got True"),
    ({"options": {"hidden": 1.5}}, "option 'hidden' must be int, got 1.5"),
    ({"architecture": "convnet", "options": {"norm": 5}}, "option 'norm' must be str, got 5"),
    ({"architecture": "convnet", "options": {"norm": ["batch"]}}, "option 'norm' must be str"),
    ({"options": [1, 2]}, "field 'options' must be an object with string keys"),
    ({"width": "1"}, "field 'width' must be a number in (0, 16.0]"),
    ({"width": 0}, "field 'width' must be a number"),
    ({"width": 1e9}, "field 'width' must be a number"),
    ({"width": float("nan")}, "field 'width' must be a number"),
    ({"width": True}, "field 'width' must be a number"),
    ({"image_size": "32"}, "field 'image_size' must be a positive integer ≤ 1024 or an [H, W] pair"),
    ({"image_size": 0}, "field 'image_size' must be"),
    ({"image_size": 8.0}, "field 'image_size' must be"),
    ({"image_size": [8]}, "field 'image_size' must be"),
    ({"image_size": [8, "x"]}, "field 'image_size' must be"),
    ({"image_size": 10**12}, "field 'image_size' must be"),
    ({"num_classes": 0}, "field 'num_classes' must be an integer from 1 to 100000"),
    ({"num_classes": True}, "field 'num_classes' must be an integer"),
    ({"in_channels": 2}, "field 'in_channels' must be 1 or 3"),
    ({"mean": [0.5], "std": [0.2]}, "mean and std must have one value per input channel (3)"),
    ({"std": [0, 0, 0], "mean": [0, 0, 0]}, "field 'std' must be a list"),
    ({"classes": "abc"}, "field 'classes' must be a list of strings"),
    ({"evil": 1}, "unknown field 'evil'"),
]


@pytest.mark.parametrize("change, message", BAD_METADATA, ids=[m for _, m in BAD_METADATA])
def test_bad_checkpoint_metadata_is_one_line(tmp_path, monkeypatch, capsys, change, message):
    ckpt = write_checkpoint(tmp_path / "bad.safetensors", {**GOOD, **change})
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--checkpoint", str(ckpt), "--out", str(tmp_path / "run"),
                           "-q")
    line = one_error_line(code, err)
    assert message in line and len(line) < 400  # an echoed value is cut short
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("metadata, message", [
    ("{not json", "unreadable fedleak metadata"),
    ("[1, 2]", "metadata is not a JSON object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "num_classes"}), "missing field 'num_classes'"),
    ("[" * 100_000 + "]" * 100_000, "unreadable fedleak metadata"),
])
def test_unreadable_checkpoint_metadata(tmp_path, metadata, message):
    with pytest.raises(FedleakError, match=message.replace("(", r"\(")) as info:
        read_info(write_checkpoint(tmp_path / "bad.safetensors", metadata))
    assert "\n" not in str(info.value)


def test_preset_names_are_not_paths(tmp_path, monkeypatch, capsys):
    # a YAML file outside the package that a traversal would have reached
    (tmp_path / "outside.yaml").write_text("name: ig\niterations: 1\n")
    package = Path(load_preset.__code__.co_filename).parent
    traversal = os.path.relpath(tmp_path / "outside", package)
    for name in (traversal, "../../x", "ig/../ig-limchan", "/etc/passwd", "IG", "", "-ig", "ig limchan"):
        with pytest.raises(ConfigError, match="is not a name"):
            load_preset(name)
    assert load_preset("ig-limchan")["name"] == "ig" and load_preset("ig") is None
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--attack", traversal, "--out", str(tmp_path / "run"),
                           "-q")
    assert "is not a name" in one_error_line(code, err)


def test_yaml_python_tags_are_refused(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "PWNED"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    config = tmp_path / "evil.yaml"
    config.write_text(f"seed: {tag}\n")
    for args in (["attack", "--config", str(config)], ["attack", "--set", f"seed={tag}"],
                 ["study", "tv", "--config", str(config)]):
        code, _, err = fedleak(monkeypatch, capsys, *args, "--out", str(tmp_path / "run"), "-q")
        one_error_line(code, err)
    assert not marker.exists() and not (tmp_path / "run").exists()


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("member", ["data", "labels", "batch"])
def test_malicious_cifar_pickle_runs_nothing(tmp_path, monkeypatch, capsys, member):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": b"x", b"labels": [0]}
    payload = Evil(marker) if member == "batch" else {**batch, member.encode(): Evil(marker)}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}))
    code, _, err = fedleak(monkeypatch, capsys, "attack", "--dataset", "cifar10", "--root", str(tmp_path),
                           "--out", str(tmp_path / "run"), "-q")
    assert "global posix.system is not allowed" in one_error_line(code, err)
    assert not marker.exists()
