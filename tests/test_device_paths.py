"""Every part honours the device: the meta-device stand-in everywhere, the CUDA checks where a GPU is.

**Meta.** PyTorch's ``meta`` device holds shapes without values, so a tensor some part still makes
on the CPU meets a meta one and fails ("expected all tensors to be on the same device"), and what a
part returns can be checked for its device. Two limits of meta shape what runs there:

- a ``torch.Generator`` cannot live on meta: where fedleak makes one on the data's device (the
  client's defense draws, the imprint's random measurement) these tests hand it a CPU generator,
  which drives draws on meta (there are no values to draw). Whether a generator sits on the right
  device is checked by the CUDA tests below and by the factory audit of ``tests/test_device.py``;
- a value read on the host (``float(t)``, ``if t == 0:``, ``.tolist()``) fails on meta: parts that
  must read values — the payload's finiteness check, the analytic attack's choice of row, Wainakh et
  al.'s label counting, DLG's L-BFGS line search, the imprint attack's trace counts, the metrics'
  Hungarian matching — run here up to that point; the rest is left to the CUDA tests and the audit.

What runs on meta: the client update for every protocol × every defense (DP-SGD through Opacus
included: it runs on meta), both server modifications end to end from ``apply_server`` with the
server's public images, the imprint attack's reading of an imprinted update, one optimisation step
of IG (FedSGD, FedAvg's unrolled local steps, restarts, TV and BN priors, masked and sign matching)
and of ROG, label recovery (iDLG, Yin et al.), and payloads built from Flower records.

**CUDA** (marked ``gpu``; they skip where torch sees no CUDA GPU): every attack and every defense
runs on the GPU with every output tensor there; the payload, one attack step and whole runs agree
with the CPU within the tolerances of ``docs/devices.md`` — compared from identical initial
candidates, drawn on the host and moved (a CUDA generator gives another stream than the CPU's).
"""

from __future__ import annotations

import copy
import json
import math
import types

import pytest
import torch
import torch.nn.functional as F

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.labels import LABEL_METHODS
from fedleak.config import build_config
from fedleak.data.normalization import Normalization
from fedleak.device import device_name
from fedleak.errors import ConfigError
from fedleak.fl import Client, ClientData, ClientTraining
from fedleak.fl.payload import Payload
from fedleak.fl.server import server_flags
from fedleak.models import create_model
from fedleak.serving import apply_server
from tests.test_cli import fedleak as run_cli

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
SIZE, CLASSES = 16, 4
HAS_CUDA = torch.cuda.is_available()
GPU = "cuda"
GPU_TYPE, GPU_NAME = torch.device(GPU).type, device_name(torch.device(GPU))  # cuda, cuda:0

DEFENSES = [None, "clip:c=1", "noise:snr_db=10", "clip:c=1+noise:snr_db=10", "quantize:bits=4", "qsgd:levels=4",
            "topk:sparsity=0.9", "topk:sparsity=0.9,scope=global", "sign", "sign:scale=mean", "prune:ratio=0.5",
            "aggregate:clients=2", "dpsgd:clip=1,noise_multiplier=0.5"]
DETERMINISTIC = [None, "clip:c=1", "quantize:bits=4", "topk:sparsity=0.9", "sign", "prune:ratio=0.5",
                 "aggregate:clients=2"]
PROTOCOLS = ["fedsgd", "fedavg"]
FACES = {"data.name": "samples", "data.options": {"subset": "faces"}, "data.image_size": 12,
         "model.name": "convnet", "model.width": 0.125, "model.options": {"norm": "none"}}


# ------------------------------------------------------------------------------------------ helpers

def host_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """:func:`fedleak.device.generator`, with a CPU generator where ``device`` is meta (see above)."""
    return torch.Generator().manual_seed(seed) if torch.device(device).type == "meta" else torch.Generator(
        device=device).manual_seed(seed)


@pytest.fixture
def meta_generators(monkeypatch):
    """Let the client and the server modifications make their generators for meta data (a CPU one)."""
    import fedleak.fl.client as client_module
    import fedleak.fl.modifications as modifications

    proxy = types.ModuleType("torch")
    proxy.__getattr__ = lambda name: getattr(torch, name)  # everything but Generator is torch's own
    proxy.Generator = lambda device="cpu": host_generator(0, device)
    monkeypatch.setattr(client_module, "torch", proxy)
    monkeypatch.setattr(modifications, "generator", host_generator)


