"""2D rotary position embedding (RoPE) as used by CroCo / DUSt3R / MASt3R.

Each attention head of width ``hd`` is split in two halves: the first half is rotated by the patch ROW index,
the second by the patch COLUMN index. Within a half of width ``D`` the frequencies are
``base ** (-2k / D)`` for ``k < D/2``, the angle vector is duplicated as ``[a, a]`` and the rotation is
``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x_hi, x_lo]`` (halves, not interleaved pairs).
"""

from __future__ import annotations

import torch
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x_lo, x_hi] -> [-x_hi, x_lo]`` over the last dimension."""
    lo, hi = x.chunk(2, dim=-1)
    return torch.cat((-hi, lo), dim=-1)


class RoPE2D(nn.Module):
    """Parameter-free 2D RoPE; ``forward(tokens (B, heads, N, hd), pos (B, N, 2) int64 (row, col))``."""

    def __init__(self, base: float = 100.0, f0: float = 1.0) -> None:
        super().__init__()
        self.base = float(base)
        self.f0 = float(f0)

    def extra_repr(self) -> str:
        return f"base={self.base:g}"

    def _cos_sin(
        self, half_dim: int, n_pos: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables ``(n_pos, half_dim)`` of cos/sin of ``pos * inv_freq`` duplicated as ``[a, a]``.

        Angles are computed in float32 (like the reference) and then cast to ``dtype``.
        """
        exponent = torch.arange(0, half_dim, 2, device=device, dtype=torch.float32) / half_dim
        inv_freq = 1.0 / (self.base**exponent)
        t = torch.arange(n_pos, device=device, dtype=torch.float32) * self.f0
        angles = torch.outer(t, inv_freq).to(dtype)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotate ``tokens`` (B, heads, N, hd) by positions ``pos`` (B, N, 2); returns the same shape."""
        hd = tokens.shape[-1]
        if hd % 4 != 0:
            raise ValueError(f"RoPE2D needs a head width divisible by 4, got {hd}")
        half = hd // 2
        n_pos = int(pos.max().item()) + 1 if pos.numel() else 1
        cos, sin = self._cos_sin(half, n_pos, tokens.device, tokens.dtype)
        rows, cols = tokens.chunk(2, dim=-1)
        out = []
        for part, idx in ((rows, pos[..., 0]), (cols, pos[..., 1])):
            c = cos[idx][:, None]  # (B, 1, N, half)
            s = sin[idx][:, None]
            out.append(part * c + _rotate_half(part) * s)
        return torch.cat(out, dim=-1)
