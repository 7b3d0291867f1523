"""Canonical pointmaps, focal estimation and anchor depth offsets (the per-image front of sparse GA).

Every image ``i`` is predicted several times in its own frame (``pts11`` of each pair containing it). These
predictions are fused into one *canonical* pointmap, from which the alignment takes:

- an initial focal length (robust Weiszfeld fit of a pinhole camera, :func:`estimate_focal`);
- a sparse grid of *anchors*, one per ``subsample x subsample`` block, at pixel ``(s*a + s//2, s*b + s//2)``;
  the optimiser only has one depth per anchor;
- for every other pixel a fixed *relative depth offset* to its block's anchor (``canon2``,
  :func:`anchor_depth_offsets`), so that ``depth(pixel) = depth(anchor) * offset``.

All functions are pure torch, work in any floating dtype on any device, and never touch pixels in Python loops.
Pixel coordinates are ``(x, y) = (column, row)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import ConfigError, InputError

__all__ = [
    "CANONICAL_MODES",
    "canonical_view",
    "estimate_focal",
    "focal_base",
    "anchor_grid",
    "anchor_columns",
    "core_depth",
    "anchor_depth_offsets",
    "dense_anchor_depth_offsets",
]

CANONICAL_MODES = ("avg-angle", "avg-reldepth")

#: Confidences are turned into fusion weights ``w = conf - CONF_OFFSET`` (network confidences are >= 1).
CONF_OFFSET = 0.999


def _check_subsample(subsample: int) -> int:
    if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
        raise ConfigError(f"subsample must be a positive integer, got {subsample!r}")
    return subsample


def canonical_view(
    ptmaps: torch.Tensor,
    confs: torch.Tensor,
    subsample: int = 8,
    mode: str = "avg-angle",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fuse ``n`` predictions of one view into its canonical pointmap and relative depth map.

    Args:
        ptmaps: ``(..., n, H, W, 3)`` floating pointmaps of the view in its own camera frame (depth z > 0).
        confs: ``(..., n, H, W)`` their confidences (> 0.999; the network gives >= 1).
        subsample: anchor spacing ``s``; H and W must be multiples of it.
        mode: ``"avg-angle"`` (reference default) or ``"avg-reldepth"``.

    Returns:
        canon ``(..., H, W, 3)``: confidence-weighted mean pointmap, weights ``w = conf - 0.999``;
        canon2 ``(..., H, W)``: depth of each pixel relative to its block's anchor (1 at the anchors);
        confs ``(..., H, W)``: ``sum w^2 / sum w``.

    ``avg-reldepth`` averages ``z / z_anchor`` over the predictions. ``avg-angle`` averages, per prediction, the
    elevation angle ``atan((z - z_anchor) / r)`` seen from the anchor (``r`` = 3D xy distance to the anchor,
    clipped at 1e-8), turns it back into a depth step with the mean ``r``, and divides by the canonical anchor
    depth: ``canon2 = 1 + mean(r) tan(mean angle) / canon_z(anchor)``.
    """
    s = _check_subsample(subsample)
    if mode not in CANONICAL_MODES:
        raise ConfigError(f"unknown canonical mode {mode!r} (expected one of {', '.join(CANONICAL_MODES)})")
    if not isinstance(ptmaps, torch.Tensor) or not isinstance(confs, torch.Tensor):
        raise InputError("canonical_view: ptmaps and confs must be torch tensors")
    if ptmaps.ndim < 4 or ptmaps.shape[-1] != 3:
        raise InputError(f"canonical_view: ptmaps must be (..., n, H, W, 3), got {tuple(ptmaps.shape)}")
    if tuple(confs.shape) != tuple(ptmaps.shape[:-1]):
        raise InputError(
            f"canonical_view: confs shape {tuple(confs.shape)} does not match ptmaps {tuple(ptmaps.shape)}"
        )
    if not ptmaps.is_floating_point():
        raise InputError(f"canonical_view: ptmaps must be floating point, got {ptmaps.dtype}")
    *batch, n, H, W, _ = ptmaps.shape
    if n < 1:
        raise InputError("canonical_view: at least one prediction of the view is needed")
    if H % s or W % s:
        raise InputError(f"canonical_view: image size {H}x{W} (HxW) is not a multiple of subsample={s}")
    if not bool(torch.isfinite(torch.stack(torch.aminmax(ptmaps))).all()):  # one pass; min/max propagate NaN
        raise InputError("canonical_view: ptmaps contain non-finite values")
    confs = confs.to(ptmaps.dtype)
    if not bool((confs > CONF_OFFSET).all()):  # also catches NaN
        raise InputError(f"canonical_view: confidences must be finite and > {CONF_OFFSET}")

    X = ptmaps.reshape(-1, n, H, W, 3)
    w = confs.reshape(-1, n, H, W) - CONF_OFFSET  # (B, n, H, W)
    B = X.shape[0]
    w_sum = w.sum(dim=1)  # (B, H, W)
    canon = (w.unsqueeze(-1) * X).sum(dim=1) / w_sum.unsqueeze(-1)  # (B, H, W, 3)
    out_confs = w.square().sum(dim=1) / w_sum

    # block view: (B, n, h, s, w, s) with the anchor of block (b, a) at in-block offset (s//2, s//2)
    h, wb_ = H // s, W // s
    a = s // 2
    eps = torch.finfo(X.dtype).eps
    z = X[..., 2]
    z_blk = z.reshape(B, n, h, s, wb_, s)
    z_anchor = z[:, :, a::s, a::s].clamp(min=eps).reshape(B, n, h, 1, wb_, 1)
    w_blk = w.reshape(B, n, h, s, wb_, s)
    w_blk_sum = w_blk.sum(dim=1)

    if mode == "avg-reldepth":
        canon2 = (w_blk * (z_blk / z_anchor)).sum(dim=1) / w_blk_sum
    else:  # avg-angle
        xy = X[..., :2]
        xy_blk = xy.reshape(B, n, h, s, wb_, s, 2)
        xy_anchor = xy[:, :, a::s, a::s].reshape(B, n, h, 1, wb_, 1, 2)
        radius = (xy_blk - xy_anchor).norm(dim=-1).clamp(min=1e-8)
        angle = torch.atan((z_blk - z_anchor) / radius)
        mean_angle = (w_blk * angle).sum(dim=1) / w_blk_sum
        dz = radius.mean(dim=1) * torch.tan(mean_angle)
        canon_z_anchor = canon[:, a::s, a::s, 2].clamp(min=eps).reshape(B, h, 1, wb_, 1)
        canon2 = 1 + dz / canon_z_anchor

    return (
        canon.reshape(*batch, H, W, 3),
        canon2.reshape(*batch, H, W),
        out_confs.reshape(*batch, H, W),
    )


