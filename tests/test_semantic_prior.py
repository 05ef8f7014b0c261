"""ROG's semantic-level variant: the class-conditional generator, its training loop, its file, and ROG
feeding it the recovered labels."""

import pytest
import torch

from fedleak.attacks import build_attack
from fedleak.attacks.priors import load_any_prior
from fedleak.attacks.restoration_prior import RestorationNet, RestorationPriorInfo, save_prior, upsample
from fedleak.attacks.semantic_prior import (
    ClassNorm, SemanticNet, SemanticPrior, SemanticPriorInfo, SemanticPriorSettings, save_semantic_prior,
    train_semantic_prior,
)
from fedleak.errors import ConfigError, FedleakError
from fedleak.models.checkpoint import save_tensors
from tests.test_cli import TINY, fedleak
from tests.test_rog import _setup, smooth_images


def test_class_norm_takes_its_scale_and_shift_from_the_class():
    norm = ClassNorm(4, 3)
    x = torch.randn(2, 4, 5, 5)
    same = norm(x, torch.tensor([0, 2]))
    assert torch.allclose(same, torch.nn.functional.group_norm(x, 4), atol=1e-6)  # starts at γ = 1, β = 0
    with torch.no_grad():
        norm.embed.weight[2, 4:] = 1.0  # class 2's shift
    moved = norm(x, torch.tensor([0, 2]))
    assert torch.allclose(moved[0], same[0]) and torch.allclose(moved[1], same[1] + 1.0, atol=1e-6)


def test_a_fresh_generator_is_bicubic_upsampling_and_the_class_then_matters():
    low, labels = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
    net = SemanticNet(3, 5, width=8)
    assert torch.allclose(net(low, labels, (8, 8)), upsample(low, (8, 8)))
    torch.nn.init.normal_(net.out.weight)
    assert torch.allclose(net(low, labels, (8, 8)), net(low, torch.tensor([3, 4]), (8, 8)))  # every class γ=1, β=0
    torch.nn.init.normal_(net.dec.norm1.embed.weight)  # classes that learned to differ
    assert not torch.allclose(net(low, labels, (8, 8)), net(low, torch.tensor([3, 4]), (8, 8)))


def test_the_training_loop_lowers_the_reconstruction_loss_and_trains_the_critic():
    images = smooth_images(24, 8, seed=2)
    labels = torch.arange(24) % 3
    settings = SemanticPriorSettings(scale=2, width=8, epochs=6, batch_size=8, lr=2e-3, noise=0.02)
    net, validation, history = train_semantic_prior(images, labels, 3, settings)
    assert len(history) == 6 and history[-1]["reconstruction"] < history[0]["reconstruction"]
    assert all(h["critic"] > 0 for h in history)  # the hinge loss of a critic that was trained
    assert set(validation) == {"bicubic_psnr", "prior_psnr", "wrong_class_psnr"}
    plain, _, history = train_semantic_prior(images, labels, 3,
                                             SemanticPriorSettings(scale=2, width=8, epochs=1, adversarial=0))
    assert history[0]["critic"] == 0 and history[0]["generator"] == 0  # L1 only
    with pytest.raises(ConfigError, match="adversarial ≥ 0"):
        SemanticPriorSettings(adversarial=-1)


def test_a_semantic_prior_round_trips_and_restoration_priors_still_load(tmp_path):
    net = SemanticNet(3, 5, width=8)
    torch.nn.init.normal_(net.out.weight, std=0.1)
    path = save_semantic_prior(tmp_path / "sem.safetensors", net,
                               SemanticPriorInfo(channels=3, classes=5, scale=2, width=8))
    prior = load_any_prior(path)
    assert isinstance(prior, SemanticPrior) and prior.info.classes == 5
    low, labels = torch.rand(2, 3, 4, 4), torch.tensor([1, 4])
    assert torch.allclose(prior(low, (8, 8), labels), net(low, labels, (8, 8)).clamp(0, 1))
    with pytest.raises(FedleakError, match="needs the images' classes"):
        prior(low, (8, 8))
    old = save_prior(tmp_path / "old.safetensors", RestorationNet(3, 4, 3),
                     RestorationPriorInfo(channels=3, scale=2, width=4, depth=3))  # no kind: restoration
    assert not isinstance(load_any_prior(old), SemanticPrior)
    save_tensors(tmp_path / "odd.safetensors", {"w": torch.zeros(1)}, {"fedleak_prior": '{"kind": "magic"}'})
    with pytest.raises(FedleakError, match="unknown kind 'magic'"):
        load_any_prior(tmp_path / "odd.safetensors")


def test_rog_feeds_the_generator_the_labels_it_recovered(tmp_path):
    data, payload, knowledge = _setup(n=2)  # 5 classes, labels 0 and 1
    net = SemanticNet(3, 5, width=8)
    with torch.no_grad():
        net.out.bias.copy_(torch.tensor([0.3, 0.0, 0.0]))  # a visible change: more red, whatever the class
        net.dec.norm2.embed.weight[1, 8:] = 2.0  # class 1 shifts the last features: its image differs
        net.out.weight.normal_(std=0.2)
    path = save_semantic_prior(tmp_path / "sem.safetensors", net,
                               SemanticPriorInfo(channels=3, classes=5, scale=2, width=8))
    attack = build_attack("rog", {"iterations": 3, "prior": str(path)})
    rec = attack.run(payload, knowledge, seed=0)
    plain = build_attack("rog", {"iterations": 3}).run(payload, knowledge, seed=0)
    prior = load_any_prior(path)
    low = torch.nn.functional.interpolate(plain.images, size=(8, 8), mode="area")  # not the attack's exact z
    assert rec.images.shape == plain.images.shape and not torch.allclose(rec.images, plain.images)
    assert rec.labels.tolist() == [0, 1]
    assert prior(low, (16, 16), torch.tensor([0, 1])).shape == rec.images.shape
    wrong = SemanticPriorInfo(channels=3, classes=7, scale=2, width=8)
    save_semantic_prior(tmp_path / "seven.safetensors", SemanticNet(3, 7, width=8), wrong)
    with pytest.raises(ConfigError, match="draws 7 classes; the target has 5"):
        build_attack("rog", {"iterations": 1, "prior": str(tmp_path / "seven.safetensors")}).run(payload, knowledge)


def test_train_prior_semantic_then_attack_with_it(tmp_path, monkeypatch, capsys, cifar_root):
    prior = tmp_path / "semantic.safetensors"
    code, stdout, err = fedleak(monkeypatch, capsys, "train-prior", "--kind", "semantic", "--dataset", "cifar10",
                                "--root", str(cifar_root), "--image-size", "8", "--epochs", "1", "--width", "4",
                                "--batch-size", "8", "--out", str(prior), "-q")
    assert code == 0, err
    assert prior.is_file() and "train-prior (semantic)" in stdout
    assert isinstance(load_any_prior(prior), SemanticPrior)
    code, _, err = fedleak(monkeypatch, capsys, "attack", *TINY, "--out", str(tmp_path / "run"), "--attack", "rog",
                           "--prior", str(prior), "--threat", "E")
    assert code == 0, err
    code, _, err = fedleak(monkeypatch, capsys, "train-prior", "--kind", "dream", "--dataset", "cifar10",
                           "--root", str(cifar_root), "-q")
    assert code == 2 and "--kind must be restoration or semantic" in err
