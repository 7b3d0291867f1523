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

    def _cos_sin(self, idx: torch.Tensor, half_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of ``idx * inv_freq`` duplicated as ``[a, a]``: (B, 1, N, half_dim) each.

        Angles are formed in float32 (as the reference's tables) and then cast to ``dtype``; computing them
        from the positions directly avoids a device sync for the table size.
        """
        exponent = torch.arange(0, half_dim, 2, device=idx.device, dtype=torch.float32) / half_dim
        inv_freq = 1.0 / (self.base**exponent)
        angles = (idx.to(torch.float32) * self.f0)[..., None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1).to(dtype)[:, None]
        return angles.cos(), angles.sin()

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotate ``tokens`` (B, heads, N, hd) by positions ``pos`` (B, N, 2); returns the same shape."""
        hd = tokens.shape[-1]
        if hd % 4 != 0:
            raise ValueError(f"RoPE2D needs a head width divisible by 4, got {hd}")
        rows, cols = tokens.chunk(2, dim=-1)
        out = []
        for part, idx in ((rows, pos[..., 0]), (cols, pos[..., 1])):
            cos, sin = self._cos_sin(idx, hd // 2, tokens.dtype)
            out.append(part * cos + _rotate_half(part) * sin)
        return torch.cat(out, dim=-1)
