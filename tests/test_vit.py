"""The ViT family: shapes, published sizes, its attention against PyTorch's, double backward, and
torchvision / timm state dicts (synthetic, named by hand from those libraries' module trees)."""

import copy

import pytest
import torch

from fedleak.attacks import AttackerKnowledge, build_attack
from fedleak.data.normalization import Normalization
from fedleak.errors import ConfigError
from fedleak.fl import Client, ClientData
from fedleak.models import card_of, create_model
from fedleak.models.checkpoint import load_into
from fedleak.models.layouts import translate


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, params", [("vit_b_16", 86_567_656), ("vit_tiny", 5_717_416)])
def test_published_parameter_counts(name, params):
    # torchvision's vit_b_16 (its docs' num_params) and timm's vit_tiny_patch16_224 at 1000 classes.
    with torch.device("meta"):  # shapes only, no initialisation
        model = create_model(name, 1000, 3, 224)
    assert count(model) == params


@pytest.mark.parametrize("name", ["vit", "vit_tiny", "vit_b_16"])
def test_builds_and_forwards_at_its_cards_input_size(name):
    c, h, w = card_of(name).input_size
    model = create_model(name, 7, c, (h, w), width=0.125, seed=0)
    out = model(torch.randn(1, c, h, w))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


def test_options_and_bad_sizes():
    model = create_model("vit", 3, 1, 28, width=0.25, patch=7, depth=2, heads=2)
    assert model.pos_embed.shape == (1, 17, 48) and len(model.blocks) == 2
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 3)
    with pytest.raises(ConfigError, match="must divide"):
        create_model("vit", 3, 3, 30)
    with pytest.raises(ConfigError, match="first_block"):
        create_model("vit", 3, 3, 32, first_block="post-norm")


def test_attention_equals_pytorchs_multi_head_attention():
    model = create_model("vit", 3, 3, 16, width=0.25, depth=1, heads=3, seed=1)
    attn = model.blocks[0].attn
    d = attn.proj.in_features
    ref = torch.nn.MultiheadAttention(d, 3, batch_first=True)
    with torch.no_grad():  # torchvision's in_proj stacks q, k, v like timm's qkv
        ref.in_proj_weight.copy_(attn.qkv.weight)
        ref.in_proj_bias.copy_(attn.qkv.bias)
        ref.out_proj.weight.copy_(attn.proj.weight)
        ref.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 5, d)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_double_backward_against_finite_differences():
    # The gradient-matching attacks differentiate ‖∂L/∂θ‖²-like functions of x: check one's directional
    # derivative (a double backward) against a central difference, in float64.
    model = create_model("vit", 3, 1, 8, width=0.125, patch=4, depth=2, seed=2).double()
    y = torch.tensor([1])

    def gradient_norm(x):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        return sum(g.pow(2).sum() for g in grads)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 8, 8, dtype=torch.double, generator=g).requires_grad_(True)
    v = torch.randn(1, 1, 8, 8, dtype=torch.double, generator=g)
    (gx,) = torch.autograd.grad(gradient_norm(x), x)
    eps = 1e-5
    numeric = (gradient_norm(x.detach() + eps * v) - gradient_norm(x.detach() - eps * v)).detach() / (2 * eps)
    assert float((gx * v).sum()) == pytest.approx(float(numeric), rel=1e-6)


# ----------------------------------------------------------------------------- foreign state dicts

def torchvision_keys(depth):
    keys = ["class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding"]
    for i in range(depth):
        pre = f"encoder.layers.encoder_layer_{i}"
        keys += [f"{pre}.ln_1.weight", f"{pre}.ln_1.bias", f"{pre}.self_attention.in_proj_weight",
                 f"{pre}.self_attention.in_proj_bias", f"{pre}.self_attention.out_proj.weight",
                 f"{pre}.self_attention.out_proj.bias", f"{pre}.ln_2.weight", f"{pre}.ln_2.bias",
                 f"{pre}.mlp.0.weight", f"{pre}.mlp.0.bias", f"{pre}.mlp.3.weight", f"{pre}.mlp.3.bias"]
    return keys + ["encoder.ln.weight", "encoder.ln.bias", "heads.head.weight", "heads.head.bias"]


def timm_keys(depth):
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        keys += [f"blocks.{i}.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                 for p in ("weight", "bias")]
    return keys + ["norm.weight", "norm.bias", "head.weight", "head.bias"]


def own_names_of(foreign, depth):
    """Which fedleak tensor each foreign key holds, written out independently of the rename table."""
    tv = {"class_token": "cls_token", "conv_proj.weight": "patch_embed.weight", "conv_proj.bias": "patch_embed.bias",
          "encoder.pos_embedding": "pos_embed", "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias",
          "heads.head.weight": "head.weight", "heads.head.bias": "head.bias"}
    for i in range(depth):
        pre = f"encoder.layers.encoder_layer_{i}"
        for theirs, ours in (("ln_1", "norm1"), ("self_attention.out_proj", "attn.proj"), ("ln_2", "norm2"),
                             ("mlp.0", "mlp.fc1"), ("mlp.3", "mlp.fc2")):
            for p in ("weight", "bias"):
                tv[f"{pre}.{theirs}.{p}"] = f"blocks.{i}.{ours}.{p}"
        for p in ("weight", "bias"):
            tv[f"{pre}.self_attention.in_proj_{p}"] = f"blocks.{i}.attn.qkv.{p}"
    timm = {k: k for k in timm_keys(depth)} | {"patch_embed.proj.weight": "patch_embed.weight",
                                               "patch_embed.proj.bias": "patch_embed.bias"}
    return [(tv | timm)[k] for k in foreign]


@pytest.mark.parametrize("keys", [torchvision_keys, timm_keys])
def test_torchvision_and_timm_state_dicts_load(keys, tmp_path):
    depth = 2
    source = create_model("vit", 4, 3, 16, width=0.25, depth=depth, seed=3)
    own = source.state_dict()
    foreign = {k: own[ours].clone() for k, ours in zip(keys(depth), own_names_of(keys(depth), depth))}
    assert set(foreign) != set(own)
    renamed, origin, layout = translate(foreign, source, "vit")
    assert layout == "torchvision/timm" and set(renamed) == set(own)
    torch.save(foreign, tmp_path / "foreign.pt")
    target = create_model("vit", 4, 3, 16, width=0.25, depth=depth, seed=4)
    assert load_into(target, tmp_path / "foreign.pt", "vit") == "torchvision/timm"
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(target(x), source(x))


# ----------------------------------------------------------------------------- IG on the ViT

def test_inverting_gradients_runs_on_the_vit_and_its_loss_falls():
    mean, std = (0.5,) * 3, (0.25,) * 3
    net = create_model("vit", 4, 3, 8, width=0.125, patch=4, depth=2, seed=5)
    data = ClientData(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([2]))
    payload = Client(net, Normalization(mean, std)).update(data)
    knowledge = AttackerKnowledge(copy.deepcopy(net), (3, 8, 8), 4, mean, std, labels=data.labels)
    rec = build_attack("ig", {"iterations": 8, "log_every": 1, "tv": 0.0}).run(payload, knowledge)
    losses = [row["loss"] for row in rec.trace]
    assert torch.isfinite(rec.images).all() and rec.iterations == 8
    assert losses[-1] < losses[0]