@pytest.fixture
def unchecked_updates(monkeypatch):
    """The attacks' finiteness check reads values: skipped on meta (its shape checks stay)."""
    import fedleak.attacks.matching as matching

    monkeypatch.setattr(matching, "check_update", lambda payload, params: None)


def client_for(model: torch.nn.Module, protocol: str, defense: str | None) -> Client:
    fedavg = protocol == "fedavg"
    training = ClientTraining(protocol, lr=0.1 if fedavg else None, local_steps=2 if fedavg else 1,
                              local_batch_size=1 if fedavg else None, shuffle_seed=3 if fedavg else None)
    return Client(model, Normalization(MEAN, STD), training, defense=defense, seed=5)


def model_for(defense: str | None, device: str, name: str = "convnet") -> torch.nn.Module:
    options = {"norm": "group"} if defense and defense.startswith("dpsgd") else {}  # Opacus refuses batch norm
    width = 0.25 if name == "convnet" else 1.0
    return create_model(name, CLASSES, 3, SIZE, width=width, seed=0, **options).to(device)


def host_batch(batch: int) -> ClientData:
    """A seeded client batch drawn on the host (so every device gets the same one)."""
    g = torch.Generator().manual_seed(0)
    return ClientData(torch.rand(batch, 3, SIZE, SIZE, generator=g), torch.arange(batch).remainder(CLASSES))


def on(data: ClientData, device: str) -> ClientData:
    return ClientData(data.images.to(device), data.labels.to(device), data.indices)


def meta_batch(batch: int) -> ClientData:
    return ClientData(torch.empty(batch, 3, SIZE, SIZE, device="meta"),
                      torch.zeros(batch, dtype=torch.long, device="meta"))


def devices_of(payload: Payload) -> set[str]:
    tensors = [*payload.update.values(), *payload.buffers.values(), *payload.model_state.values()]
    return {t.device.type for t in tensors}


# ------------------------------------------------------------------------- meta: the client's round

@pytest.mark.parametrize("defense", DEFENSES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_client_update_stays_on_meta(protocol, defense, meta_generators):
    model = model_for(defense, "meta")
    client = client_for(model, protocol, defense)
    batch = 2 * client.defense.clients
    payload = client.update(meta_batch(batch))
    assert devices_of(payload) == {"meta"}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(payload.update) == set(trainable)
    assert all(payload.update[n].shape == p.shape for n, p in trainable.items())
    if protocol == "fedavg" and not (defense or "").startswith("dpsgd"):
        assert payload.buffers  # batch norm's running statistics travel with a FedAvg update
    if client.defense.clients == 1 and defense is None:
        stats = client.batch_norm_statistics(meta_batch(batch))
        assert stats and {t.device.type for pair in stats for t in pair} == {"meta"}


# -------------------------------------------------------------------- meta: the malicious server

@pytest.mark.parametrize("spec,bins", [("imprint:bins=16", 16), ("imprint:bins=16,measure=random", 16),
                                       ("imprint:bins=8,fit=gaussian", 8), ("fishing:target=1", None)])
def test_server_modifications_are_built_on_the_model_s_device(spec, bins, meta_generators):
    """``apply_server`` with a meta model: the server's public images (from the loader, on the host)
    are moved to the model's device, and every weight of the modified model is made there."""
    from fedleak.data import load_dataset
    from fedleak.modalities import Target

    config = build_config(flags={**FACES, **server_flags(spec)})
    dataset = load_dataset("samples", None, split="test", image_size=12, subset="faces")
    body = create_model("convnet", dataset.num_classes, 3, 12, width=0.125, seed=0, norm="none").to("meta")
    sent = apply_server(config, Target(body, dataset.mean, dataset.std), dataset, load_dataset).model
    assert {t.device.type for t in (*sent.parameters(), *sent.buffers())} == {"meta"}
    if bins is not None:
        assert sent.imprint.encoder.weight.shape == (bins, 3 * 12 * 12)
        assert sent.imprint.decoder.weight.shape == (3 * 12 * 12, bins)


def test_the_imprint_attack_reads_an_imprinted_update_on_meta(meta_generators):
    """Client update through an imprint block, then the attack's per-bin division and its choice of
    bins (no host read: the shapes do not depend on the values)."""
    from fedleak.attacks.imprint import bin_images, pick_bins
    from fedleak.data import load_dataset
    from fedleak.modalities import Target

    dataset = load_dataset("samples", None, split="test", image_size=12, subset="faces")
    body = create_model("convnet", dataset.num_classes, 3, 12, width=0.125, seed=0, norm="none").to("meta")
    config = build_config(flags={**FACES, **server_flags("imprint:bins=32")})
    sent = apply_server(config, Target(body, dataset.mean, dataset.std), dataset, load_dataset).model
    client = Client(sent, Normalization(dataset.mean, dataset.std), ClientTraining("fedsgd"))
    payload = client.update(ClientData(torch.empty(4, 3, 12, 12, device="meta"),
                                       torch.zeros(4, dtype=torch.long, device="meta")))
    candidates, db = bin_images(payload.update["imprint.encoder.weight"], payload.update["imprint.encoder.bias"],
                                -sent.imprint.encoder.bias.detach())
    x, filled, found = pick_bins(candidates, db, 4, 1e-9)
    assert candidates.shape == (32, 3 * 12 * 12) and x.shape == (4, 3 * 12 * 12)
    assert {t.device.type for t in (candidates, db, x, filled, found)} == {"meta"}


# ------------------------------------------------------------------------- meta: one attack step

def meta_round(protocol: str, defense: str | None, batch: int = 2):
    model = model_for(defense, "meta").eval()
    client = client_for(model, protocol, defense)
    data = meta_batch(batch)
    payload = client.update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, SIZE, SIZE), CLASSES, MEAN, STD,
                                  labels=data.labels, bn_stats=client.batch_norm_statistics(data))
    return payload, knowledge, data.labels