def focal_base(H: int, W: int) -> float:
    """Reference focal unit ``max(H, W) / (2 tan 30deg)`` (a 60 degree field of view), in pixels."""
    return max(H, W) / (2 * math.tan(math.radians(60) / 2))


def estimate_focal(
    pts3d: torch.Tensor,
    pp: torch.Tensor | Sequence[float] | None = None,
    min_factor: float = 0.5,
    max_factor: float = 3.5,
    niter: int = 10,
) -> torch.Tensor:
    """Focal length (pixels) of a pinhole camera that best reprojects a pointmap onto its pixel grid.

    Minimises ``sum_p |(u, v)_p - pp - f (x/z, y/z)_p|`` over ``f`` (Weiszfeld: a least-squares start, then
    ``niter`` reweighted least-squares steps with weights ``1 / max(distance, 1e-8)``), pixels at integer
    coordinates. The result is clipped to ``[min_factor, max_factor] * max(H, W) / (2 tan 30deg)``.
    Points with a non-finite coordinate or a depth <= 0 are ignored. The estimate is scale invariant.

    Args:
        pts3d: ``(..., H, W, 3)`` floating pointmap(s) in camera frame.
        pp: principal point ``(x, y)``, shape ``(2,)`` or ``(..., 2)``; default ``(W/2, H/2)``.

    Returns:
        ``(...)`` focal lengths, same dtype and device as ``pts3d`` (a 0-d tensor for one pointmap).
    """
    if not isinstance(pts3d, torch.Tensor) or pts3d.ndim < 3 or pts3d.shape[-1] != 3:
        got = getattr(pts3d, "shape", None)
        raise InputError(f"estimate_focal: pts3d must be a (..., H, W, 3) tensor, got {got}")
    if not pts3d.is_floating_point():
        raise InputError(f"estimate_focal: pts3d must be floating point, got {pts3d.dtype}")
    if isinstance(niter, bool) or not isinstance(niter, int) or niter < 0:
        raise ConfigError(f"estimate_focal: niter must be a non-negative integer, got {niter!r}")
    *batch, H, W, _ = pts3d.shape
    dtype, device = pts3d.dtype, pts3d.device
    pts = pts3d.reshape(-1, H * W, 3)
    B = pts.shape[0]

    if pp is None:
        pp_t = torch.tensor([W / 2, H / 2], dtype=dtype, device=device)
    else:
        pp_t = torch.as_tensor(pp, dtype=dtype, device=device)
        if pp_t.shape[-1] != 2:
            raise InputError(f"estimate_focal: pp must have a last dimension of 2, got {tuple(pp_t.shape)}")
    pp_t = pp_t.reshape(-1, 1, 2)
    if pp_t.shape[0] not in (1, B):
        raise InputError(f"estimate_focal: {pp_t.shape[0]} principal points for {B} pointmaps")
    ys, xs = torch.meshgrid(
        torch.arange(H, device=device, dtype=dtype), torch.arange(W, device=device, dtype=dtype), indexing="ij"
    )
    pixels = torch.stack((xs, ys), dim=-1).reshape(1, H * W, 2) - pp_t  # (1 or B, HW, 2)

    z = pts[..., 2:3]
    valid = torch.isfinite(pts).all(dim=-1, keepdim=True) & (z > 0)
    if not bool(valid.any(dim=1).all()):
        raise InputError("estimate_focal: a pointmap has no point with finite coordinates and positive depth")
    xy_over_z = torch.where(valid, pts[..., :2], 0) / torch.where(valid, z, 1)

    dot_xy_px = (xy_over_z * pixels).sum(dim=-1)  # (B, HW)
    dot_xy_xy = xy_over_z.square().sum(dim=-1)
    focal = dot_xy_px.mean(dim=1) / dot_xy_xy.mean(dim=1)
    for _ in range(niter):
        dist = (pixels - focal.view(-1, 1, 1) * xy_over_z).norm(dim=-1)
        weight = dist.clamp(min=1e-8).reciprocal()
        focal = (weight * dot_xy_px).mean(dim=1) / (weight * dot_xy_xy).mean(dim=1)

    if not bool(torch.isfinite(focal).all()):
        raise InputError("estimate_focal: degenerate pointmap (all points on the optical axis?)")
    base = focal_base(H, W)
    focal = focal.clamp(min=min_factor * base, max=max_factor * base)
    return focal.reshape(batch)


