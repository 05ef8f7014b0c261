"""The ``device`` setting end to end: resolution, recording, where tensors are made.

Without a GPU the CUDA tests skip with the reason; in their place two stand-ins run everywhere:
a factory audit (a ``TorchFunctionMode`` that records every tensor factory call made from
fedleak's own source without a ``device=``: each such call would put a tensor on the CPU under
``--device cuda``) along the client update, each defense, each attack and the metrics; and the
pieces whose code path has no host-side control flow run on PyTorch's ``meta`` device.

CPU and CUDA agree within a float tolerance, not bit for bit: kernels sum in other orders. The
pipeline test compares a deterministic run (zero initialisation, no random defense, TF32 off) and
allows 1e-4 relative on the payload and 0.05 dB PSNR after a few signed-gradient steps. Seeded
random draws come from a generator on the run's device, so a seed reproduces a run on one device;
CUDA's stream differs from the CPU's.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.overrides import TorchFunctionMode

import fedleak
from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.matching import GradientMatching
from fedleak.config import RunConfig, build_config
from fedleak.device import device_name, payload_device, resolve_device
from fedleak.errors import ConfigError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientTraining, ClientData, Payload
from fedleak.fl.client import normalize
from fedleak.fl.protocols import PROTOCOLS
from fedleak.defenses import batch_gradient, parse_defense
from fedleak.metrics import evaluate
from fedleak.metrics.image import psnr, ssim
from fedleak.models import create_model
from fedleak.pipeline import run
from tests.test_cli import fedleak as run_cli

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU: torch.cuda.is_available() is False here")


# ------------------------------------------------------------------------------------------ resolution

def test_the_setting_resolves_to_a_device_of_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda:0" if HAS_CUDA else "mps" if torch.backends.mps.is_available() else "cpu"
    assert device_name(resolve_device("auto")) == expected
    assert RunConfig().device == "auto"


def test_auto_and_cuda_n_follow_what_torch_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"'cuda:2' is not available here \(torch sees 2 CUDA GPU"):
        resolve_device("cuda:2")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the missing-device error cannot be shown")
def test_a_missing_device_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "attack", "--device", "cuda", "--iterations", "1",
                             "--out", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("fedleak: error: device 'cuda' is not available here")
    assert not (tmp_path / "run").exists()  # refused before anything ran or was written


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "tpu", ""])
def test_a_misspelt_device_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"^config device: device must be auto \| cpu \| cuda \| cuda:N \| mps"):
        build_config(overrides=[f"device={bad}"] if bad else ["device=''"])


def test_the_resolved_device_is_recorded_in_config_and_metrics(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "attack", "--device", "auto", "--iterations", "2", "-q",
                           "--out", str(out))
    assert code == 0, err
    resolved = device_name(resolve_device("auto"))
    assert yaml.safe_load((out / "config.yaml").read_text())["device"] == resolved
    assert json.loads((out / "metrics.json").read_text())["device"] == resolved
    # The recorded config reproduces the run on that device.
    assert build_config(out / "config.yaml").device == resolved


def test_print_config_shows_the_resolved_device(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "attack", "--print-config")
    assert code == 0 and yaml.safe_load(out)["device"] == device_name(resolve_device("auto"))


# ----------------------------------------------------------------------------- the host reads seldom

def test_the_loss_is_read_back_every_log_every_iterations(monkeypatch):
    import fedleak.attacks.optimization as optimization

    data, payload, knowledge = _round("convnet")
    reads = []
    real = optimization.finite_min
    monkeypatch.setattr(optimization, "finite_min", lambda losses: reads.append(1) or real(losses))
    rec = build_attack("ig", {"iterations": 25, "log_every": 10}).run(payload, knowledge)
    assert len(reads) == 3 + 1  # iterations 0, 10, 20 and the last
    assert [row["iteration"] for row in rec.trace if "loss" in row][:4] == [0, 10, 20, 24]
    assert rec.iterations == 25


def test_early_stopping_counts_the_iterations_between_reads():
    data, payload, knowledge = _round("convnet")
    # A plateau needs a 90 % improvement every 15 iterations: the read at 10 finds none (10 stale),
    # the read at 20 neither (20 ≥ 15): the attack stops after iteration 20, having read three times.
    rec = build_attack("ig", {"iterations": 200, "log_every": 10, "patience": 15, "min_delta": 0.9,
                              "schedule": "none"}).run(payload, knowledge)
    assert rec.iterations == 21


# ------------------------------------------------------------------------------------ factory audit

FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.rand,
             torch.randn, torch.randint, torch.randperm, torch.arange, torch.linspace, torch.eye}
SOURCE = str(Path(fedleak.__file__).parent)


class FactoryAudit(TorchFunctionMode):
    """Records each tensor factory call made directly from fedleak's source without ``device=``
    (such a call makes a CPU tensor whatever device the run asked for), and the device of every
    factory's result."""

    def __init__(self) -> None:
        super().__init__()
        self.undevised: list[str] = []
        self.devices: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES:
            caller = sys._getframe(1)
            where = caller.f_code.co_filename
            if where.startswith(SOURCE):
                if "device" not in kwargs:
                    self.undevised.append(f"{Path(where).relative_to(SOURCE)}:{caller.f_lineno} {func.__name__}")
                if isinstance(out, torch.Tensor):
                    self.devices.add(str(out.device))
        return out


