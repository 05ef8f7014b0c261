"""Audit findings on the Flower integrations and ``fedleak inspect-model`` (issue 21, items 4, 11, 12):
seeded obfuscation noise that repeated every round, an inspection that checked nothing and said
"clean", a gate a server's train config could hang, ``fedleak study flower-audit`` and a verdict line
wrapped at 80 columns."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from rich.console import Console

import fedleak.cli
from fedleak.config import build_config
from fedleak.errors import ConfigError, FedleakError
from fedleak.fl.server import server_flags
from fedleak.inspect import FLAGGED, inspect_model, inspect_state, sent_model
from fedleak.integrations.flower import leakage_gate, obfuscation_mod, record_batch
from fedleak.integrations.flower.records import OutOfBounds, num_examples, public_hyperparameters
from fedleak.models import create_model
from fedleak.models.checkpoint import save_tensors
from tests.test_cli import fedleak as cli
from tests.test_flower import CLASSES, MEAN, STD, TRAIN, audit, client_data, one_exchange, task_identity, tiny_net

assert task_identity  # the autouse fixture of test_flower: Messages are made in a ServerApp-like process

SMALL = {"data.name": "samples", "data.image_size": 12, "model.width": 0.125}


# --- item 4: the seeded obfuscation mod's noise, per round and node ---------------------------------------------

def noised(mod, server_round, node, context=None):
    """The arrays the mod sends for one fixed trained model, in round ``server_round`` on ``node``."""
    global_model, trained = tiny_net(), tiny_net()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.arange(p.numel(), dtype=p.dtype).view(p.shape).sin())
    config = ConfigRecord(dict(TRAIN) | {"server-round": server_round, "fedleak-defense": "noise:snr_db=0"})
    message = Message(RecordDict({"arrays": ArrayRecord(global_model.state_dict()), "config": config}),
                      dst_node_id=node, message_type=MessageType.TRAIN)
    context = context or Context(run_id=7, node_id=node, node_config={}, state=RecordDict(), run_config={})
    reply = mod(message, context, lambda m, c: Message(RecordDict({
        "arrays": ArrayRecord(trained.state_dict()), "metrics": MetricRecord({"num-examples": 2})}), reply_to=m))
    assert not reply.has_error(), reply.error
    back = reply.content["arrays"]
    return torch.cat([torch.from_numpy(back[k].numpy()).flatten().float() for k in back])


def test_seeded_obfuscation_noise_is_fresh_each_round_and_node_and_reproducible():
    mod = obfuscation_mod(tiny_net, seed=3)
    node = Context(run_id=7, node_id=1000, node_config={}, state=RecordDict(), run_config={})
    first, second = noised(mod, 1, 1000, node), noised(mod, 2, 1000, node)
    assert not torch.equal(first, second)  # two rounds' noise differ: their difference keeps no clean update
    assert torch.equal(noised(obfuscation_mod(tiny_net, seed=3), 1, 1000), first)  # same seed, round, node
    assert torch.equal(noised(obfuscation_mod(tiny_net, seed=3), 2, 1000), noised(mod, 2, 1000))
    assert not torch.equal(noised(mod, 1, 1001), first)  # another node
    assert not torch.equal(noised(obfuscation_mod(tiny_net, seed=4), 1, 1000), first)  # another seed
    assert not torch.equal(noised(mod, 1, 1000, node), first)  # a server replaying round 1 gets new noise
    unseeded = obfuscation_mod(tiny_net)
    assert not torch.equal(noised(unseeded, 1, 1000), noised(unseeded, 1, 1000))  # fresh entropy


# --- item 11a: inspect by shape and role, not by name; nothing inspected is no verdict ---------------------------

def renamed(state, bias=True, order=False):
    """``state`` with every ``weight`` called ``w8`` (and ``bias`` ``b8``), optionally sorted by name as
    safetensors stores it."""
    out = {k.replace("weight", "w8").replace("bias", "b8" if bias else "bias"): v.clone() for k, v in state.items()}
    return dict(sorted(out.items())) if order else out


@pytest.fixture(scope="module")
def malicious():
    imprint, classes = sent_model(build_config(flags={**SMALL, **server_flags("imprint:bins=8")}))
    fished, _ = sent_model(build_config(flags={**SMALL, **server_flags("fishing:target=2")}))
    return {"imprint": imprint.state_dict(), "fishing": fished.state_dict()}, classes


@pytest.mark.parametrize("kind", ["imprint", "fishing"])
def test_a_renamed_malicious_model_is_flagged(malicious, kind):
    states, classes = malicious
    for state in (renamed(states[kind]), renamed(states[kind], bias=False), renamed(states[kind], order=True)):
        for count in (None, classes):
            findings = inspect_state(state, count)
            assert findings.kinds == [kind], (count, findings)
            assert findings.checked == len([v for v in state.values() if v.ndim >= 2 and v.is_floating_point()])
    if kind == "fishing":  # the classifier's bias, found beside its renamed weight, is named as such
        assert "classifier.b8" in {f.layer for f in inspect_state(renamed(states[kind]), classes).findings}


def test_an_imprint_layer_stored_as_a_convolution_kernel_is_flagged(malicious):
    state = dict(malicious[0]["imprint"])
    state["imprint.encoder.kernel"] = state.pop("imprint.encoder.weight").reshape(8, 3, 12, 12)
    assert "imprint.encoder.kernel" in {f.layer for f in inspect_state(state).findings}


def test_inspect_model_command_flags_renamed_files(malicious, tmp_path, monkeypatch, capsys):
    states, classes = malicious
    torch.save(renamed(states["imprint"]), tmp_path / "imprint.pt")
    save_tensors(tmp_path / "fishing.safetensors", renamed(states["fishing"]), {})  # stored sorted by name
    code, out, _ = cli(monkeypatch, capsys, "inspect-model", str(tmp_path / "imprint.pt"))
    assert code == FLAGGED and "imprint.encoder.w8" in out
    for extra in ([], ["--num-classes", str(classes)]):
        code, out, _ = cli(monkeypatch, capsys, "inspect-model", str(tmp_path / "fishing.safetensors"), *extra)
        assert code == FLAGGED and "classifier.w8" in out, out


def test_nothing_to_inspect_is_an_error_not_a_clean_verdict(tmp_path, monkeypatch, capsys):
    flat = {"w": torch.randn(100), "b": torch.randn(10), "step": torch.tensor(3.0), "n": torch.ones(4, 4).long()}
    for name, state in (("empty.pt", {}), ("flat.pt", flat), ("flat.safetensors", flat)):
        path = tmp_path / name
        save_tensors(path, state, {}) if name.endswith(".safetensors") else torch.save(state, path)
        code, out, err = cli(monkeypatch, capsys, "inspect-model", str(path))
        assert code == 2 and out == "" and err.startswith("fedleak: error:") and err.count("\n") == 1, (name, err)
        assert "nothing to inspect" in err
    with pytest.raises(FedleakError, match="nothing to inspect"):
        inspect_model(torch.nn.Sequential(torch.nn.ReLU()))


def trained_lenet():
    torch.manual_seed(0)
    model = create_model("lenet5", 4, 1, 16, width=0.25, seed=0)
    x, y = torch.randn(64, 1, 16, 16), torch.arange(64) % 4
    x = x + y.view(-1, 1, 1, 1).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model.train()(x), y).backward()
        opt.step()
    return model, 4


@pytest.mark.parametrize("name", ["convnet", "resnet18", "trained"])
def test_honest_models_stay_clean_whatever_their_names(name):
    if name == "trained":
        model, classes = trained_lenet()
        models = [model]
    else:
        classes = 10
        models = [create_model(name, classes, 3, 32, width=0.125, seed=seed) for seed in (0, 1)]
    for model in models:
        state = model.state_dict()
        for variant in (state, renamed(state), renamed(state, bias=False), renamed(state, order=True),
                        dict(sorted(state.items()))):
            for count in (None, classes):
                findings = inspect_state(variant, count)
                assert not findings.suspicious, (name, count, findings.findings)
                assert findings.checked > 0


# --- item 11b: the gate's bounds -----------------------------------------------------------------------------

def one_step_client(message: Message, context: Context) -> Message:
    """A client that trains as it decides (one SGD step), whatever the server's config asks for."""
    model = tiny_net()
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    images, labels = client_data(0)
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(message.content["config"]["lr"]))
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(x), labels).backward()
    optimizer.step()
    record_batch(context, message, images, labels)
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord({"num-examples": len(labels)})}), reply_to=message)


