import copy

import pytest
import torch

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.attacks.labels import idlg
from fedleak.attacks.objectives import COSTS
from fedleak.attacks.regularizers import total_variation
from fedleak.errors import ConfigError, FedleakError
from fedleak.data.normalization import Normalization
from fedleak.fl import Client, ClientData
from fedleak.metrics import evaluate, psnr
from fedleak.models import create_model

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _setup(model_name="lenet", size=8, label=3, classes=5, width=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    # A smooth image: the kind of signal total variation favours.
    base = torch.rand(1, 3, 3, 3, generator=g)
    image = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=True)
    data = ClientData(image, torch.tensor([label]))
    model = create_model(model_name, classes, 3, size, width=width, seed=seed)
    payload = Client(model, Normalization(MEAN, STD)).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(model), (3, size, size), classes, MEAN, STD)
    return data, payload, knowledge


def test_costs():
    a = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    b = [torch.tensor([2.0, 0.0]), torch.tensor([[1.0]])]
    assert float(COSTS.get("cosine")(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(COSTS.get("cosine")(a, [-t for t in a])) == pytest.approx(2.0)
    # dot = 2 + 3 = 5; |a| = √14, |b| = √5
    assert float(COSTS.get("cosine")(a, b)) == pytest.approx(1 - 5 / (14**0.5 * 5**0.5))
    assert float(COSTS.get("l2")(a, b)) == pytest.approx(1 + 4 + 4)


def test_total_variation():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # |dx| mean = (1 + 2) / 2, |dy| mean = (2 + 3) / 2
    assert float(total_variation(x)) == pytest.approx(1.5 + 2.5)


@pytest.mark.parametrize("model_name", ["lenet", "convnet", "resnet18"])
def test_idlg_recovers_single_labels(model_name):
    for label in range(5):
        _, payload, knowledge = _setup(model_name, size=16, label=label, width=0.25, seed=label)
        assert int(idlg(payload, knowledge.num_classes)) == label


def test_idlg_refuses_batches():
    model = create_model("lenet", 4, 3, 8, seed=0)
    payload = Client(model, Normalization(MEAN, STD)).update(ClientData(torch.rand(2, 3, 8, 8), torch.tensor([0, 1])))
    with pytest.raises(FedleakError, match="one image"):
        idlg(payload, 4)


def test_inverting_gradients_reconstructs_a_tiny_image():
    data, payload, knowledge = _setup()
    attack = build_attack("ig", {"iterations": 200, "tv": 1e-3})
    rec = attack.run(payload, knowledge, seed=0)
    init = torch.randn(data.images.shape, generator=torch.Generator().manual_seed(0)) * 0.25 + 0.5
    result = evaluate(rec, data)
    assert result.label_accuracy == 1.0
    assert result.psnr > 18 and result.psnr > float(psnr(init, data.images)) + 8
    assert rec.trace[0]["loss"] > rec.matching_loss
    assert rec.images.min() >= 0 and rec.images.max() <= 1


def test_restarts_pick_the_lowest_matching_loss_and_runs_are_reproducible():
    _, payload, knowledge = _setup()
    attack = build_attack("ig", {"iterations": 20, "restarts": 3})
    a = attack.run(payload, knowledge, seed=5)
    b = attack.run(payload, knowledge, seed=5)
    assert len(a.restart_losses) == 3 and a.matching_loss == min(a.restart_losses)
    assert torch.equal(a.images, b.images)
    assert len({round(v, 9) for v in a.restart_losses}) > 1


def test_known_labels_are_used_as_declared():
    data, payload, knowledge = _setup(label=2)
    told = AttackerKnowledge(**{**vars(knowledge), "labels": torch.tensor([4])})
    rec = build_attack("ig", {"iterations": 2}).run(payload, told)
    assert rec.labels.tolist() == [4]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"iterations": 0}, "attack.iterations"),
        ({"cost": "l3"}, "unknown cost"),
        ({"lr": -1}, "attack.lr"),
        ({"tvv": 1}, "unknown config key 'attack.tvv'"),
    ],
)
def test_bad_attack_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        build_attack("ig", settings)


def test_payload_with_nan_is_refused():
    _, payload, knowledge = _setup()
    name = next(iter(payload.update))
    payload.update[name][0] = float("nan")
    with pytest.raises(FedleakError, match="NaN"):
        build_attack("ig", {"iterations": 1}).run(payload, knowledge)