def _round(model_name: str = "convnet", defense: str | None = None, protocol: str = "fedsgd", batch: int = 1,
           device: str = "cpu", **options):
    size, classes = 16, 4
    g = torch.Generator().manual_seed(0)
    data = ClientData(torch.rand(batch, 3, size, size, generator=g).to(device),
                      torch.arange(batch).remainder(classes).to(device))
    model = create_model(model_name, classes, 3, size, width=0.25 if model_name == "convnet" else 1.0,
                         seed=0, **options).to(device)
    fedavg = protocol == "fedavg"
    training = ClientTraining(protocol, lr=0.1 if fedavg else None, local_steps=2 if fedavg else 1,
                              local_batch_size=1 if fedavg else None, shuffle_seed=3 if fedavg else None)
    client = Client(model, Normalization(MEAN, STD), training, defense=defense, seed=5)
    payload = client.update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, size, size), classes, MEAN, STD,
                                  bn_stats=client.batch_norm_statistics(data))
    return data, payload, knowledge


@pytest.mark.parametrize("defense", [None, "clip:c=1+noise:snr_db=10", "qsgd:levels=4", "topk:sparsity=0.9",
                                     "sign", "prune:ratio=0.5", "quantize:bits=4", "aggregate:clients=2"])
@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_the_client_and_every_defense_name_their_device(defense, protocol):
    audit = FactoryAudit()
    with audit:
        _round(defense=defense, protocol=protocol, batch=2)
    assert audit.undevised == []


def test_dp_sgd_names_its_device():
    audit = FactoryAudit()
    with audit:
        _round("convnet", defense="dpsgd:clip=1,noise_multiplier=0.5", norm="group")
    assert audit.undevised == []


ATTACK_CASES = [
    ("ig", {"iterations": 2, "restarts": 2, "regularizers": {"bn": 1e-3}}, "fedsgd", 2),
    ("ig", {"iterations": 2, "init": "zeros"}, "fedavg", 2),
    ("rog", {"iterations": 2, "scale": 2}, "fedsgd", 1),
    ("rog", {"iterations": 2, "scale": 2}, "fedavg", 2),
    ("dlg", {"iterations": 1, "inner_steps": 2}, "fedsgd", 1),
    ("idlg", {"iterations": 1, "inner_steps": 2}, "fedsgd", 1),
]


@pytest.mark.parametrize("name,settings,protocol,batch", ATTACK_CASES)
def test_every_attack_and_the_metrics_name_their_device(name, settings, protocol, batch):
    data, payload, knowledge = _round("convnet", protocol=protocol, batch=batch)
    audit = FactoryAudit()
    with audit:
        rec = build_attack(name, settings).run(payload, knowledge)
        evaluate(rec, data)
    assert audit.undevised == []
    assert audit.devices <= {"cpu"}


def test_the_analytic_attack_and_label_recovery_name_their_device():
    data, payload, knowledge = _round("mlp")
    audit = FactoryAudit()
    with audit:
        rec = build_attack("analytic", {}).run(payload, knowledge)
        evaluate(rec, data)
    assert audit.undevised == []
    data, payload, knowledge = _round("convnet", batch=3)
    with audit:
        for method in ("yin", "wainakh"):
            build_attack("ig", {"iterations": 1, "labels": method}).run(payload, knowledge)
    assert audit.undevised == []