def gated(**kw) -> ClientApp:
    app = ClientApp(mods=[leakage_gate(tiny_net, num_classes=CLASSES, mean=MEAN, std=STD,
                                       **{"attack": {"name": "ig", "iterations": 30}, "budget_s": 60.0, **kw})])
    app.train()(one_step_client)
    return app


@pytest.mark.parametrize("asked", [{"local-steps": 10**6}, {"local-epochs": 10**9}])
def test_a_train_config_beyond_the_gates_bounds_is_refused_not_followed(asked):
    config = {k: v for k, v in TRAIN.items() if k != "local-epochs"} | asked
    _, reply = one_exchange(gated(budget_s=5.0), config)  # returns: no 10⁶ steps simulated
    assert reply.has_error() and not reply.has_content()
    reason = reply.error.reason
    assert "could not audit the update within its bounds" in reason and "inconclusive" in reason
    assert "max_steps" in reason and next(iter(asked)) in reason


def test_the_budget_bounds_the_simulated_local_steps_too():
    config = TRAIN | {"local-steps": 3000}  # allowed (max_steps), but far more work than 0.3 s holds
    _, reply = one_exchange(gated(budget_s=0.3, max_steps=10_000), config)
    assert reply.has_error() and "time budget of 0.3 s ran out" in reply.error.reason
    passes = int(re.search(r"after (\d+) forward passes", reply.error.reason).group(1))
    assert passes < 3000  # stopped inside the very first simulated update (the probe's 5 iterations need 15 000)