@pytest.mark.parametrize("protocol,defense,matching", [
    ("fedsgd", None, "plain"), ("fedavg", None, "plain"), ("fedsgd", "topk:sparsity=0.9", "auto"),
    ("fedsgd", "sign", "auto"), ("fedavg", "clip:c=1+noise:snr_db=10", "plain"),
])
def test_one_ig_step_stays_on_meta(protocol, defense, matching, meta_generators, unchecked_updates):
    """IG's step: the objective's image gradient for two restarts (the vmap-ed path) with the TV and
    BN priors, then the signed Adam step and the box projection — all on meta."""
    from fedleak.attacks.matching import GradientMatching

    payload, knowledge, labels = meta_round(protocol, defense)
    objective = GradientMatching(payload, knowledge, "cosine", regularizers={"tv": 1e-3, "bn": 1e-3}, matching=matching)
    x = torch.empty(2, 2, 3, SIZE, SIZE, device="meta", requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=0.1)
    gx, match = (t[0] for t in objective.gradients(x[None], labels[None]))
    x.grad = gx.sign()
    optimizer.step()
    low, high = Normalization(MEAN, STD).bounds(x.device)
    with torch.no_grad():
        x.data = torch.maximum(torch.minimum(x, high), low)
    assert gx.shape == x.shape and match.shape == (2,)
    assert {t.device.type for t in (gx, match, x, low, high)} == {"meta"}