def test_the_audit_catches_a_tensor_made_without_a_device():
    """The stand-in check itself: a factory call without ``device=`` in fedleak's source is caught."""
    audit = FactoryAudit()
    with audit:
        eval(compile("torch.zeros(2, device='cpu')", str(Path(SOURCE) / "probe.py"), "eval"))
        eval(compile("torch.zeros(2)", str(Path(SOURCE) / "probe.py"), "eval"))  # as if written in fedleak
        torch.zeros(2)  # outside fedleak's source: not fedleak's to fix
    assert audit.undevised == ["probe.py:1 zeros"]


# ----------------------------------------------------------------------------------- the meta device

def test_constants_are_made_on_their_input_s_device():
    x = torch.empty(2, 3, 8, 8, device="meta")
    assert normalize(x, MEAN, STD).device.type == "meta"
    assert Normalization(MEAN, STD).to_pixels(x).device.type == "meta"
    assert all(t.device.type == "meta" for t in Normalization(MEAN, STD).bounds(x.device))
    assert psnr(x, x).device.type == "meta" and ssim(x, x).device.type == "meta"


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
@pytest.mark.parametrize("defense", [None, "clip:c=1", "sign", "topk:sparsity=0.9"])
def test_client_update_and_one_attack_step_stay_on_meta(protocol, defense, monkeypatch):
    """Model and data on ``meta``: the protocol, the (deterministic) defenses and one IG gradient
    step produce only meta tensors. (The whole ``Client.update`` cannot run there: a generator
    cannot live on ``meta``; and the payload's finiteness check, which reads values, is skipped.)"""
    import fedleak.attacks.matching as matching
    from fedleak.fl.payload import PublicHyperparameters

    monkeypatch.setattr(matching, "check_update", lambda payload, params: None)

    model = create_model("convnet", 4, 3, 16, width=0.25, seed=0).to("meta").eval()
    images, labels = torch.empty(2, 3, 16, 16, device="meta"), torch.zeros(2, dtype=torch.long, device="meta")
    hyper = PublicHyperparameters(protocol=protocol, batch_size=2, model_mode="eval", defense=defense, lr=0.1,
                                  local_steps=2, local_batch_size=1, shuffle_seed=1)
    update, _ = PROTOCOLS.get(protocol)(copy.deepcopy(model), normalize(images, MEAN, STD), labels, hyper,
                                        batch_gradient)
    update = parse_defense(defense).on_client(update, None)
    assert {t.device.type for t in update.values()} == {"meta"}
    payload = Payload(model_state=dict(model.state_dict()), update=update, hyper=hyper)
    assert payload_device(payload).type == "meta"
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, 16, 16), 4, MEAN, STD, labels=labels)
    objective = GradientMatching(payload, knowledge, "cosine", regularizers={"tv": 1e-3})
    x = torch.empty(2, 2, 3, 16, 16, device="meta")  # two restarts: the vmap-ed path
    gx, match = (t[0] for t in objective.gradients(x[None], labels[None]))
    assert gx.device.type == "meta" and match.device.type == "meta" and gx.shape == x.shape


# ------------------------------------------------------------------------------------------- on CUDA

def _config(device: str, **attack) -> RunConfig:
    return build_config(overrides=[f"device={device}", "model.width=0.25", "data.image_size=16",
                                   *(f"attack.{k}={v}" for k, v in {"iterations": 8, "init": "zeros", **attack}.items())])


@pytest.mark.gpu
@gpu
def test_the_pipeline_on_cuda_equals_the_cpu_within_tolerance():
    # attack.precision defaults to fp32 and the client always computes in fp32 (no TF32 on CUDA)
    cpu, cuda = run(_config("cpu")), run(_config("cuda"))
    assert cuda.config.device == "cuda:0" and cpu.config.device == "cpu"
    for name, t in cpu.payload.update.items():
        torch.testing.assert_close(cuda.payload.update[name].cpu(), t, rtol=1e-4, atol=1e-6)
    assert cuda.evaluation.psnr == pytest.approx(cpu.evaluation.psnr, abs=0.05)
    assert cuda.reconstruction.matching_loss == pytest.approx(cpu.reconstruction.matching_loss, rel=1e-3, abs=1e-5)


