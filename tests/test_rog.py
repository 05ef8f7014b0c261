"""ROG: low-resolution parametrisation, matchings for obfuscated updates, the learned prior."""

import copy

import pytest
import torch

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.objectives import MATCHINGS, auto_matching
from fedleak.attacks.restoration_prior import (
    RestorationNet, RestorationPriorInfo, RestorationPriorSettings, degrade, load_prior, save_prior, train_prior,
    upsample,
)
from fedleak.errors import ConfigError, FedleakError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientTraining, ClientData
from fedleak.metrics import evaluate, psnr
from fedleak.models import create_model
from fedleak.models.checkpoint import save_tensors

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def smooth_images(n, size, seed=0):
    base = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=True)


def _setup(defense=None, size=16, n=1, protocol="fedsgd", **client):
    data = ClientData(smooth_images(n, size), torch.arange(n) % 5)
    model = create_model("convnet", 5, 3, size, width=0.25, seed=0)
    payload = Client(model, Normalization(MEAN, STD), ClientTraining(protocol, **client), defense=defense).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, size, size), 5, MEAN, STD, labels=data.labels)
    return data, payload, knowledge


def test_rog_beats_its_start_and_returns_full_resolution():
    data, payload, knowledge = _setup()
    rec = build_attack("rog", {"iterations": 120, "cost": "cosine", "lr": 0.1}).run(payload, knowledge, seed=0)
    start = upsample(torch.rand((1, 1, 3, 8, 8), generator=torch.Generator().manual_seed(0))[0], (16, 16))
    assert rec.images.shape == data.images.shape and rec.images.min() >= 0 and rec.images.max() <= 1
    assert rec.trace[0]["loss"] > 2 * rec.matching_loss
    assert evaluate(rec, data).psnr > float(psnr(start, data.images)) + 4


def test_rog_restarts_and_batches_and_fedavg():
    data, payload, knowledge = _setup(n=2, protocol="fedavg", lr=0.1, local_steps=2, local_batch_size=1)
    attack = build_attack("rog", {"iterations": 5, "restarts": 2, "scale": 4})
    a, b = attack.run(payload, knowledge, seed=3), attack.run(payload, knowledge, seed=3)
    assert a.images.shape == (2, 3, 16, 16) and len(a.restart_losses) == 2
    assert a.matching_loss == min(a.restart_losses) and torch.equal(a.images, b.images)


def test_masked_matching_ignores_the_coordinates_a_sparsifier_dropped():
    targets = [torch.tensor([1.0, 0.0, -2.0])]
    view, compared = MATCHINGS.get("masked")(targets)
    assert view([torch.tensor([3.0, 7.0, 5.0])])[0].tolist() == [3.0, 0.0, 5.0]
    assert compared[0].tolist() == [1.0, 0.0, -2.0]


def test_sign_matching_compares_smooth_signs():
    targets = [torch.tensor([0.3, -0.3, 0.0])]  # sign:scale=mean output
    view, compared = MATCHINGS.get("sign")(targets)
    assert compared[0].tolist() == [1.0, -1.0, 0.0]
    g = torch.tensor([5e-4, -2e-4, 1e-6], requires_grad=True)
    soft = view([g])[0]
    assert torch.all(torch.sign(soft) == torch.sign(g.detach())) and soft.abs().max() < 1
    soft.sum().backward()
    assert torch.all(g.grad > 0)
    assert auto_matching("topk:sparsity=0.9,scope=tensor") == "masked"
    assert auto_matching("clip:c=1+sign:scale=none") == "sign" and auto_matching(None) == "plain"


@pytest.mark.parametrize("defense", ["topk:sparsity=0.8", "sign", "quantize:bits=3", "noise:snr_db=10"])
def test_rog_runs_against_every_kind_of_obfuscation(defense):
    _, payload, knowledge = _setup(defense)
    rec = build_attack("rog", {"iterations": 3, "matching": "auto"}).run(payload, knowledge)
    assert rec.matching_loss < 0.9 * rec.trace[0]["loss"]  # the matching for this obfuscation is optimised


def test_prior_learns_to_restore_and_round_trips(tmp_path):
    images = smooth_images(48, 16, seed=1)
    settings = RestorationPriorSettings(scale=2, width=8, depth=3, epochs=30, batch_size=16, lr=3e-3, noise=0.05)
    net, validation = train_prior(images, settings)
    assert validation["prior_psnr"] > validation["bicubic_psnr"]
    info = RestorationPriorInfo(channels=3, scale=2, width=8, depth=3, validation=validation)
    path = save_prior(tmp_path / "prior.safetensors", net, info)
    prior = load_prior(path)
    low = degrade(images[:2], 2, 0.05, torch.Generator().manual_seed(0))
    assert torch.allclose(prior(low, (16, 16)), net(low, (16, 16)).clamp(0, 1))
    assert prior.info.validation == validation


def test_fresh_prior_is_bicubic_upsampling():
    low = torch.rand(1, 3, 4, 4)
    assert torch.allclose(RestorationNet(3, 4, 3)(low, (8, 8)), upsample(low, (8, 8)))


def test_prior_errors(tmp_path):
    save_tensors(tmp_path / "weights.safetensors", {"w": torch.zeros(2)}, {})
    with pytest.raises(FedleakError, match="not a fedleak prior"):
        load_prior(tmp_path / "weights.safetensors")
    net = RestorationNet(1, 4, 3)
    save_prior(tmp_path / "grey.safetensors", net, RestorationPriorInfo(channels=1, scale=2, width=4, depth=3))
    _, payload, knowledge = _setup()
    attack = build_attack("rog", {"iterations": 1, "prior": str(tmp_path / "grey.safetensors")})
    with pytest.raises(ConfigError, match="1-channel images at scale 2"):
        attack.run(payload, knowledge)
    with pytest.raises(ConfigError, match="attack.matching"):
        build_attack("rog", {"matching": "fuzzy"})
