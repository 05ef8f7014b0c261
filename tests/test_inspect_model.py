"""The client-side check: every malicious model fedleak builds is flagged, no honest registered model
is — untrained at several seeds and shapes, and after a little training — and the CLI says so."""

import json

import pytest
import torch
import torch.nn.functional as F

from fedleak.config import build_config
from fedleak.fl.server import MODIFICATIONS, server_flags
from fedleak.inspect import FLAGGED, Findings, inspect_model, inspect_state, sent_model
from fedleak.models import create_model
from fedleak.models.checkpoint import save_tensors
from fedleak.models.registry import MODELS
from tests.test_cli import fedleak as cli

SHAPES = [(10, 3, 32), (2, 1, 16)]  # (classes, channels, side)
SMALL = {"data.name": "samples", "data.image_size": 12, "model.width": 0.125}
MALICIOUS = ["imprint:bins=8", "imprint:bins=64", "imprint:bins=32,measure=random", "imprint:bins=16,fit=gaussian",
             "imprint:bins=1000,gain=1,scale=1", "fishing:target=0", "fishing:target=9,margin=5"]


def buildable(name, classes, channels, side):
    try:
        return create_model(name, classes, channels, side, width=0.125, seed=0)
    except Exception:  # a family that cannot take this shape (e.g. too small)
        return None


@pytest.mark.parametrize("name", MODELS.names())
def test_no_registered_honest_model_is_flagged(name):
    checked = 0
    for classes, channels, side in SHAPES:
        if buildable(name, classes, channels, side) is None:
            continue
        for seed in (0, 1, 2):
            model = create_model(name, classes, channels, side, width=0.125, seed=seed)
            findings = inspect_model(model, classes)
            assert not findings.suspicious, (name, seed, findings.findings)
            assert inspect_model(model).findings == ()  # without being told the class count too
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize("name", ["mlp", "convnet", "lenet5"])
def test_a_trained_honest_model_is_not_flagged(name):
    torch.manual_seed(0)
    model = create_model(name, 4, 1, 16, width=0.25, seed=0)
    x, y = torch.randn(64, 1, 16, 16), torch.arange(64) % 4
    x = x + y.view(-1, 1, 1, 1).float()  # learnable
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model.train()(x), y).backward()
        opt.step()
    assert (model.eval()(x).argmax(1) == y).float().mean() > 0.5  # it did learn
    assert not inspect_model(model, 4).suspicious


@pytest.mark.parametrize("spec", MALICIOUS)
@pytest.mark.parametrize("body", ["convnet", "mlp", "lenet"])
def test_every_malicious_model_fedleak_builds_is_flagged(spec, body):
    cfg = build_config(flags={**SMALL, "model.name": body, **server_flags(spec)})
    model, classes = sent_model(cfg)
    findings = inspect_model(model, classes)
    kind = spec.partition(":")[0]
    assert findings.suspicious and findings.kinds == [kind], findings.findings
    assert inspect_model(model).kinds == [kind]
    if kind == "imprint":
        assert any(f.layer == "imprint.encoder.weight" and "staggered" in f.detail for f in findings.findings)


TRAPS = ["trap:scale=1.2", "trap:scale=1.3", "trap:rate=0.125"]  # only a fully connected first layer (mlp)


@pytest.mark.parametrize("spec", TRAPS)
def test_every_trapped_mlp_is_flagged(spec):
    cfg = build_config(flags={**SMALL, "model.name": "mlp", **server_flags(spec)})
    model, classes = sent_model(cfg)
    assert "trap" in inspect_model(model, classes).kinds


def test_every_registered_modification_is_covered():
    assert {s.partition(":")[0] for s in [*MALICIOUS, *TRAPS]} == set(MODIFICATIONS.names())


def test_findings_read_from_weights_alone():
    cfg = build_config(flags={**SMALL, **server_flags("imprint:bins=16")})
    model, _ = sent_model(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert inspect_state(state).kinds == ["imprint"]
    findings = inspect_state(state)
    assert isinstance(findings, Findings) and findings.checked == len([k for k, v in state.items()
                                                                       if k.endswith("weight") and v.ndim >= 2])
    json.dumps(findings.as_dict())  # plain data (no infinities)


def test_inspect_model_command(tmp_path, monkeypatch, capsys):
    honest, classes = sent_model(build_config(flags=SMALL))
    fished, _ = sent_model(build_config(flags={**SMALL, **server_flags("fishing:target=2")}))
    save_tensors(tmp_path / "honest.safetensors", honest.state_dict(), {})
    torch.save(fished.state_dict(), tmp_path / "fished.pt")
    code, out, _ = cli(monkeypatch, capsys, "inspect-model", str(tmp_path / "honest.safetensors"))
    assert code == 0 and "no imprint-like or fishing-like structure" in out
    code, out, _ = cli(monkeypatch, capsys, "inspect-model", str(tmp_path / "fished.pt"), "--json",
                       "--num-classes", str(classes))
    assert code == FLAGGED and json.loads(out)["kinds"] == ["fishing"]
    code, out, _ = cli(monkeypatch, capsys, "inspect-model", "--from-payload", "--server", "imprint:bins=8",
                       "--set", "data.image_size=12", "--set", "model.width=0.125")
    assert code == FLAGGED and "imprint.encoder.weight" in out
    code, _, err = cli(monkeypatch, capsys, "inspect-model")
    assert code == 2 and "give a weights file or --from-payload" in err
    (tmp_path / "junk.safetensors").write_bytes(b"not a file of tensors")
    code, _, err = cli(monkeypatch, capsys, "inspect-model", str(tmp_path / "junk.safetensors"))
    assert code == 2 and err.startswith("fedleak: error:")