def test_one_rog_step_stays_on_meta(meta_generators, unchecked_updates):
    """ROG's step: a low-resolution variable, bicubic-upsampled and normalised into the model, the
    squared-L2 image gradient carried back to it, one Adam step, the clamp to [0, 1]."""
    from fedleak.attacks.matching import GradientMatching
    from fedleak.attacks.restoration_prior import upsample

    payload, knowledge, labels = meta_round("fedavg", "quantize:bits=4")
    objective = GradientMatching(payload, knowledge, "l2")
    z = torch.empty(2, 2, 3, SIZE // 2, SIZE // 2, device="meta", requires_grad=True)
    mean = torch.tensor(MEAN, device=z.device).view(-1, 1, 1)
    std = torch.tensor(STD, device=z.device).view(-1, 1, 1)
    x = ((upsample(z.flatten(0, 1), (SIZE, SIZE)) - mean) / std).view(2, 2, 3, SIZE, SIZE)
    gx, match = (t[0] for t in objective.gradients(x[None], labels[None]))
    (gz,) = torch.autograd.grad(x, z, gx)
    optimizer = torch.optim.Adam([z], lr=0.05)
    z.grad = gz
    optimizer.step()
    with torch.no_grad():
        z.clamp_(0, 1)
    assert {t.device.type for t in (gx, gz, match, z)} == {"meta"}


@pytest.mark.parametrize("method,batch", [("idlg", 1), ("yin", 2)])
def test_label_recovery_stays_on_meta(method, batch, meta_generators):
    payload, _, _ = meta_round("fedsgd", None, batch)
    labels = LABEL_METHODS.get(method)(payload, CLASSES)
    assert labels.device.type == "meta" and labels.shape == (batch,) and labels.dtype == torch.long


# ------------------------------------------------------------------------- meta: Flower's records

def test_payloads_from_flower_records_land_on_the_audit_model_s_device():
    pytest.importorskip("flwr")
    from flwr.app import ArrayRecord

    from fedleak.integrations.flower.records import build_payload, mean_update, public_hyperparameters, state_dict

    host = create_model("convnet", CLASSES, 3, SIZE, width=0.25, seed=0)
    model = copy.deepcopy(host).to("meta")
    sent = state_dict(ArrayRecord(host.state_dict()), model, "sent")
    returned = state_dict(ArrayRecord({k: v + 1 for k, v in host.state_dict().items()}), model, "reply")
    assert {t.device.type for t in (*sent.values(), *returned.values())} == {"meta"}
    hyper, _ = public_hyperparameters({"lr": 0.1}, 2, model)
    payload, _ = build_payload(sent, returned, hyper, model)
    assert devices_of(payload) == {"meta"}
    mean = mean_update([returned, returned], [1.0, 3.0], sent, model)
    assert {t.device.type for t in mean.values()} == {"meta"}


def test_the_flower_audit_resolves_its_device():
    pytest.importorskip("flwr")
    from flwr.serverapp.strategy import FedAvg

    from fedleak.integrations.flower import LeakageAudit

    def audit(tmp: str, device):
        return LeakageAudit(FedAvg(), model=create_model("convnet", CLASSES, 3, SIZE, width=0.25, seed=0),
                            input_shape=(3, SIZE, SIZE), num_classes=CLASSES, mean=MEAN, std=STD, out=tmp,
                            lpips=(), device=device)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        strategy = audit(tmp + "/a", "cpu")
        assert strategy.device == torch.device("cpu")
        assert {p.device.type for p in strategy.knowledge.architecture.parameters()} == {"cpu"}
        assert audit(tmp + "/b", torch.device("cpu")).device == torch.device("cpu")
        with pytest.raises(ConfigError, match="device must be auto"):
            audit(tmp + "/c", "gpu")
        if not HAS_CUDA:
            with pytest.raises(ConfigError, match="device 'cuda' is not available here"):
                audit(tmp + "/d", "cuda")


# -------------------------------------------------------------- the host-side parts, checked on CPU

def test_the_prune_threshold_is_numpy_s_percentile_computed_on_the_device():
    """Regression: pruning used to copy each tensor to the host for numpy; the device-side
    percentile must give numpy's threshold bit for bit."""
    np = pytest.importorskip("numpy")
    from fedleak.defenses.compression import percentile

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 7, 100, 4097):
        for ratio in (0.01, 0.1, 1 / 3, 0.5, 0.9, 0.999):
            for values in (torch.randn(n, generator=g, dtype=torch.float64).abs(),
                           torch.randn(n, generator=g, dtype=torch.float64).abs().round(decimals=1)):  # ties
                assert float(percentile(values, ratio * 100)) == float(np.percentile(values.numpy(), ratio * 100))
    assert percentile(torch.empty(5, 3, device="meta", dtype=torch.float64), 90.0).device.type == "meta"


@pytest.mark.parametrize("spec", ["quantize:bits=4", "qsgd:levels=4"])
def test_an_all_zero_tensor_stays_zero_under_quantization(spec):
    """Regression for the branch-free form (no host read per tensor): 0/0 must not make NaNs."""
    from fedleak.defenses import parse_defense

    update = {"zero": torch.zeros(3, 4), "some": torch.tensor([0.5, -1.0, 0.0])}
    out = parse_defense(spec).on_client(update, torch.Generator().manual_seed(0))
    assert torch.equal(out["zero"], torch.zeros(3, 4)) and torch.isfinite(out["some"]).all()


