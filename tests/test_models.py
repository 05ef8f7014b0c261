import pytest
import torch

from fedleak.errors import ConfigError
from fedleak.models import MODELS, create_model


@pytest.mark.parametrize("name", ["lenet", "convnet", "resnet18"])
@pytest.mark.parametrize("channels, size", [(3, 32), (1, 28), (3, 96)])
def test_forward_shapes(name, channels, size):
    model = create_model(name, 7, channels, size, width=0.25, seed=0).eval()
    assert model(torch.rand(2, channels, size, size)).shape == (2, 7)


def test_seed_makes_init_reproducible():
    a = create_model("convnet", 10, width=0.25, seed=3)
    b = create_model("convnet", 10, width=0.25, seed=3)
    c = create_model("convnet", 10, width=0.25, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # CIFAR ResNet-18 (3×3 stem, 10 classes) has 11,173,962 parameters.
    assert count(create_model("resnet18", 10, 3, 32)) == 11_173_962
    # ImageNet ResNet-18: 11.69M.
    assert count(create_model("resnet18", 1000, 3, 224)) == 11_689_512
    # DLG's LeNet on 32×32 RGB, 10 classes: 3 convs of 12 channels + 768→10.
    assert count(create_model("lenet", 10, 3, 32)) == (3 * 25 * 12 + 12) + 2 * (12 * 25 * 12 + 12) + 768 * 10 + 10
    # ConvNet-64 ends in a linear layer on 3×3×256 features.
    net = create_model("convnet", 10, 3, 32)
    assert net.classifier.in_features == 256 * 9


def test_resnet_norm_options_and_stems():
    kinds = {"batch": torch.nn.BatchNorm2d, "group": torch.nn.GroupNorm, "none": None}
    for norm, kind in kinds.items():
        m = create_model("resnet18", 4, 3, 32, width=0.125, norm=norm)
        assert m(torch.rand(1, 3, 32, 32)).shape == (1, 4)
        present = {k for k in kinds.values() if k and any(isinstance(x, k) for x in m.modules())}
        assert present == ({kind} if kind else set()), norm
    assert not any(isinstance(x, torch.nn.MaxPool2d) for x in create_model("resnet18", 4, 3, 32).modules())
    assert any(isinstance(x, torch.nn.MaxPool2d) for x in create_model("resnet18", 4, 3, 128).modules())


def test_convnet_pool_choice():
    assert any(isinstance(x, torch.nn.MaxPool2d) for x in create_model("convnet", 4, pool="max").modules())
    default = list(create_model("convnet", 4).modules())
    assert any(isinstance(x, torch.nn.AvgPool2d) for x in default)
    assert not any(isinstance(x, torch.nn.MaxPool2d) for x in default)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "nonet"}, "unknown model"),
        ({"name": "resnet18", "norm": "layer"}, "norm must be"),
        ({"name": "convnet", "image_size": 8}, "too small"),
        ({"name": "lenet", "depth": 3}, "unexpected keyword"),
        ({"name": "lenet", "width": 0}, "width must be positive"),
    ],
)
def test_bad_model_requests(kwargs, message):
    args = {"num_classes": 10, **kwargs}
    with pytest.raises(ConfigError, match=message):
        create_model(**args)


def test_registry_lists_families():
    assert {"lenet", "convnet", "resnet18"} <= set(MODELS.names())
    with pytest.raises(ConfigError, match="needs positive num_classes"):
        create_model("lenet", 0)
