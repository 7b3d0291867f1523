"""ViT encoder pieces shared by the CroCo encoder and decoder: patch embedding, MLP, attention, blocks.

Module and attribute names mirror the official state dict (``patch_embed.proj``, ``attn.qkv``, ``mlp.fc1``, ...)
so that official checkpoints load with strict key checking.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .rope import RoPE2D

LAYER_NORM_EPS = 1e-6
"""LayerNorm epsilon used everywhere in the network (not PyTorch's default 1e-5)."""

LayerNorm = partial(nn.LayerNorm, eps=LAYER_NORM_EPS)


def patch_positions(batch: int, n_rows: int, n_cols: int, device: torch.device | str) -> torch.Tensor:
    """Patch (row, col) positions in row-major token order: ``(batch, n_rows * n_cols, 2)`` int64."""
    rows = torch.arange(n_rows, device=device, dtype=torch.int64)
    cols = torch.arange(n_cols, device=device, dtype=torch.int64)
    grid = torch.cartesian_prod(rows, cols) if n_rows * n_cols > 0 else torch.zeros(0, 2, dtype=torch.int64)
    return grid.reshape(1, n_rows * n_cols, 2).expand(batch, -1, -1).to(device)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (Conv kernel = stride = patch), no norm, no absolute embedding."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``img`` (B, 3, H, W) -> tokens (B, N, D) and positions (B, N, 2) int64, N = H/p * W/p."""
        b, _, h, w = img.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        x = self.proj(img)
        tokens = x.flatten(2).transpose(1, 2)
        return tokens, patch_positions(b, h // p, w // p, img.device)


class Mlp(nn.Module):
    """``fc2(GELU_erf(fc1(x)))``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="none")
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C/heads), heads contiguous along C."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, hd) -> (B, N, heads*hd)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection ([q | k | v]) and RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, C), ``pos`` (B, N, 2) -> (B, N, C)."""
        q, k, v = (_split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if self.rope is not None:
            q = self.rope(q, pos)
            k = self.rope(k, pos)
        out = F.scaled_dot_product_attention(q, k, v)  # scale = head_dim ** -0.5
        return self.proj(_merge_heads(out))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D | None) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, rope)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))