@pytest.mark.gpu
@gpu
def test_payload_and_reconstruction_sit_on_the_asked_device():
    result = run(_config("cuda"))
    tensors = [*result.payload.update.values(), *result.payload.model_state.values(),
               result.reconstruction.images, result.reconstruction.labels, result.truth.images]
    assert {t.device.type for t in tensors} == {"cuda"}
    assert isinstance(result.evaluation.psnr, float) and isinstance(result.evaluation.ssim, float)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("defense", [None, "clip:c=1+noise:snr_db=10", "qsgd:levels=4", "topk:sparsity=0.9",
                                     "sign", "prune:ratio=0.5", "dpsgd:clip=1,noise_multiplier=0.5"])
@pytest.mark.parametrize("name,settings,protocol,batch", ATTACK_CASES)
def test_each_attack_and_defense_runs_on_cuda(defense, name, settings, protocol, batch):
    options = {"norm": "group"} if defense and defense.startswith("dpsgd") else {}
    data, payload, knowledge = _round("convnet", defense, protocol, batch, device="cuda", **options)
    assert {t.device.type for t in payload.update.values()} == {"cuda"}
    rec = build_attack(name, settings).run(payload, knowledge)
    assert rec.images.device.type == "cuda"
    assert isinstance(evaluate(rec, data).psnr, float)


# ------------------------------------------------------------------------------------------ training

def test_training_follows_the_device_setting_and_records_it(mnist_root):
    from fedleak.training import TrainSettings, train_target

    audit = FactoryAudit()
    with audit:
        result = train_target("lenet", "mnist", str(mnist_root), image_size=16, limit=6,
                              settings=TrainSettings(epochs=1, batch_size=4, augment=True, device="auto"))
    assert result.info.training["device"] == device_name(resolve_device("auto"))
    assert {p.device.type for p in result.model.parameters()} == {"cpu"}  # checkpoints are written from the host
    assert [c for c in audit.undevised if not c.startswith("data/")] == []  # data is decoded on the host, then moved


def test_the_prior_trains_where_asked_and_comes_back_to_the_host():
    from fedleak.attacks.restoration_prior import RestorationPriorSettings, train_prior

    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    audit = FactoryAudit()
    with audit:
        net, validation = train_prior(images, RestorationPriorSettings(epochs=1, batch_size=2, width=4, depth=2,
                                                                       validation_fraction=0.5, device="auto"))
    assert {p.device.type for p in net.parameters()} == {"cpu"}
    assert set(validation) == {"bicubic_psnr", "prior_psnr"}
    assert audit.undevised == []


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the missing-device error cannot be shown")
def test_training_on_a_missing_device_is_a_config_error():
    from fedleak.attacks.restoration_prior import RestorationPriorSettings
    from fedleak.training import TrainSettings

    for settings in (TrainSettings, RestorationPriorSettings):
        with pytest.raises(ConfigError, match="device 'cuda' is not available here"):
            settings(device="cuda")


def test_federated_training_follows_the_model_s_device():
    from fedleak.fl.federated import FederatedSettings, federated_train

    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(8, 3, 16, 16, generator=g), torch.arange(8).remainder(4)
    model = create_model("convnet", 4, 3, 16, width=0.25, seed=0)
    audit = FactoryAudit()
    with audit:
        history = federated_train(model, images, labels, images[:4], labels[:4], MEAN, STD,
                                  FederatedSettings(clients=2, rounds=1, local_epochs=1, lr=0.1, batch_size=2,
                                                    defense="noise:snr_db=20"))
    assert audit.undevised == [] and len(history.test_accuracy) == 1


def test_a_study_passes_its_device_to_every_run_without_changing_their_seeds():
    from fedleak.studies.base import StudySettings

    auto, cpu = StudySettings(client_seed=7), StudySettings(client_seed=7, device="cpu")
    assert auto.flags()["device"] == "auto" and cpu.flags()["device"] == "cpu"
    assert {k: v for k, v in auto.flags().items() if k != "device"} == \
        {k: v for k, v in cpu.flags().items() if k != "device"}  # where a run computes is no coordinate
    assert "client.seed" not in cpu.flags()  # derived from the folder's secret as the run executes
    assert build_config(flags=cpu.flags()).device == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        StudySettings(device="gpu")