def test_augmentation_cuts_the_same_crops_as_per_image_slicing():
    """Regression for the vectorised crop (one gather on the device, no per-image host loop)."""
    from fedleak.training import augment

    x = torch.rand(7, 3, 10, 12, generator=torch.Generator().manual_seed(1))
    out = augment(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, in the same order, by hand
    flip = torch.rand(7, generator=g) < 0.5
    padded = F.pad(torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x), (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (7,), generator=g), torch.randint(0, 9, (7,), generator=g)
    expected = torch.stack([padded[i, :, dy[i]: dy[i] + 10, dx[i]: dx[i] + 12] for i in range(7)])
    assert torch.equal(out, expected)


def test_check_attackable_probes_in_the_model_s_dtype_and_device():
    from fedleak.models.external import check_attackable

    model = create_model("convnet", CLASSES, 3, SIZE, width=0.25, seed=0).double()
    check_attackable(model, (3, SIZE, SIZE), CLASSES)  # a float64 model takes a float64 probe


def test_the_ray_backend_refuses_a_gpu_device_its_tasks_cannot_see():
    from fedleak.integrations.ray import RayBackend

    with pytest.raises(ConfigError, match="a Ray task that reserves no GPU sees none: give --gpus-per-run"):
        RayBackend(gpus_per_run=0).check_device("cuda")
    with pytest.raises(ConfigError, match=r"sees only the 1 GPU\(s\) it reserves .* as cuda:0 … cuda:0"):
        RayBackend(gpus_per_run=0.5).check_device("cuda:1")
    for device, gpus in (("cuda", 0.5), ("cuda:1", 2), ("auto", 0), ("cpu", 0), ("mps", 0)):
        RayBackend(gpus_per_run=gpus).check_device(device)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the missing-device error cannot be shown")
def test_a_study_or_sweep_on_a_missing_device_fails_before_any_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    code, _, err = run_cli(monkeypatch, capsys, "sweep", "--grid", "attack.tv=0,1e-3", "--device", "cuda",
                           "--set", "model.width=0.25", "--set", "data.image_size=16", "--set", "attack.iterations=1",
                           "--out", str(out), "-q")
    assert code == 2 and err.count("\n") == 1 and "device 'cuda' is not available here" in err
    assert not out.exists()
    code, _, err = run_cli(monkeypatch, capsys, "study", "tv", "--set", "dataset=samples", "--set", "image_size=16",
                           "--device", "cuda", "--out", str(out), "-q")
    assert code == 2 and err.count("\n") == 1 and "device 'cuda' is not available here" in err
    assert not out.exists()


def test_the_study_device_reaches_every_run_and_leaves_the_folder_name(tmp_path, monkeypatch, capsys):
    from fedleak.store import ResultsDB

    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--grid", "attack.tv=0,1e-3", "--set", "model.width=0.25", "--set", "data.image_size=16",
            "--set", "attack.iterations=1", "-q"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--device", "cpu")
    assert code == 0, err
    (folder,) = (tmp_path / "studies").iterdir()
    with ResultsDB(folder / "results.sqlite", create=False) as db:
        assert [r.metrics["device"] for r in db.records()] == ["cpu", "cpu"]
    code, out, err = run_cli(monkeypatch, capsys, *args)  # auto: the same sweep, so the same folder, resumed
    assert code == 0, err
    assert [p.name for p in (tmp_path / "studies").iterdir()] == [folder.name]


def test_inspect_model_runs_where_asked(tmp_path, monkeypatch, capsys):
    from fedleak.inspect import FLAGGED

    flags = ["--set", "data.image_size=12", "--set", "model.width=0.125"]
    code, out, _ = run_cli(monkeypatch, capsys, "inspect-model", "--from-payload", "--server", "imprint:bins=8",
                           "--device", "cpu", "--json", *flags)
    assert code == FLAGGED and json.loads(out)["device"] == "cpu" and json.loads(out)["kinds"] == ["imprint"]
    torch.save(create_model("convnet", 10, 3, 12, width=0.125, seed=0).state_dict(), tmp_path / "honest.pt")
    code, out, _ = run_cli(monkeypatch, capsys, "inspect-model", str(tmp_path / "honest.pt"), "--device", "cpu",
                           "--json")
    assert code == 0 and json.loads(out)["device"] == "cpu"
    if not HAS_CUDA:
        code, _, err = run_cli(monkeypatch, capsys, "inspect-model", str(tmp_path / "honest.pt"), "--device", "cuda")
        assert code == 2 and err.startswith("fedleak: error: device 'cuda' is not available here")


# ================================================================================== on a CUDA GPU

def host_drawn(init):
    """An initialisation drawing on the host from the generator's seed, then moved to its device:
    the same initial candidates on every device (CUDA's generator has another stream)."""
    def draw(shape, generator):
        return init(shape, torch.Generator().manual_seed(generator.initial_seed())).to(generator.device)
    return draw


@pytest.fixture
def identical_inits(monkeypatch):
    from fedleak.attacks.optimization import INITS

    for name in ("randn", "rand"):
        monkeypatch.setitem(INITS._entries, name, host_drawn(INITS.get(name)))


@pytest.fixture
def fp32():
    """Full fp32 everywhere: cuDNN allows TF32 by default, which the client's convolutions would use.
    (Set and restored by hand: ``monkeypatch.setattr`` on ``torch.backends.cuda.matmul`` finds no
    instance attribute to restore and fails at teardown.)"""
    cublas, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = cublas.allow_tf32, cudnn.allow_tf32
    cublas.allow_tf32 = cudnn.allow_tf32 = False
    try:
        yield
    finally:
        cublas.allow_tf32, cudnn.allow_tf32 = saved


def gpu_round(defense: str | None, protocol: str, batch: int, device: str, name: str = "convnet"):
    model = model_for(defense, device, name)
    client = client_for(model, protocol, defense)
    data = on(host_batch(batch * client.defense.clients), device)
    payload = client.update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, SIZE, SIZE), CLASSES, MEAN, STD,
                                  bn_stats=client.batch_norm_statistics(data))
    return data, payload, knowledge


