"""Vision transformers (Dosovitskiy et al. 2021) in timm's and torchvision's design, CPU-sized by ``width``.

The image is cut into p×p patches, each mapped linearly to a D-dimensional token (``patch_embed``: a
Conv2d with kernel = stride = p); a learnable class token is put in front and a learnable position
embedding is added, z = [cls; x_n W_peᵀ + b_pe] + E_pos (N = 1 + (H/p)(W/p) tokens); then ``depth``
pre-norm encoder blocks, h ← h + Attn(LN(h)), h ← h + MLP(LN(h)) (multi-head self-attention with q, k, v
from one ``qkv`` linear layer, heads contiguous D/heads slices, scale 1/√(D/heads); MLP: Linear, GELU,
Linear); a final LayerNorm of the class token and a linear ``head``. LayerNorm ε is 1e-6 (both
libraries'). There is no dropout. The attention is written out (no fused kernel), so gradients of
gradients, which the gradient-matching attacks need, exist.

``first_block="plain"`` builds the network APRIL's closed form is derived for (Lu et al. 2022): the
first block's attention reads the embedding z directly (no LayerNorm before it, no residual around
it), so z feeds one linear layer only (:mod:`fedleak.attacks.april_solve`).

torchvision's ``vit_b_16``-style and timm's ``vit_*`` state dicts load through :data:`LAYOUT`
(torchvision's ``self_attention.in_proj_*`` stacks q, k, v in the same order as timm's ``attn.qkv``).
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
from torch import Tensor, nn

from fedleak.models.cards import ModelCard, cifar10, imagenet
from fedleak.models.layouts import Layout, Rule
from fedleak.models.registry import Builder, ImageSize, image_hw, register_model, scaled

FirstBlock = Literal["pre-norm", "plain"]
EPS = 1e-6


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q kᵀ/√d) v per head, then ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm encoder block; ``plain``: h ← Attn(h) (no norm, no residual), then the MLP part as usual."""

    def __init__(self, dim: int, heads: int, hidden: int, plain: bool = False) -> None:
        super().__init__()
        self.plain = plain
        self.norm1 = nn.Identity() if plain else nn.LayerNorm(dim, eps=EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn(x) if self.plain else x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A ViT classifying by its class token (the parameter names are timm's but ``patch_embed``)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: ImageSize, dim: int, depth: int,
                 heads: int, patch: int, mlp_ratio: float, first_block: FirstBlock = "pre-norm") -> None:
        super().__init__()
        h, w = image_hw(image_size)
        if patch < 1 or h % patch or w % patch:
            raise ValueError(f"patch size {patch} must divide the image size {h}×{w}")
        if depth < 1 or heads < 1 or mlp_ratio <= 0:
            raise ValueError("a ViT needs depth ≥ 1, heads ≥ 1 and a positive mlp_ratio")
        if first_block not in ("pre-norm", "plain"):
            raise ValueError(f"first_block must be one of pre-norm, plain, got {first_block!r}")
        self.patch, self.grid, self.first_block = patch, (h // patch, w // patch), first_block
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden, plain=i == 0 and first_block == "plain")
                                      for i in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=EPS)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.patch_embed.weight, std=math.sqrt(1 / (in_channels * patch * patch)))

    @property
    def dim(self) -> int:
        return self.pos_embed.shape[-1]

    @property
    def first_qkv(self) -> nn.Linear:
        """The first block's q, k, v projection (the first linear layer the embedding meets)."""
        return cast(Block, self.blocks[0]).attn.qkv

    def embed(self, x: Tensor) -> Tensor:
        """The first block's input z (B×N×D): class token and patch tokens plus the position embedding."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))[:, 0]))


# timm: patch_embed.proj; torchvision: conv_proj, class_token, encoder.pos_embedding,
# encoder.layers.encoder_layer_N.{ln_1, self_attention.in_proj_*/out_proj, ln_2, mlp.0/mlp.3}, encoder.ln, heads.head.
_TORCHVISION_BLOCK = r"^encoder\.layers\.encoder_layer_(\d+)\."
_RULES: list[Rule] = [
    (r"^(?:patch_embed\.proj|conv_proj)\.(weight|bias)$", r"patch_embed.\1"),
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (_TORCHVISION_BLOCK + r"ln_([12])\.(weight|bias)$", r"blocks.\1.norm\2.\3"),
    (_TORCHVISION_BLOCK + r"self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (_TORCHVISION_BLOCK + r"self_attention\.out_proj\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
    (_TORCHVISION_BLOCK + r"mlp\.(?:0|linear_1)\.(weight|bias)$", r"blocks.\1.mlp.fc1.\2"),
    (_TORCHVISION_BLOCK + r"mlp\.(?:3|linear_2)\.(weight|bias)$", r"blocks.\1.mlp.fc2.\2"),
    (r"^encoder\.ln\.(weight|bias)$", r"norm.\1"),
    (r"^heads\.head\.(weight|bias)$", r"head.\1"),
]

LAYOUT = Layout(rules=lambda model: _RULES)
"""torchvision's and timm's names for a ViT's tensors."""


def _variant(name: str, card: ModelCard, dim: int, depth: int, heads: int, patch: int) -> Builder:
    """Register the ViT ``name``: ``depth`` blocks of ``heads`` heads, dim ``dim`` × width (rounded to a
    multiple of ``heads``), ``patch`` px patches unless the options say otherwise."""

    def build(num_classes: int, in_channels: int, image_size: ImageSize, width: float, patch: int = patch,
              depth: int = depth, heads: int = heads, mlp_ratio: float = 4.0,
              first_block: FirstBlock = "pre-norm") -> nn.Module:
        d = heads * max(1, round(scaled(dim, width) / heads))
        return VisionTransformer(num_classes, in_channels, image_size, d, depth, heads, patch, mlp_ratio,
                                 first_block)

    build.__name__ = build.__qualname__ = name  # importable (and picklable) under its own name
    return register_model(name, card, LAYOUT)(build)


vit = _variant("vit", cifar10("Dosovitskiy et al. 2021; a CIFAR-sized ViT (patch 4, dim 192, depth 6)"),
               192, 6, 3, 4)
vit_tiny = _variant("vit_tiny", imagenet("Touvron et al. 2021; timm vit_tiny_patch16_224"), 192, 12, 3, 16)
vit_b_16 = _variant("vit_b_16", imagenet("Dosovitskiy et al. 2021; torchvision vit_b_16"), 768, 12, 12, 16)