def test_a_bounded_gate_still_travels_to_a_simulation_worker():
    cloudpickle = pytest.importorskip("cloudpickle")  # how Ray ships the ClientApp and its mods
    app = cloudpickle.loads(cloudpickle.dumps(gated(budget_s=0.3, max_steps=10_000)))
    _, reply = one_exchange(app, TRAIN | {"local-steps": 3000})
    assert reply.has_error() and "time budget of 0.3 s ran out" in reply.error.reason  # its clock came along


def test_a_gate_within_its_bounds_still_scores():
    _, reply = one_exchange(gated(), TRAIN)
    assert not reply.has_error() and reply.content["metrics"]["fedleak-psnr"] > 0


def test_the_servers_audit_bounds_what_the_other_side_reports(tmp_path):
    with pytest.raises(OutOfBounds, match="max_examples"):
        num_examples(MetricRecord({"num-examples": 10**9}), "num-examples", "node 1's reply")
    with pytest.raises(OutOfBounds, match="'local-epochs' 1000000000"):
        public_hyperparameters({"lr": 0.1, "local-epochs": 10**9}, 2, tiny_net())
    assert public_hyperparameters({"lr": 0.1, "local-steps": 10**6}, 2, tiny_net(), max_steps=None)[0].local_steps \
        == 10**6
    with pytest.raises(ConfigError, match="max_steps"):
        audit(FedAvg(), tmp_path / "a", max_steps=0)


# --- item 11c: flower-audit is no command-line study -----------------------------------------------------------

def test_study_flower_audit_is_refused_and_its_folders_still_report(tmp_path, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "study", "flower-audit", "--out", str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1 and "LeakageAudit" in err and "fedleak report" in err
    assert not (tmp_path / "x").exists()
    code, _, err = cli(monkeypatch, capsys, "study", "flower-audt")
    assert code == 2 and "unknown study" in err and "flower-audit" not in err
    audit(FedAvg(), tmp_path / "audit")  # what the strategy writes, before any round
    code, out, _ = cli(monkeypatch, capsys, "report", str(tmp_path / "audit"))
    assert code == 0 and "report.html" in out


# --- item 12: the verdict is one line at any width ---------------------------------------------------------------

def test_inspect_model_verdict_is_one_line_without_columns(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("COLUMNS", raising=False)
    path = tmp_path / ("a-long-folder-name-" * 6) / "honest [v2].safetensors"
    save_tensors(path, create_model("convnet", 10, 3, 12, width=0.125, seed=0).state_dict(), {})
    for console in (fedleak.cli.console, Console(width=80)):  # as the CLI has it, and a narrow one
        monkeypatch.setattr(fedleak.cli.models, "console", console)  # the one inspect-model prints on
        code, out, _ = cli(monkeypatch, capsys, "inspect-model", str(path))
        assert code == 0
        (line,) = [ln for ln in out.splitlines() if "no imprint-like or fishing-like structure" in ln]
        assert line.startswith(f"{path}: ") and line.endswith("weight tensors"), out
