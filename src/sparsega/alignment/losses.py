"""The optimiser's losses, schedules and geometry in plain torch: the autograd twin of the compiled kernels
(:mod:`.kernels`), also the path on CUDA and with known-pose constraints.

Conventions are the reference's: the robust loss is ``(r + o)^gamma - o^gamma`` on a Euclidean distance ``r``
(:func:`~.kernels.common.gamma_offset`), the distance's square is clamped at ``SQ_MIN``, camera depth at ``Z_MIN``
and pixels to ``[PIX_MIN, PIX_MAX]``. Cameras are packed as the rows of a ``(17, N)`` table
``[R (9, row-major), t (3), f, ppx, ppy, f0 / f, 1]`` (cam2w), gathered once per point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .kernels.common import PIX_MAX, PIX_MIN, SQ_MIN, Z_MIN, gamma_offset

Tensor = torch.Tensor


def gamma_loss(gamma: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Robust loss on the Euclidean distance ``r = |a - b|`` over the last axis: ``(r + o)^gamma - o^gamma``.

    ``gamma = 1`` is plain ``r``. Shapes: ``(..., D), (..., D) -> (...)``.
    """
    if gamma == 1:
        return lambda a, b: (a - b).norm(dim=-1)
    off = gamma_offset(gamma)

    def loss(a: Tensor, b: Tensor) -> Tensor:
        return ((a - b).norm(dim=-1) + off) ** gamma - off**gamma

    return loss


def gamma_of_distance(gamma: float) -> Callable[[Tensor], Tensor]:
    """The gamma loss as a function of a precomputed distance ``r >= 0`` (any shape)."""
    if gamma == 1:
        return lambda r: r
    off = gamma_offset(gamma)
    return lambda r: (r + off) ** gamma - off**gamma


def cosine_schedule(alpha: float, base: float, end: float) -> float:
    """Cosine decay from ``base`` (alpha=0) to ``end`` (alpha=1)."""
    return end + (base - end) * (1 + math.cos(alpha * math.pi)) / 2


def linear_schedule(alpha: float, base: float, end: float) -> float:
    """Linear decay from ``base`` (alpha=0) to ``end`` (alpha=1)."""
    return (1 - alpha) * base + alpha * end


SCHEDULES = {"cosine": cosine_schedule, "linear": linear_schedule}


def backproject(xy: Tensor, depth: Tensor, focal: Tensor, pp: Tensor) -> Tensor:
    """Camera-frame points of pixels. ``xy (..., 2)``, ``depth (...)``, ``focal (...)``, ``pp (..., 2)`` ->
    ``(..., 3)``; pinhole with square pixels, pixel centres at integer coordinates."""
    uv = (xy - pp) / focal.unsqueeze(-1)
    return torch.cat((uv * depth.unsqueeze(-1), depth.unsqueeze(-1)), dim=-1)


def transform(rot: Tensor, trans: Tensor, pts: Tensor) -> Tensor:
    """Apply ``x -> R x + t`` with ``rot (..., 3, 3)``, ``trans (..., 3)``, ``pts (..., 3)``."""
    return (rot @ pts.unsqueeze(-1)).squeeze(-1) + trans


def project(rot_w2c: Tensor, trans_w2c: Tensor, focal: Tensor, pp: Tensor, pts: Tensor) -> Tensor:
    """Pixel coordinates of world points, as the reference: depth clipped at 1e-3, pixels clipped to
    [-1000, 2000] so that points behind the camera cannot produce NaNs. ``pts (..., 3) -> (..., 2)``."""
    cam = transform(rot_w2c, trans_w2c, pts)
    uv = cam[..., :2] / cam[..., 2:3].clamp(min=Z_MIN)
    return (uv * focal.unsqueeze(-1) + pp).clamp(PIX_MIN, PIX_MAX)


