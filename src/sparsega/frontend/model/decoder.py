"""CroCo decoder block: self-attention, cross-attention to the other view, MLP (all pre-norm, RoPE on q/k)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import LayerNorm, Mlp, SelfAttention, _merge_heads, _split_heads
from .rope import RoPE2D


class CrossAttention(nn.Module):
    """Multi-head cross-attention with separate q/k/v projections; RoPE on q (query pos) and k (key pos)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, qpos: torch.Tensor, kpos: torch.Tensor
    ) -> torch.Tensor:
        """``query`` (B, Nq, C), ``key``/``value`` (B, Nk, C), positions (B, N*, 2) -> (B, Nq, C)."""
        q = _split_heads(self.projq(query), self.num_heads)
        k = _split_heads(self.projk(key), self.num_heads)
        v = _split_heads(self.projv(value), self.num_heads)
        if self.rope is not None:
            q = self.rope(q, qpos)
            k = self.rope(k, kpos)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class DecoderBlock(nn.Module):
    """One decoder layer for one view: self-attn, cross-attn to ``norm_y(other view)``, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D | None, norm_mem: bool = True) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y: nn.Module = LayerNorm(dim) if norm_mem else nn.Identity()

    def forward(self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor) -> torch.Tensor:
        """``x`` (B, Nx, C) this view, ``y`` (B, Ny, C) the other view (previous layer) -> new ``x``."""
        x = x + self.attn(self.norm1(x), xpos)
        y_n = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y_n, y_n, xpos, ypos)
        return x + self.mlp(self.norm3(x))
