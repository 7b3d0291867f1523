"""Compiled canonical views (numba): the fusion of one image's pointmaps and the Weiszfeld focal fit, in one pass
per prediction and one pass per iteration instead of a dozen full-resolution torch temporaries.

The formulas are :func:`sparsega.alignment.canonical.canonical_view` and
:func:`~sparsega.alignment.canonical.estimate_focal` (their plain torch twins, which also serve other devices and
dtypes); ``tests/test_canonical.py`` compares the two. Inputs are float32 numpy arrays, arithmetic is float64 and
results are rounded to float32 once, so the kernel is at least as accurate as the twin. Single-threaded: the
reductions run in one fixed order (results do not depend on any thread count).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ..canonical import CANONICAL_MODES, CONF_OFFSET, focal_base
from .common import FASTMATH

_EPS32 = float(np.finfo(np.float32).eps)  # the twin clamps anchor depths at its dtype's epsilon (float32 here)
_PI_2 = math.pi / 2
_PI_4 = math.pi / 4
_TAN_PI_8 = math.sqrt(2.0) - 1.0


def _atan(x: float) -> float:
    """``atan(x)`` to about 1e-16 absolute, with selects and a single division, so that loops calling it vectorise
    (libm's scalar ``atan`` does not). Range reduction ``|x| -> |u| <= tan(pi/8)`` (``pi/2 + atan(-1/t)``,
    ``pi/4 + atan((t-1)/(t+1))``), then the odd Taylor series to ``u^39``. NaN propagates."""
    t = abs(x)
    big = t > 1.0 / _TAN_PI_8  # tan(3 pi / 8)
    mid = t > _TAN_PI_8
    u = (-1.0 if big else (t - 1.0 if mid else t)) / (t if big else (t + 1.0 if mid else 1.0))
    u2 = u * u
    p = -1.0 / 39.0  # u - u^3/3 + u^5/5 - ... = u * p(u^2), by Horner
    for k in range(18, -1, -1):
        p = p * u2 + (1.0 if k % 2 == 0 else -1.0) / (2 * k + 1)
    r = (_PI_2 if big else (_PI_4 if mid else 0.0)) + u * p
    return -r if x < 0 else r


def _fuse_view(
    pts: np.ndarray,
    confs: np.ndarray,
    s: int,
    angle: bool,
    canon: np.ndarray,
    canon2: np.ndarray,
    out_confs: np.ndarray,
) -> None:
    """Fill ``canon (H, W, 3)``, ``canon2 (H, W)`` and ``out_confs (H, W)`` (float32) from ``pts (n, H, W, 3)``
    and ``confs (n, H, W)`` (float32) as :func:`sparsega.alignment.canonical.canonical_view` does (``angle``:
    ``avg-angle``, else ``avg-reldepth``). Row by row: per-pixel sums over the predictions in row buffers, then
    the row's results."""
    n, H, W = confs.shape
    a = s // 2
    ws = np.empty(W)
    w2 = np.empty(W)
    cx = np.empty(W)
    cy = np.empty(W)
    cz = np.empty(W)
    num = np.empty(W)  # sum w * angle (avg-angle) or sum w * z / z_anchor (avg-reldepth)
    rad = np.empty(W)  # sum of the radii (avg-angle)
    zrow = np.empty(W)  # each pixel's anchor depth and xy in the current prediction, repeated over its block
    xrow = np.empty(W)
    yrow = np.empty(W)
    zblk = np.empty(W // s)  # canonical anchor depths of the current block row
    for y in range(H):
        ya = (y // s) * s + a
        ws[:] = 0.0
        w2[:] = 0.0
        cx[:] = 0.0
        cy[:] = 0.0
        cz[:] = 0.0
        num[:] = 0.0
        rad[:] = 0.0
        for k in range(n):
            for x in range(W):
                xa = (x // s) * s + a
                za = float(pts[k, ya, xa, 2])
                zrow[x] = za if za > _EPS32 else _EPS32  # NaN passes, as torch's clamp
                xrow[x] = pts[k, ya, xa, 0]
                yrow[x] = pts[k, ya, xa, 1]
            for x in range(W):
                w = float(confs[k, y, x]) - CONF_OFFSET
                px = float(pts[k, y, x, 0])
                py = float(pts[k, y, x, 1])
                pz = float(pts[k, y, x, 2])
                ws[x] += w
                w2[x] += w * w
                cx[x] += w * px
                cy[x] += w * py
                cz[x] += w * pz
                if angle:
                    dx = px - xrow[x]
                    dy = py - yrow[x]
                    r = math.sqrt(dx * dx + dy * dy)
                    r = 1e-8 if r < 1e-8 else r
                    rad[x] += r
                    zrow[x] = (pz - zrow[x]) / r  # the tangent of the elevation angle, replacing the anchor depth
                else:
                    num[x] += w * (pz / zrow[x])
            if angle:
                for x in range(W):  # its own loop: a plain map over a row, which vectorises
                    num[x] += (float(confs[k, y, x]) - CONF_OFFSET) * _atan(zrow[x])
        for x in range(W):
            canon[y, x, 0] = cx[x] / ws[x]
            canon[y, x, 1] = cy[x] / ws[x]
            canon[y, x, 2] = cz[x] / ws[x]
            out_confs[y, x] = w2[x] / ws[x]
        if angle:
            if y % s == 0:  # the canonical depth of this block row's anchors (row ya >= y is not written yet)
                for b in range(W // s):
                    xa = b * s + a
                    wa = 0.0
                    za = 0.0
                    for k in range(n):
                        wk = float(confs[k, ya, xa]) - CONF_OFFSET
                        wa += wk
                        za += wk * float(pts[k, ya, xa, 2])
                    za = za / wa
                    zblk[b] = za if za > _EPS32 else _EPS32
            for x in range(W):
                canon2[y, x] = 1.0 + (rad[x] / n) * math.tan(num[x] / ws[x]) / zblk[x // s]
        else:
            for x in range(W):
                canon2[y, x] = num[x] / ws[x]


def _weiszfeld_focal(pts: np.ndarray, ppx: float, ppy: float, niter: int) -> float:
    """Unclipped focal of :func:`sparsega.alignment.canonical.estimate_focal` for one ``(H, W, 3)`` pointmap
    (float64 sums); NaN when no pixel has finite coordinates and a positive depth."""
    H, W = pts.shape[0], pts.shape[1]
    m = H * W
    us = np.zeros(m)
    vs = np.zeros(m)
    dxs = np.zeros(m)
    dys = np.zeros(m)
    n_ok = 0
    for y in range(H):
        for x in range(W):
            px, py, pz = float(pts[y, x, 0]), float(pts[y, x, 1]), float(pts[y, x, 2])
            if math.isfinite(px) and math.isfinite(py) and math.isfinite(pz) and pz > 0:
                us[n_ok] = px / pz
                vs[n_ok] = py / pz
                dxs[n_ok] = x - ppx
                dys[n_ok] = y - ppy
                n_ok += 1
    if n_ok == 0:
        return math.nan
    num = 0.0
    den = 0.0
    for i in range(n_ok):
        num += us[i] * dxs[i] + vs[i] * dys[i]
        den += us[i] * us[i] + vs[i] * vs[i]
    focal = num / den
    for _ in range(niter):
        num = 0.0
        den = 0.0
        for i in range(n_ok):
            ex = dxs[i] - focal * us[i]
            ey = dys[i] - focal * vs[i]
            d = math.sqrt(ex * ex + ey * ey)
            wt = 1.0 / (1e-8 if d < 1e-8 else d)
            num += wt * (us[i] * dxs[i] + vs[i] * dys[i])
            den += wt * (us[i] * us[i] + vs[i] * vs[i])
        focal = num / den
    return focal


_atan = numba.njit(cache=True, inline="always", fastmath=FASTMATH)(_atan)
# nogil: the alignment reads the next pairs on another thread meanwhile (alignment.reading.ReadAhead)
fuse_view_jit = numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)(_fuse_view)
weiszfeld_focal_jit = numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)(_weiszfeld_focal)


def fuse_view(
    ptmaps: np.ndarray, confs: np.ndarray, subsample: int, mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sparsega.alignment.canonical.canonical_view` of one image on float32 numpy arrays ``ptmaps (n, H, W,
    3)``, ``confs (n, H, W)`` (finite, confidences > 0.999, H and W multiples of ``subsample``: the caller
    checks): ``canon (H, W, 3)``, ``canon2 (H, W)``, ``confs (H, W)``, float32."""
    if mode not in CANONICAL_MODES:
        raise ValueError(f"unknown canonical mode {mode!r}")
    n, H, W, _ = ptmaps.shape
    canon = np.empty((H, W, 3), np.float32)
    canon2 = np.empty((H, W), np.float32)
    out_confs = np.empty((H, W), np.float32)
    fuse_view_jit(
        np.ascontiguousarray(ptmaps, np.float32),
        np.ascontiguousarray(confs, np.float32),
        int(subsample),
        mode == "avg-angle",
        canon,
        canon2,
        out_confs,
    )
    return canon, canon2, out_confs


def estimate_focal(pts3d: np.ndarray, min_factor: float = 0.5, max_factor: float = 3.5, niter: int = 10) -> float:
    """:func:`sparsega.alignment.canonical.estimate_focal` of one ``(H, W, 3)`` pointmap, principal point at the
    image centre; NaN when no point is usable (the caller raises)."""
    H, W = pts3d.shape[:2]
    f = weiszfeld_focal_jit(np.ascontiguousarray(pts3d, np.float32), W / 2, H / 2, int(niter))
    if not math.isfinite(f):
        return math.nan
    base = focal_base(H, W)
    return min(max(f, min_factor * base), max_factor * base)