def tree_levels(
    n: int, root: int | Sequence[int], edges: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Group the nodes of a tree (or a forest with several roots) by depth.

    Returns ``(nodes_per_level, parent_pos_per_level, inverse)`` where ``parent_pos_per_level[l][k]`` is the
    position of node ``nodes_per_level[l][k]``'s parent inside level ``l-1`` and ``inverse`` maps node index ->
    position in the concatenation of all levels. ``edges (E, 2)`` are (parent, child), parents listed first.
    """
    roots = sorted({int(root)} if np.isscalar(root) else {int(r) for r in root})
    parent = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    for p, c in edges:  # BFS order: parents come first
        parent[c] = p
        depth[c] = depth[p] + 1
    levels: list[np.ndarray] = []
    parent_pos: list[np.ndarray] = []
    pos = np.zeros(n, dtype=np.int64)
    for lvl in range(int(depth.max()) + 1 if n else 0):
        nodes = np.flatnonzero(depth == lvl)
        pos[nodes] = np.arange(len(nodes))
        levels.append(nodes)
        parent_pos.append(pos[parent[nodes]] if lvl else np.zeros(0, dtype=np.int64))
    if n and sorted(levels[0].tolist()) != roots:
        raise ValueError("kinematic tree is not a spanning forest of the given roots")
    inverse = np.empty(n, dtype=np.int64)
    inverse[np.concatenate(levels)] = np.arange(n)
    return levels, parent_pos, inverse


def compose_chain(
    rel: Tensor,
    levels: Sequence[np.ndarray | Tensor],
    parent_pos: Sequence[np.ndarray | Tensor],
    inverse: np.ndarray | Tensor,
) -> Tensor:
    """Absolute poses from relative ones along the tree: ``abs[child] = abs[parent] @ rel[child]``.

    ``rel (N, 4, 4)`` -> ``(N, 4, 4)``, one batched matmul per tree depth level. The index arrays may be given as
    tensors on ``rel``'s device (no per-call conversion).
    """
    dev = rel.device

    def idx(x: np.ndarray | Tensor) -> Tensor:
        return torch.as_tensor(x, device=dev)

    out = [rel.index_select(0, idx(levels[0]))]
    for nodes, ppos in zip(levels[1:], parent_pos[1:]):
        out.append(out[-1].index_select(0, idx(ppos)) @ rel.index_select(0, idx(nodes)))
    return torch.cat(out).index_select(0, idx(inverse))


class _Gather(torch.autograd.Function):
    """``index_select(table, dim, idx)`` with a backward that is one ``index_add_`` (torch's generic
    index_select backward goes through a several times slower scatter on CPU)."""

    @staticmethod
    def forward(ctx, table: Tensor, dim: int, idx: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(idx)
        ctx.shape, ctx.dim = table.shape, dim
        return torch.index_select(table, dim, idx)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).index_add_(ctx.dim, idx, grad.contiguous()), None, None


def gather(table: Tensor, dim: int, idx: Tensor) -> Tensor:
    """``torch.index_select(table, dim, idx)`` with a fast backward (see :class:`_Gather`)."""
    return _Gather.apply(table, dim, idx)


def distance(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Euclidean distance between points given as coordinate tuples (each (L,)) -> (L,).

    Written out (not ``norm`` over a tiny axis, which is ~50x slower on CPU); the square is clamped at 1e-30 so
    the gradient stays finite at exactly zero distance (the value changes by at most 1e-15).
    """
    sq = sum((u - v) * (u - v) for u, v in zip(a, b))
    return sq.clamp_min(SQ_MIN).sqrt()  # type: ignore[union-attr]


def camera_rows(table: Tensor, idx: Tensor) -> tuple[Tensor, ...]:
    """The 17 table rows at images ``idx (L,)``: a tuple of contiguous (L,) tensors."""
    # one 1-D gather per row: unbinding a single (17, L) gather costs a large stack in the backward pass
    return tuple(gather(row, 0, idx) for row in table.unbind(0))


def to_world(r: tuple[Tensor, ...], x: Tensor, y: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """World coordinates of pixels ``(x, y)`` at depth ``d`` (all (L,)) for gathered cameras ``r``."""
    cx = (x - r[13]) / r[12] * d
    cy = (y - r[14]) / r[12] * d
    return (
        r[0] * cx + r[1] * cy + r[2] * d + r[9],
        r[3] * cx + r[4] * cy + r[5] * d + r[10],
        r[6] * cx + r[7] * cy + r[8] * d + r[11],
    )


def to_pixels(r: tuple[Tensor, ...], wx: Tensor, wy: Tensor, wz: Tensor) -> tuple[Tensor, Tensor]:
    """Pixels of world points in gathered cameras (reference clipping: depth >= 1e-3, pixels in
    [-1000, 2000] so that points behind a camera never produce NaNs)."""
    dx, dy, dz = wx - r[9], wy - r[10], wz - r[11]
    z = (r[2] * dx + r[5] * dy + r[8] * dz).clamp(min=Z_MIN)
    fz = r[12] / z
    u = ((r[0] * dx + r[3] * dy + r[6] * dz) * fz + r[13]).clamp(PIX_MIN, PIX_MAX)
    v = ((r[1] * dx + r[4] * dy + r[7] * dz) * fz + r[14]).clamp(PIX_MIN, PIX_MAX)
    return u, v


class TwinLosses:
    """The match and fallback losses of a problem's first ``n_ok`` (trusted) matches, in torch (autograd).

    Holds the matches as flat ``(2K,)`` arrays, side 0 then side 1, in a fixed pseudo-random order: index_add_
    (the gathers' backward) is ~5x slower on CPU when its indices are sorted, as they are when matches come
    grouped by pair. Only the summation order changes.
    """

    def __init__(self, problem, n_ok: int) -> None:
        self.p, self.k = problem, n_ok
        perm = torch.randperm(n_ok, generator=torch.Generator().manual_seed(0)).to(problem.m_img.device)
        self.img = problem.m_img[:, perm].reshape(-1).contiguous()
        self.anchor = problem.m_anchor[:, perm].reshape(-1).contiguous()
        self.off_m1 = (problem.m_off[:, perm] - 1).reshape(-1).contiguous()
        self.x = problem.m_xy[:, perm, 0].reshape(-1).contiguous()
        self.y = problem.m_xy[:, perm, 1].reshape(-1).contiguous()
        self.conf = problem.m_conf[perm].contiguous()
        self.fb_target = tuple(problem.fb_target[:, c].contiguous() for c in range(3))

    def match_points(self, table: Tensor, anchor_depth: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], tuple]:
        """World coordinates (3 x (2K,)) of both sides of the trusted matches, and the gathered cameras."""
        r = camera_rows(table, self.img)
        d = gather(anchor_depth, 0, self.anchor) * (1 + self.off_m1 * r[15])
        return to_world(r, self.x, self.y, d), r

    def loss_3d(self, table: Tensor, anchor_depth: Tensor, gamma: float) -> Tensor:
        """Stage 1: confidence-weighted robust distance between the two 3D points of each trusted match."""
        k = self.k
        if k == 0:
            return table.new_zeros(())
        pts, _ = self.match_points(table, anchor_depth)
        r = distance(tuple(c[:k] for c in pts), tuple(c[k:] for c in pts))
        return (self.conf * gamma_of_distance(gamma)(r)).sum() / self.conf.sum()

    def loss_2d(self, table: Tensor, anchor_depth: Tensor, gamma: float) -> Tensor:
        """Stage 2: confidence-weighted robust reprojection error of each side's point into the other image,
        both ways."""
        k = self.k
        if k == 0:
            return table.new_zeros(())
        pts, cam = self.match_points(table, anchor_depth)
        rho = gamma_of_distance(gamma)
        total = pts[0].new_zeros(())
        for sl_self, sl_other in ((slice(0, k), slice(k, None)), (slice(k, None), slice(0, k))):
            u, v = to_pixels(tuple(c[sl_self] for c in cam), *(c[sl_other] for c in pts))
            total = total + (self.conf * rho(distance((self.x[sl_self], self.y[sl_self]), (u, v)))).sum()
        return total / (2 * self.conf.sum())

    def loss_fallback(self, table: Tensor, anchor_depth: Tensor, gamma: float) -> Tensor:
        """DUSt3R fallback: regression of anchors onto the other view's pointmap prediction (pairs with
        untrusted matches)."""
        p = self.p
        if p.fb_conf.numel() == 0:
            return table.new_zeros(())
        ri = camera_rows(table, p.anchor_img[p.fb_anchor])
        d = gather(anchor_depth, 0, p.fb_anchor) * (1 + (p.fb_off - 1) * ri[15])
        pts = to_world(ri, p.fb_xy[:, 0].contiguous(), p.fb_xy[:, 1].contiguous(), d)
        r = camera_rows(table, p.fb_ref)
        tx, ty, tz = self.fb_target
        tgt = (
            r[0] * tx + r[1] * ty + r[2] * tz + r[9],
            r[3] * tx + r[4] * ty + r[5] * tz + r[10],
            r[6] * tx + r[7] * ty + r[8] * tz + r[11],
        )
        return (p.fb_conf * gamma_of_distance(gamma)(distance(pts, tgt))).sum() / p.fb_conf.sum()


def pose_prior(cam2w: Tensor, mask: Tensor, R: Tensor, C: Tensor, weight: float, spread: float) -> Tensor:
    """Soft prior on known poses: ``weight * (mean angle^2 + mean (|dC| / spread)^2)`` over the cameras ``mask``,
    angles in radians between ``cam2w``'s rotations and ``R (N, 3, 3)``, centres against ``C (N, 3)``."""
    import roma  # imported here: roma pulls in torch._dynamo (~0.7 s), not needed by the compiled path

    rot_err = roma.rotmat_geodesic_distance(cam2w[mask, :3, :3], R[mask])
    tr_err = (cam2w[mask, :3, 3] - C[mask]).norm(dim=1) / spread
    return weight * (rot_err.square().mean() + tr_err.square().mean())