def assert_on(device: str, *tensors: torch.Tensor) -> None:
    assert {t.device.type for t in tensors} == {torch.device(device).type}


ATTACKS_ON_GPU = [
    ("ig", {"iterations": 3, "restarts": 2, "regularizers": {"bn": 1e-3}}, "fedsgd", 2, "convnet"),
    ("ig", {"iterations": 3, "labels": "yin"}, "fedsgd", 3, "convnet"),
    ("ig", {"iterations": 3, "labels": "wainakh"}, "fedavg", 3, "convnet"),
    ("rog", {"iterations": 3, "scale": 2}, "fedavg", 2, "convnet"),
    ("dlg", {"iterations": 1, "inner_steps": 2}, "fedsgd", 1, "convnet"),
    ("idlg", {"iterations": 1, "inner_steps": 2}, "fedsgd", 1, "convnet"),
    ("analytic", {}, "fedsgd", 1, "mlp"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("name,settings,protocol,batch,model", ATTACKS_ON_GPU)
@pytest.mark.parametrize("defense", [None, "topk:sparsity=0.9"])
def test_every_attack_runs_on_cuda_with_its_outputs_there(name, settings, protocol, batch, model, defense):
    from fedleak.metrics import evaluate

    data, payload, knowledge = gpu_round(defense, protocol, batch, GPU, model)
    assert devices_of(payload) == {GPU_TYPE}
    rec = build_attack(name, settings).run(payload, knowledge)
    assert_on(GPU, rec.images, rec.labels)
    evaluation = evaluate(rec, data)
    assert isinstance(evaluation.psnr, float) and isinstance(evaluation.ssim, float)
    assert all(isinstance(s.psnr, float) for s in evaluation.images)


@pytest.mark.gpu
@pytest.mark.parametrize("defense", DEFENSES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_defense_runs_on_cuda_with_the_attack_after_it(defense, protocol):
    data, payload, knowledge = gpu_round(defense, protocol, 2, GPU)
    assert devices_of(payload) == {GPU_TYPE}
    rec = build_attack("ig", {"iterations": 2, "matching": "auto"}).run(payload, knowledge)
    assert_on(GPU, rec.images, rec.labels)


@pytest.mark.gpu
@pytest.mark.parametrize("spec,attack", [("imprint:bins=64", "imprint"), ("imprint:bins=64,measure=random", "imprint"),
                                         ("fishing:target=1", "fishing")])
def test_the_malicious_server_and_its_attacks_run_on_cuda(spec, attack):
    from fedleak.pipeline import run

    extra = {"attack.attack": {"iterations": 3}} if attack == "fishing" else {}
    result = run(build_config(flags={**FACES, **server_flags(spec), "client.batch_size": 4, "client.seed": 3,
                                     "device": GPU, **extra}))
    assert result.config.attack.name == attack and result.config.device == GPU_NAME
    assert {p.device.type for p in result.target.model.parameters()} == {GPU_TYPE}
    assert devices_of(result.payload) == {GPU_TYPE}
    assert_on(GPU, result.reconstruction.images, result.reconstruction.labels, result.truth.images)
    assert isinstance(result.evaluation.psnr, float)


@pytest.mark.gpu
@pytest.mark.parametrize("defense", DETERMINISTIC)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_client_update_on_cuda_equals_the_cpu(protocol, defense, fp32):
    """Deterministic defenses: the same update within float rounding (docs/devices.md). A defense
    that decides per entry (a sign, a rounding level, kept or not) may decide a near-tie the other
    way: at most 1 % of the entries may differ beyond rounding there. (Random defenses draw from a
    generator on the device, whose CUDA stream is another: no comparison.)"""
    _, cpu, _ = gpu_round(defense, protocol, 2, "cpu")
    _, cuda, _ = gpu_round(defense, protocol, 2, GPU)
    decides = defense in ("sign", "quantize:bits=4", "prune:ratio=0.5", "topk:sparsity=0.9")
    for name, t in cpu.update.items():
        if decides:
            differs = ~torch.isclose(cuda.update[name].cpu(), t, rtol=1e-4, atol=1e-6)
            assert differs.float().mean() <= 0.01, name
        else:
            torch.testing.assert_close(cuda.update[name].cpu(), t, rtol=1e-4, atol=1e-6)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu().double() - b.cpu().double()).norm() / b.cpu().double().norm().clamp_min(1e-30))


@pytest.mark.gpu
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_attack_step_on_cuda_equals_the_cpu(protocol, fp32):
    """The same candidates (drawn on the host) give the same image gradient and matching loss."""
    from fedleak.attacks.matching import GradientMatching

    x = torch.randn(2, 2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    found = {}
    for device in ("cpu", GPU):
        data, payload, knowledge = gpu_round(None, protocol, 2, device)
        objective = GradientMatching(payload, knowledge, "cosine", regularizers={"tv": 1e-3})
        found[device] = tuple(t[0] for t in objective.gradients(x.to(device)[None], data.labels[None]))
    (g_cpu, m_cpu), (g_gpu, m_gpu) = found["cpu"], found[GPU]
    assert_on(GPU, g_gpu, m_gpu)
    assert relative_error(g_gpu, g_cpu) < 1e-3
    torch.testing.assert_close(m_gpu.cpu(), m_cpu, rtol=1e-4, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("attack", [{"attack.name": "ig", "attack.restarts": 2},
                                    {"attack.name": "rog", "attack.scale": 2}])
def test_the_whole_pipeline_on_cuda_equals_the_cpu(attack, identical_inits, fp32):
    """A whole run (24 iterations) from identical initial candidates: PSNR within 0.1 dB, SSIM within
    0.01, the matching loss within 5 % (docs/devices.md: how these bounds were chosen)."""
    from fedleak.pipeline import run

    def config(device: str):
        return build_config(flags={"device": device, "model.width": 0.25, "data.image_size": 16, "client.seed": 3,
                                   "attack.iterations": 24, **attack})

    cpu, cuda = run(config("cpu")), run(config(GPU))
    assert cuda.config.device == GPU_NAME
    for name, t in cpu.payload.update.items():
        torch.testing.assert_close(cuda.payload.update[name].cpu(), t, rtol=1e-4, atol=1e-6)
    assert cuda.evaluation.psnr == pytest.approx(cpu.evaluation.psnr, abs=0.1)
    assert cuda.evaluation.ssim == pytest.approx(cpu.evaluation.ssim, abs=0.01)
    assert cuda.reconstruction.matching_loss == pytest.approx(cpu.reconstruction.matching_loss, rel=5e-2, abs=1e-6)
    assert cuda.metrics()["device"] == GPU_NAME


@pytest.mark.gpu
def test_imprint_on_cuda_recovers_what_the_cpu_recovers(fp32):
    from fedleak.metrics.recovery import recovery_summary
    from fedleak.pipeline import run

    def exact(device: str) -> float:
        result = run(build_config(flags={**FACES, **server_flags("imprint:bins=64"), "client.batch_size": 8,
                                         "client.seed": 3, "device": device}))
        return recovery_summary([s.psnr for s in result.evaluation.images])["exact_fraction"]

    assert exact(GPU) == exact("cpu") >= 0.5


@pytest.mark.gpu
def test_a_bring_your_own_model_already_on_cuda_is_checked_and_attacked_there():
    from fedleak.models.external import check_attackable
    from fedleak.pipeline import run

    model = create_model("convnet", 2, 3, 12, width=0.125, seed=0).to(GPU)
    check_attackable(model, (3, 12, 12), 2)
    result = run(build_config(flags={**FACES, "device": GPU, "attack.iterations": 2}), model=model)
    assert_on(GPU, result.reconstruction.images, *result.payload.update.values())


@pytest.mark.gpu
def test_inspect_model_on_cuda(monkeypatch, capsys):
    from fedleak.inspect import FLAGGED

    code, out, _ = run_cli(monkeypatch, capsys, "inspect-model", "--from-payload", "--server", "fishing:target=1",
                           "--device", GPU, "--json", "--set", "data.image_size=12", "--set", "model.width=0.125")
    assert code == FLAGGED and json.loads(out)["device"] == GPU_NAME and json.loads(out)["kinds"] == ["fishing"]


@pytest.mark.gpu
def test_training_and_federated_training_keep_their_tensors_on_cuda(mnist_root):
    from fedleak.fl.federated import FederatedSettings, federated_train
    from fedleak.training import TrainSettings, augment, train_target

    result = train_target("lenet", "mnist", str(mnist_root), image_size=16, limit=6,
                          settings=TrainSettings(epochs=1, batch_size=4, augment=True, device=GPU))
    assert result.info.training["device"] == GPU_NAME and math.isfinite(result.info.test_accuracy)
    x = torch.rand(3, 3, 8, 8, device=GPU)
    assert_on(GPU, augment(x, torch.Generator(device=GPU).manual_seed(0)))
    data = host_batch(8)
    model = create_model("convnet", CLASSES, 3, SIZE, width=0.25, seed=0).to(GPU)
    history = federated_train(model, data.images, data.labels, data.images[:4], data.labels[:4], MEAN, STD,
                              FederatedSettings(clients=2, rounds=1, batch_size=2, defense="noise:snr_db=20"))
    assert isinstance(history.final_accuracy, float)
    assert {p.device.type for p in (*model.parameters(), *model.buffers())} == {GPU_TYPE}


@pytest.mark.gpu
def test_the_metrics_compute_on_the_reconstruction_s_device_and_return_floats():
    from fedleak.attacks.base import Reconstruction
    from fedleak.metrics import evaluate

    truth = host_batch(3)  # on the host, as an auditor's batch may be
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 0, 2])

    def scored(device: str):
        rec = Reconstruction(images=images.to(device), labels=labels.to(device), matching_loss=0.0,
                             restart_losses=[0.0], iterations=0, seconds=0.0)
        return evaluate(rec, truth)

    cpu, cuda = scored("cpu"), scored(GPU)
    assert isinstance(cuda.psnr, float) and isinstance(cuda.label_accuracy, float)
    assert cuda.order == cpu.order
    assert cuda.psnr == pytest.approx(cpu.psnr, abs=1e-4) and cuda.ssim == pytest.approx(cpu.ssim, abs=1e-5)


@pytest.mark.gpu
def test_the_flower_audit_and_the_client_mods_run_on_cuda(tmp_path, monkeypatch):
    pytest.importorskip("flwr")
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from fedleak.integrations.flower import obfuscation_mod
    from tests.test_flower import audit, client_app, federate, records, tiny_net

    for name, value in (("_run_id", 7), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)
    strategy = audit(FedAvg(fraction_evaluate=0.0), tmp_path / "audit", device=GPU, attack={"name": "ig", "iterations": 3})
    assert strategy.device == torch.device(GPU_NAME)
    mods = [obfuscation_mod(tiny_net().to(GPU), "topk:sparsity=0.5", seed=1)]
    federate(strategy, client_app(mods), rounds=1)
    assert [r.metrics["device"] for r in records(tmp_path / "audit")] == [GPU_NAME, GPU_NAME]


@pytest.mark.gpu
def test_a_sweep_runs_every_cell_on_cuda(tmp_path, monkeypatch, capsys):
    from fedleak.store import ResultsDB

    out = tmp_path / "sweep"
    code, _, err = run_cli(monkeypatch, capsys, "sweep", "--grid", "attack.tv=0,1e-3", "--device", GPU,
                           "--set", "model.width=0.25", "--set", "data.image_size=16", "--set", "attack.iterations=2",
                           "--out", str(out), "-q")
    assert code == 0, err
    with ResultsDB(out / "results.sqlite", create=False) as db:
        assert [r.metrics["device"] for r in db.records()] == [GPU_NAME, GPU_NAME]