def anchor_columns(W: int, subsample: int = 8) -> int:
    """Number of anchor columns ``len(range(s//2, W, s)) = ceil((W - s//2) / s)``."""
    s = _check_subsample(subsample)
    return max(0, -(-(W - s // 2) // s))


def anchor_grid(H: int, W: int, subsample: int = 8, device: torch.device | str | None = None) -> torch.Tensor:
    """Anchor pixels ``(s*b + s//2, s*a + s//2)`` as ``(A, 2)`` int64 ``(x, y)``, x fastest then y.

    Row ``k`` of the result is anchor (core) index ``k`` of :func:`anchor_depth_offsets`.
    """
    s = _check_subsample(subsample)
    ys = torch.arange(s // 2, H, s, device=device, dtype=torch.int64)
    xs = torch.arange(s // 2, W, s, device=device, dtype=torch.int64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx.reshape(-1), gy.reshape(-1)), dim=-1)


def core_depth(canon: torch.Tensor, subsample: int = 8) -> torch.Tensor:
    """Canonical depth at the anchors: ``canon[s//2::s, s//2::s, 2]``, shape ``(..., h, w)``.

    ``canon`` is a ``(..., H, W, 3)`` pointmap.
    """
    s = _check_subsample(subsample)
    if canon.ndim < 3 or canon.shape[-1] != 3:
        raise InputError(f"core_depth: canon must be (..., H, W, 3), got {tuple(canon.shape)}")
    return canon[..., s // 2 :: s, s // 2 :: s, 2]


def anchor_depth_offsets(
    canon2: torch.Tensor, pixels: torch.Tensor, subsample: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor index and relative depth offset of each given pixel (block quantisation).

    Args:
        canon2: ``(H, W)`` relative (or absolute) depth map, > 0 at the anchors.
        pixels: ``(M, 2)`` pixel ``(x, y)``; integer, or float truncated to integer like the reference.

    Returns:
        core_idx ``(M,)`` int64 ``= (y // s) * n_cols + x // s`` with ``n_cols = ceil((W - s//2) / s)`` (an index
        into :func:`anchor_grid`), and offsets ``(M,)`` ``= canon2[y, x] / canon2[anchor]`` in canon2's dtype.
    """
    s = _check_subsample(subsample)
    if not isinstance(canon2, torch.Tensor) or canon2.ndim != 2 or not canon2.is_floating_point():
        got = getattr(canon2, "shape", None)
        raise InputError(f"anchor_depth_offsets: canon2 must be a floating (H, W) tensor, got {got}")
    pixels = torch.as_tensor(pixels, device=canon2.device)
    if pixels.ndim != 2 or pixels.shape[1] != 2:
        raise InputError(f"anchor_depth_offsets: pixels must be (M, 2) (x, y), got {tuple(pixels.shape)}")
    H, W = canon2.shape
    rows, cols = len(range(s // 2, H, s)), anchor_columns(W, s)
    anchors = canon2[s // 2 :: s, s // 2 :: s].reshape(-1)
    if not bool((torch.isfinite(anchors) & (anchors > 0)).all()):
        raise InputError("anchor_depth_offsets: canon2 must be finite and > 0 at the anchors")
    px, py = pixels.long().unbind(dim=1)
    if px.numel() and not bool(((px >= 0) & (px < W) & (py >= 0) & (py < H)).all()):
        raise InputError(f"anchor_depth_offsets: pixel outside the {H}x{W} (HxW) image")
    bx, by = px // s, py // s
    if px.numel() and not bool(((bx < cols) & (by < rows)).all()):
        raise InputError(f"anchor_depth_offsets: pixel in a border block of the {H}x{W} image that has no anchor")
    core_idx = by * cols + bx
    offsets = canon2[py, px] / anchors[core_idx]
    return core_idx, offsets


def dense_anchor_depth_offsets(
    canon2: torch.Tensor, subsample: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`anchor_depth_offsets` for every pixel, x fastest then y.

    Returns pixels ``(H*W, 2)`` int64 ``(x, y)``, core_idx ``(H*W,)`` int64 and offsets ``(H*W,)``.
    """
    if not isinstance(canon2, torch.Tensor) or canon2.ndim != 2:
        got = getattr(canon2, "shape", None)
        raise InputError(f"dense_anchor_depth_offsets: canon2 must be an (H, W) tensor, got {got}")
    H, W = canon2.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=canon2.device), torch.arange(W, device=canon2.device), indexing="ij")
    pixels = torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=-1)
    core_idx, offsets = anchor_depth_offsets(canon2, pixels, subsample)
    return pixels, core_idx, offsets
