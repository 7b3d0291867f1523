"""Compiled CPU kernel of the sparse optimiser's match losses (numba): loss and gradients in one pass over matches.

Each match is loaded once, its forward and backward are computed in registers, and per-chunk camera gradients are
accumulated in scalars: one pass over the match arrays per iteration. The plain twin of every kernel is the torch
autograd path of :class:`sparsega.alignment.optimizer.SparseAligner` (``loss_backend="autograd"``, also the CUDA path); the
tests compare the two.

Inputs are the :class:`MatchLayout` arrays and the ``(17, N)`` camera table (rows
``R (9, row-major), t (3), f, ppx, ppy, f0 / f, 1``). Conventions are the fused/autograd losses' exactly: the
distance's square is clamped at 1e-30, camera depth at 1e-3 and pixels to [-1000, 2000] with torch's clamp
gradient (passed where ``lo <= x <= hi``), and padding slots (confidence 0) contribute nothing. Arithmetic is
float64 whatever the input dtype; gradients are returned in the table's dtype.

The kernel is compiled on first use (a few seconds) and cached on disk by numba. :func:`available` says whether
numba can be imported; callers fall back to the autograd path otherwise (and on CUDA).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

try:  # optional at import time: the torch path works without it
    import numba

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None
    _HAVE_NUMBA = False

SQ_MIN = 1e-30
# reassociation (SIMD sums over a chunk) and fused multiply-add only: no "nnan"/"ninf", so a NaN or inf input still
# reaches the loss (the optimiser's non-finite guard relies on it)
_FASTMATH = {"reassoc", "contract", "nsz"}
Z_MIN = 1e-3
PIX_MIN, PIX_MAX = -1000.0, 2000.0


_prange = numba.prange if _HAVE_NUMBA else range
# numba's default ("workqueue") threading layer must not be entered from two Python threads at once (it aborts the
# process): parallel kernels are serialised across threads
LOCK = threading.Lock()


def gamma_offset(gamma: float) -> float:
    """Offset ``o = (1/gamma)^(1/(gamma-1))`` making the gamma loss ``(r + o)^gamma - o^gamma`` have slope 1 at 0;
    0 for ``gamma = 1`` (the plain distance). The one definition, used by the kernels and the autograd twin."""
    return 0.0 if gamma == 1 else (1.0 / gamma) ** (1.0 / (gamma - 1.0))


def available() -> bool:
    """True when the compiled kernel can be used (numba importable)."""
    return _HAVE_NUMBA


# gammas with a compiled form (the reference's 1.5 and 0.5, and 1, 2); others use the fused torch path
KERNEL_GAMMAS = {0.5: 1, 1.0: 2, 1.5: 3, 2.0: 4}


def _rho(r: float, gcode: int, gamma: float, off: float) -> tuple[float, float]:
    """``(r + off)^gamma`` and its derivative divided by ``r``, for the gammas of ``KERNEL_GAMMAS`` (``gcode``).
    Written as selects on the loop-invariant ``gcode`` with one ``sqrt`` and one division and no ``pow``, so that
    the match loops vectorise."""
    t = r + off
    s = math.sqrt(t)
    rho = s if gcode == 1 else (t if gcode == 2 else (t * s if gcode == 3 else t * t))
    return rho, gamma * rho / (t * r)


def _pose_grads(g: np.ndarray, s: int, o: int, tab: np.ndarray, gr: np.ndarray, gt: np.ndarray) -> None:
    """Accumulate into ``g (N, 17)`` the gradients of cameras ``s`` (self) and ``o`` (other) from those of the
    relative pose ``R_rel = R_s^T R_o`` (``gr``, 3x3 row-major (9,)), ``t_rel = R_s^T (t_o - t_s)`` (``gt``, (3,)):

    dR_o = R_s gR;  dR_s = R_o gR^T + (t_o - t_s) gt^T;  dt_o = R_s gt = -dt_s.
    """
    for i in range(3):
        dti = tab[o, 9 + i] - tab[s, 9 + i]
        acc = 0.0
        for k in range(3):
            acc += tab[s, 3 * i + k] * gt[k]
        g[o, 9 + i] += acc
        g[s, 9 + i] -= acc
        for j in range(3):
            a = 0.0
            b = 0.0
            for k in range(3):
                a += tab[s, 3 * i + k] * gr[3 * k + j]
                b += tab[o, 3 * i + k] * gr[3 * j + k]
            g[o, 3 * i + j] += a
            g[s, 3 * i + j] += b + dti * gt[j]


def _side(xs: np.ndarray, ys: np.ndarray, offm1: np.ndarray, adg: np.ndarray, row: int, b: int,
          px: float, py: float, inv_f: float, r15: float
          ) -> tuple[float, float, float, float, float, float, float, float, float, float]:
    """One match end: ``x, y, off - 1, anchor depth, depth factor, d, u, v, pc_x, pc_y`` with the camera-frame point
    ``pc = d (u, v, 1)``, ``u = (x - ppx) / f``, ``d = anchor depth * (1 + (off - 1) f0 / f)``."""
    x = xs[row, b]
    y = ys[row, b]
    o = offm1[row, b]
    a = adg[row, b]
    fac = 1.0 + o * r15
    d = a * fac
    u = (x - px) * inv_f
    v = (y - py) * inv_f
    return x, y, o, a, fac, d, u, v, u * d, v * d


def _point_grads(g0: float, g1: float, g2: float, u: float, v: float, p0: float, p1: float, d: float, a: float,
                 o: float, fac: float) -> tuple[float, float, float, float, float]:
    """The gradient ``g = dL/dpc`` of one match end's camera-frame point ``pc = d (u, v, 1)`` (see :func:`_side`)
    pushed back: ``dL/d(anchor depth)``, the per-chunk sums ``g . (pc_x, pc_y)``, ``g_x d``, ``g_y d`` (their factor
    ``-1/f`` is applied once per chunk) and ``dL/d(f0/f)``."""
    gd = g0 * u + g1 * v + g2
    return gd * fac, g0 * p0 + g1 * p1, g0 * d, g1 * d, gd * a * o


def _reproject(p0: float, p1: float, p2: float, f: float, px: float, py: float, x: float, y: float, cf: float,
               gcode: int, gamma: float, off: float) -> tuple[float, float, float, float, float, float, float]:
    """Robust reprojection term of camera-frame point ``p`` at pixel ``(x, y)`` and its gradients: returns
    ``conf * rho(r)`` and ``dL/dp (3), dL/df, dL/dppx, dL/dppy``."""
    # every clamp is written so that a NaN takes the pass-through side (torch's clamps propagate NaN too)
    zlive = not (p2 < Z_MIN)
    iz = 1.0 / (p2 if zlive else Z_MIN)
    fz = f * iz
    ur = px + p0 * fz
    vr = py + p1 * fz
    eu = (PIX_MIN if ur < PIX_MIN else (PIX_MAX if ur > PIX_MAX else ur)) - x
    ev = (PIX_MIN if vr < PIX_MIN else (PIX_MAX if vr > PIX_MAX else vr)) - y
    sq = eu * eu + ev * ev
    live = not (sq < SQ_MIN)
    r = math.sqrt(sq if live else SQ_MIN)
    rho, slope = _rho(r, gcode, gamma, off)
    w = cf * slope if live else 0.0
    gu = 0.0 if (ur < PIX_MIN or ur > PIX_MAX) else eu * w
    gv = 0.0 if (vr < PIX_MIN or vr > PIX_MAX) else ev * w
    hz = (gu * p0 + gv * p1) * iz
    return cf * rho, gu * fz, gv * fz, (-hz * fz if zlive else 0.0), hz, gu, gv


def _loss_and_grad(tab: np.ndarray, ad: np.ndarray, img: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                   offm1: np.ndarray, anc: np.ndarray, conf: np.ndarray, stage: int, gcode: int, gamma: float,
                   off: float, g_tab: np.ndarray, g_ad: np.ndarray) -> float:
    """Sum over matches of ``conf * rho(r)`` with ``rho(r) = (r + off)^gamma`` (``off``: see
    :func:`gamma_offset`; stage 1: both ends' 3D distance; stage 2: reprojection
    error of each end into the other image, both terms summed); gradients w.r.t. ``tab (N, 17)`` and ``ad (A,)``
    are ADDED to ``g_tab`` and ``g_ad`` (float64, unscaled).

    Per chunk, the relative pose and every gradient accumulator are local scalars, and the inner loops (one per
    stage) have no branch but selects and no scatter: they compile to SIMD code. The anchor gradients are
    buffered per match and scattered after the loop.
    """
    n_chunks, nb = conf.shape
    total = 0.0
    gbuf = np.empty((2 * n_chunks, nb))
    adg = np.empty((2 * n_chunks, nb))  # anchor depths gathered first: a gather in the loop prevents SIMD
    for c in _prange(2 * n_chunks):
        for b in range(nb):
            adg[c, b] = ad[anc[c, b]]
    # per-chunk results [loss, dR_ab (9), dt_ab (3), dR_ba (9), dt_ba (3), A: df dppx dppy dr15, B: same], reduced
    # in chunk order after the (parallel) loop: the result does not depend on the number of threads
    out = np.empty((n_chunks, 33))
    for c in _prange(n_chunks):
        ia = img[c]
        ib = img[n_chunks + c]
        cb = n_chunks + c
        # relative pose A <- B: R = R_a^T R_b, t = R_a^T (t_b - t_a); B <- A is (R^T, s = -R^T t)
        r00 = tab[ia, 0] * tab[ib, 0] + tab[ia, 3] * tab[ib, 3] + tab[ia, 6] * tab[ib, 6]
        r01 = tab[ia, 0] * tab[ib, 1] + tab[ia, 3] * tab[ib, 4] + tab[ia, 6] * tab[ib, 7]
        r02 = tab[ia, 0] * tab[ib, 2] + tab[ia, 3] * tab[ib, 5] + tab[ia, 6] * tab[ib, 8]
        r10 = tab[ia, 1] * tab[ib, 0] + tab[ia, 4] * tab[ib, 3] + tab[ia, 7] * tab[ib, 6]
        r11 = tab[ia, 1] * tab[ib, 1] + tab[ia, 4] * tab[ib, 4] + tab[ia, 7] * tab[ib, 7]
        r12 = tab[ia, 1] * tab[ib, 2] + tab[ia, 4] * tab[ib, 5] + tab[ia, 7] * tab[ib, 8]
        r20 = tab[ia, 2] * tab[ib, 0] + tab[ia, 5] * tab[ib, 3] + tab[ia, 8] * tab[ib, 6]
        r21 = tab[ia, 2] * tab[ib, 1] + tab[ia, 5] * tab[ib, 4] + tab[ia, 8] * tab[ib, 7]
        r22 = tab[ia, 2] * tab[ib, 2] + tab[ia, 5] * tab[ib, 5] + tab[ia, 8] * tab[ib, 8]
        d0 = tab[ib, 9] - tab[ia, 9]
        d1 = tab[ib, 10] - tab[ia, 10]
        d2 = tab[ib, 11] - tab[ia, 11]
        t0 = tab[ia, 0] * d0 + tab[ia, 3] * d1 + tab[ia, 6] * d2
        t1 = tab[ia, 1] * d0 + tab[ia, 4] * d1 + tab[ia, 7] * d2
        t2 = tab[ia, 2] * d0 + tab[ia, 5] * d1 + tab[ia, 8] * d2
        s0 = -(r00 * t0 + r10 * t1 + r20 * t2)
        s1 = -(r01 * t0 + r11 * t1 + r21 * t2)
        s2 = -(r02 * t0 + r12 * t1 + r22 * t2)
        fa, pxa, pya, r15a = tab[ia, 12], tab[ia, 13], tab[ia, 14], tab[ia, 15]
        fb, pxb, pyb, r15b = tab[ib, 12], tab[ib, 13], tab[ib, 14], tab[ib, 15]
        ifa = 1.0 / fa
        ifb = 1.0 / fb
        # accumulators: relative poses A<-B (g..) and B<-A (h..); intrinsics of A and B, where the s.. sums get
        # their factor 1 / f once per chunk (sum gpc . (pc_x, pc_y), sum gpc_x d, sum gpc_y d)
        g00 = g01 = g02 = g10 = g11 = g12 = g20 = g21 = g22 = gt0 = gt1 = gt2 = 0.0
        h00 = h01 = h02 = h10 = h11 = h12 = h20 = h21 = h22 = ht0 = ht1 = ht2 = 0.0
        gfa = gpxa = gpya = gra = sfa = sxa = sya = 0.0
        gfb = gpxb = gpyb = grb = sfb = sxb = syb = 0.0
        acc = 0.0
        if stage == 1:
            for b in range(nb):
                cf = conf[c, b]  # 0 on padding, whose values are finite: every term is then exactly 0
                xa, ya, oa, ada, faca, da, ua, va, pa0, pa1 = _side(xs, ys, offm1, adg, c, b, pxa, pya, ifa, r15a)
                xb, yb, ob, adb, facb, db, ub, vb, pb0, pb1 = _side(xs, ys, offm1, adg, cb, b, pxb, pyb, ifb, r15b)
                # e = pa - (R pb + t)
                e0 = pa0 - (r00 * pb0 + r01 * pb1 + r02 * db + t0)
                e1 = pa1 - (r10 * pb0 + r11 * pb1 + r12 * db + t1)
                e2 = da - (r20 * pb0 + r21 * pb1 + r22 * db + t2)
                sq = e0 * e0 + e1 * e1 + e2 * e2
                live = not (sq < SQ_MIN)  # NaN stays NaN
                r = math.sqrt(sq if live else SQ_MIN)
                rho, slope = _rho(r, gcode, gamma, off)
                acc += cf * rho
                w = cf * slope if live else 0.0
                ga0 = w * e0  # dL/dpa; dL/dpb = -R^T ga, dL/dR = -ga pb^T, dL/dt = -ga
                ga1 = w * e1
                ga2 = w * e2
                gb0 = -(r00 * ga0 + r10 * ga1 + r20 * ga2)
                gb1 = -(r01 * ga0 + r11 * ga1 + r21 * ga2)
                gb2 = -(r02 * ga0 + r12 * ga1 + r22 * ga2)
                g00 -= ga0 * pb0
                g01 -= ga0 * pb1
                g02 -= ga0 * db
                g10 -= ga1 * pb0
                g11 -= ga1 * pb1
                g12 -= ga1 * db
                g20 -= ga2 * pb0
                g21 -= ga2 * pb1
                g22 -= ga2 * db
                gt0 -= ga0
                gt1 -= ga1
                gt2 -= ga2
                # camera-frame points -> intrinsics and anchor depths
                gda, dsf, dsx, dsy, dgr = _point_grads(ga0, ga1, ga2, ua, va, pa0, pa1, da, ada, oa, faca)
                sfa += dsf
                sxa += dsx
                sya += dsy
                gra += dgr
                gdb, dsf, dsx, dsy, dgr = _point_grads(gb0, gb1, gb2, ub, vb, pb0, pb1, db, adb, ob, facb)
                sfb += dsf
                sxb += dsx
                syb += dsy
                grb += dgr
                gbuf[c, b] = gda
                gbuf[cb, b] = gdb
        else:
            for b in range(nb):
                cf = conf[c, b]
                xa, ya, oa, ada, faca, da, ua, va, pa0, pa1 = _side(xs, ys, offm1, adg, c, b, pxa, pya, ifa, r15a)
                xb, yb, ob, adb, facb, db, ub, vb, pb0, pb1 = _side(xs, ys, offm1, adg, cb, b, pxb, pyb, ifb, r15b)
                # A sees B's point qa = R pb + t at (xa, ya); B sees A's point qb = R^T pa + s at (xb, yb)
                qa0 = r00 * pb0 + r01 * pb1 + r02 * db + t0
                qa1 = r10 * pb0 + r11 * pb1 + r12 * db + t1
                qa2 = r20 * pb0 + r21 * pb1 + r22 * db + t2
                qb0 = r00 * pa0 + r10 * pa1 + r20 * da + s0
                qb1 = r01 * pa0 + r11 * pa1 + r21 * da + s1
                qb2 = r02 * pa0 + r12 * pa1 + r22 * da + s2
                la, gq0, gq1, gq2, dfa, dpxa, dpya = _reproject(qa0, qa1, qa2, fa, pxa, pya, xa, ya, cf, gcode, gamma,
                                                                off)
                lb, gh0, gh1, gh2, dfb, dpxb, dpyb = _reproject(qb0, qb1, qb2, fb, pxb, pyb, xb, yb, cf, gcode, gamma,
                                                                off)
                acc += la + lb
                gfa += dfa
                gpxa += dpxa
                gpya += dpya
                gfb += dfb
                gpxb += dpxb
                gpyb += dpyb
                # dL/dpa = R gh (+ nothing else), dL/dpb = R^T gq; dL/dR = gq pb^T, dL/d(R^T) = gh pa^T
                ga0 = r00 * gh0 + r01 * gh1 + r02 * gh2
                ga1 = r10 * gh0 + r11 * gh1 + r12 * gh2
                ga2 = r20 * gh0 + r21 * gh1 + r22 * gh2
                gb0 = r00 * gq0 + r10 * gq1 + r20 * gq2
                gb1 = r01 * gq0 + r11 * gq1 + r21 * gq2
                gb2 = r02 * gq0 + r12 * gq1 + r22 * gq2
                g00 += gq0 * pb0
                g01 += gq0 * pb1
                g02 += gq0 * db
                g10 += gq1 * pb0
                g11 += gq1 * pb1
                g12 += gq1 * db
                g20 += gq2 * pb0
                g21 += gq2 * pb1
                g22 += gq2 * db
                gt0 += gq0
                gt1 += gq1
                gt2 += gq2
                h00 += gh0 * pa0
                h01 += gh0 * pa1
                h02 += gh0 * da
                h10 += gh1 * pa0
                h11 += gh1 * pa1
                h12 += gh1 * da
                h20 += gh2 * pa0
                h21 += gh2 * pa1
                h22 += gh2 * da
                ht0 += gh0
                ht1 += gh1
                ht2 += gh2
                gda, dsf, dsx, dsy, dgr = _point_grads(ga0, ga1, ga2, ua, va, pa0, pa1, da, ada, oa, faca)
                sfa += dsf
                sxa += dsx
                sya += dsy
                gra += dgr
                gdb, dsf, dsx, dsy, dgr = _point_grads(gb0, gb1, gb2, ub, vb, pb0, pb1, db, adb, ob, facb)
                sfb += dsf
                sxb += dsx
                syb += dsy
                grb += dgr
                gbuf[c, b] = gda
                gbuf[cb, b] = gdb
        o = out[c]
        o[0] = acc
        o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], o[9] = g00, g01, g02, g10, g11, g12, g20, g21, g22
        o[10], o[11], o[12] = gt0, gt1, gt2
        o[13], o[14], o[15], o[16], o[17], o[18], o[19], o[20], o[21] = h00, h01, h02, h10, h11, h12, h20, h21, h22
        o[22], o[23], o[24] = ht0, ht1, ht2
        o[25], o[26], o[27], o[28] = gfa - sfa * ifa, gpxa - sxa * ifa, gpya - sya * ifa, gra
        o[29], o[30], o[31], o[32] = gfb - sfb * ifb, gpxb - sxb * ifb, gpyb - syb * ifb, grb
    for c in range(n_chunks):
        ia = img[c]
        ib = img[n_chunks + c]
        total += out[c, 0]
        _pose_grads(g_tab, ia, ib, tab, out[c, 1:10], out[c, 10:13])
        if stage == 2:
            _pose_grads(g_tab, ib, ia, tab, out[c, 13:22], out[c, 22:25])
        for k in range(4):
            g_tab[ia, 12 + k] += out[c, 25 + k]
            g_tab[ib, 12 + k] += out[c, 29 + k]
    for c in range(2 * n_chunks):
        for b in range(nb):
            g_ad[anc[c, b]] += gbuf[c, b]
    return total


# ----------------------------------------------------------------------------------------------------------------
# camera model: parameters -> (N, 17) camera table and (A,) anchor depths, and the reverse pass
# ----------------------------------------------------------------------------------------------------------------
def _camera_model(quats: np.ndarray, trans: np.ndarray, log_sizes: np.ndarray, log_focals: np.ndarray,
                  pps: np.ndarray, md: np.ndarray, bf: np.ndarray, imsz: np.ndarray, fmin: np.ndarray,
                  fmax: np.ndarray, parent: np.ndarray, order: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                             np.ndarray, np.ndarray, float, np.ndarray]:
    """Per-image forward quantities of :meth:`sparsega.alignment.optimizer.SparseAligner.cameras` (float64):
    ``qn (N,4) normalised quats, R (N,3,3) relative rotations, Rc (N,3,3) / T (N,3) chained poses, off (N,3)
    focal-plane offsets, f (N,) clipped focals, f_raw (N,), s (N,) sizes, z (N,), gscale, ppn (N,2)``."""
    n = quats.shape[0]
    shared_f = log_focals.shape[0] == 1
    shared_p = pps.shape[0] == 1
    qn = np.empty((n, 4))
    rot = np.empty((n, 3, 3))
    rc = np.empty((n, 3, 3))
    tc = np.empty((n, 3))
    off = np.empty((n, 3))
    f = np.empty(n)
    f_raw = np.empty(n)
    s = np.empty(n)
    z = np.empty(n)
    ppn = np.empty((n, 2))
    smin = np.inf
    for i in range(n):
        s[i] = math.exp(log_sizes[i])
        smin = min(smin, s[i])
    gscale = 1.0 / smin
    for i in range(n):
        fr = math.exp(log_focals[0 if shared_f else i])
        f_raw[i] = fr
        f[i] = min(max(fr, fmin[i]), fmax[i])
        ppn[i, 0] = pps[0 if shared_p else i, 0]
        ppn[i, 1] = pps[0 if shared_p else i, 1]
        z[i] = s[i] * md[i] * f[i] / bf[i]
        off[i, 0] = z[i] * imsz[i, 0] / f[i] * (0.5 - ppn[i, 0])
        off[i, 1] = z[i] * imsz[i, 1] / f[i] * (0.5 - ppn[i, 1])
        off[i, 2] = z[i]
        nq = math.sqrt(quats[i, 0] ** 2 + quats[i, 1] ** 2 + quats[i, 2] ** 2 + quats[i, 3] ** 2)
        nq = max(nq, 1e-12)
        x, y, zq, w = quats[i, 0] / nq, quats[i, 1] / nq, quats[i, 2] / nq, quats[i, 3] / nq
        qn[i, 0], qn[i, 1], qn[i, 2], qn[i, 3] = x, y, zq, w
        # roma.unitquat_to_rotmat (XYZW, homogeneous form)
        rot[i, 0, 0] = x * x - y * y - zq * zq + w * w
        rot[i, 0, 1] = 2 * (x * y - zq * w)
        rot[i, 0, 2] = 2 * (x * zq + y * w)
        rot[i, 1, 0] = 2 * (x * y + zq * w)
        rot[i, 1, 1] = -x * x + y * y - zq * zq + w * w
        rot[i, 1, 2] = 2 * (y * zq - x * w)
        rot[i, 2, 0] = 2 * (x * zq - y * w)
        rot[i, 2, 1] = 2 * (y * zq + x * w)
        rot[i, 2, 2] = -x * x - y * y + zq * zq + w * w
    for k in range(n):  # parents before children
        i = order[k]
        p = parent[i]
        if p < 0:
            for a in range(3):
                tc[i, a] = trans[i, a]
                for b in range(3):
                    rc[i, a, b] = rot[i, a, b]
        else:
            for a in range(3):
                acc = tc[p, a]
                for c in range(3):
                    acc += rc[p, a, c] * trans[i, c]
                tc[i, a] = acc
                for b in range(3):
                    acc = 0.0
                    for c in range(3):
                        acc += rc[p, a, c] * rot[i, c, b]
                    rc[i, a, b] = acc
    return qn, rot, rc, tc, off, f, f_raw, s, z, gscale, ppn


def _camera_forward(quats: np.ndarray, trans: np.ndarray, log_sizes: np.ndarray, log_focals: np.ndarray,
                    pps: np.ndarray, core: np.ndarray, md: np.ndarray, bf: np.ndarray, imsz: np.ndarray,
                    fmin: np.ndarray, fmax: np.ndarray, parent: np.ndarray, order: np.ndarray,
                    anchor_img: np.ndarray, table: np.ndarray, ad: np.ndarray) -> None:
    """Fill ``table (N, 17)`` (rows of the torch path's ``camera_table``) and ``ad (A,)`` anchor depths."""
    qn, rot, rc, tc, off, f, f_raw, s, z, g, ppn = _camera_model(quats, trans, log_sizes, log_focals, pps, md, bf,
                                                                 imsz, fmin, fmax, parent, order)
    for i in range(quats.shape[0]):
        for a in range(3):
            acc = tc[i, a]
            for b in range(3):
                table[i, 3 * a + b] = rc[i, a, b]
                acc -= rc[i, a, b] * off[i, b]
            table[i, 9 + a] = g * acc
        table[i, 12] = f[i]
        table[i, 13] = ppn[i, 0] * imsz[i, 0]
        table[i, 14] = ppn[i, 1] * imsz[i, 1]
        table[i, 15] = bf[i] / f[i]
        table[i, 16] = 1.0
    for a in range(core.shape[0]):
        i = anchor_img[a]
        ad[a] = (g * s[i] * md[i]) * ((f[i] / bf[i] - 1.0) + core[a])


def _camera_backward(quats: np.ndarray, trans: np.ndarray, log_sizes: np.ndarray, log_focals: np.ndarray,
                     pps: np.ndarray, core: np.ndarray, md: np.ndarray, bf: np.ndarray, imsz: np.ndarray,
                     fmin: np.ndarray, fmax: np.ndarray, parent: np.ndarray, order: np.ndarray,
                     anchor_img: np.ndarray, g_table: np.ndarray, g_ad: np.ndarray,
                     g_quats: np.ndarray, g_trans: np.ndarray, g_logs: np.ndarray, g_logf: np.ndarray,
                     g_pps: np.ndarray, g_core: np.ndarray) -> None:
    """Reverse pass of :func:`_camera_forward`: gradients w.r.t. every parameter from those of the table and the
    anchor depths (written, not added). Follows torch's conventions at the kinks: the focal clamp passes the
    gradient inside its bounds (half of it at a bound), the minimum size shares it evenly among ties."""
    n = quats.shape[0]
    qn, rot, rc, tc, off, f, f_raw, s, z, g, ppn = _camera_model(quats, trans, log_sizes, log_focals, pps, md, bf,
                                                                 imsz, fmin, fmax, parent, order)
    gf = np.zeros(n)
    gs = np.zeros(n)
    gz = np.zeros(n)
    gppn = np.zeros((n, 2))
    grc = np.zeros((n, 3, 3))
    gtc = np.zeros((n, 3))
    goff = np.zeros((n, 3))
    gg = 0.0
    # anchor depths: ad = FA_i (FB_i + core), FA = g s md, FB = f / bf - 1
    for a in range(core.shape[0]):
        i = anchor_img[a]
        fa = g * s[i] * md[i]
        ga = g_ad[a]
        g_core[a] = ga * fa
        gfa = ga * ((f[i] / bf[i] - 1.0) + core[a])
        gg += gfa * s[i] * md[i]
        gs[i] += gfa * g * md[i]
        gf[i] += ga * fa / bf[i]
    for i in range(n):
        gf[i] += g_table[i, 12] - g_table[i, 15] * bf[i] / (f[i] * f[i])
        gppn[i, 0] += g_table[i, 13] * imsz[i, 0]
        gppn[i, 1] += g_table[i, 14] * imsz[i, 1]
        # t = g (T - Rc off)
        for a in range(3):
            gt = g_table[i, 9 + a]
            acc = tc[i, a]
            for b in range(3):
                acc -= rc[i, a, b] * off[i, b]
                grc[i, a, b] += g_table[i, 3 * a + b] - g * gt * off[i, b]
                goff[i, b] -= g * rc[i, a, b] * gt
            gg += gt * acc
            gtc[i, a] += g * gt
    # chain, children before parents: Rc_i = Rc_p R_i, T_i = Rc_p t_i + T_p
    grot = np.zeros((n, 3, 3))
    for k in range(n - 1, -1, -1):
        i = order[k]
        p = parent[i]
        if p < 0:
            for a in range(3):
                g_trans[i, a] = gtc[i, a]
                for b in range(3):
                    grot[i, a, b] = grc[i, a, b]
        else:
            for a in range(3):
                gtp = 0.0
                for c in range(3):
                    gtp += rc[p, c, a] * gtc[i, c]
                g_trans[i, a] = gtp
                gtc[p, a] += gtc[i, a]
                for b in range(3):
                    acc = 0.0
                    acc2 = gtc[i, a] * trans[i, b]
                    for c in range(3):
                        acc += rc[p, c, a] * grc[i, c, b]
                        acc2 += grc[i, a, c] * rot[i, b, c]
                    grot[i, a, b] = acc
                    grc[p, a, b] += acc2
    # focal-plane offsets: off = z (W / f (0.5 - ppx), H / f (0.5 - ppy), 1)
    for i in range(n):
        w_, h_ = imsz[i, 0], imsz[i, 1]
        ax = w_ / f[i] * (0.5 - ppn[i, 0])
        ay = h_ / f[i] * (0.5 - ppn[i, 1])
        gz[i] += goff[i, 0] * ax + goff[i, 1] * ay + goff[i, 2]
        gf[i] -= z[i] * (goff[i, 0] * ax + goff[i, 1] * ay) / f[i]
        gppn[i, 0] -= z[i] * w_ / f[i] * goff[i, 0]
        gppn[i, 1] -= z[i] * h_ / f[i] * goff[i, 1]
        # z = s md f / bf
        gs[i] += gz[i] * md[i] * f[i] / bf[i]
        gf[i] += gz[i] * s[i] * md[i] / bf[i]
    # g = 1 / min(s): the minimum's gradient is shared evenly among ties (torch's min())
    smin = 1.0 / g
    n_min = 0
    for i in range(n):
        if s[i] == smin:
            n_min += 1
    for i in range(n):
        if s[i] == smin:
            gs[i] -= gg / (smin * smin) / n_min
        g_logs[i] = gs[i] * s[i]
    # focals: clamp(exp(log_f), fmin, fmax); intrinsics may be shared (one log_f / pp for all)
    for j in range(g_logf.shape[0]):
        g_logf[j] = 0.0
    for j in range(g_pps.shape[0]):
        g_pps[j, 0] = 0.0
        g_pps[j, 1] = 0.0
    shared_f = g_logf.shape[0] == 1
    shared_p = g_pps.shape[0] == 1
    for i in range(n):
        fr = f_raw[i]
        m = 1.0
        if fr < fmin[i] or fr > fmax[i]:
            m = 0.0
        elif fr == fmin[i] or fr == fmax[i]:
            m = 0.5
        g_logf[0 if shared_f else i] += gf[i] * m * fr
        g_pps[0 if shared_p else i, 0] += gppn[i, 0]
        g_pps[0 if shared_p else i, 1] += gppn[i, 1]
    # rotations: R(qn) (roma's homogeneous form), qn = q / |q|
    for i in range(n):
        x, y, zq, w = qn[i, 0], qn[i, 1], qn[i, 2], qn[i, 3]
        G = grot[i]
        gx = 2 * (x * (G[0, 0] - G[1, 1] - G[2, 2]) + y * (G[0, 1] + G[1, 0]) + zq * (G[0, 2] + G[2, 0])
                  + w * (G[2, 1] - G[1, 2]))
        gy = 2 * (y * (-G[0, 0] + G[1, 1] - G[2, 2]) + x * (G[0, 1] + G[1, 0]) + zq * (G[1, 2] + G[2, 1])
                  + w * (G[0, 2] - G[2, 0]))
        gzq = 2 * (zq * (-G[0, 0] - G[1, 1] + G[2, 2]) + x * (G[0, 2] + G[2, 0]) + y * (G[1, 2] + G[2, 1])
                   + w * (G[1, 0] - G[0, 1]))
        gw = 2 * (w * (G[0, 0] + G[1, 1] + G[2, 2]) + x * (G[2, 1] - G[1, 2]) + y * (G[0, 2] - G[2, 0])
                  + zq * (G[1, 0] - G[0, 1]))
        nq = math.sqrt(quats[i, 0] ** 2 + quats[i, 1] ** 2 + quats[i, 2] ** 2 + quats[i, 3] ** 2)
        if nq > 1e-12:
            dot = gx * x + gy * y + gzq * zq + gw * w
            g_quats[i, 0] = (gx - dot * x) / nq
            g_quats[i, 1] = (gy - dot * y) / nq
            g_quats[i, 2] = (gzq - dot * zq) / nq
            g_quats[i, 3] = (gw - dot * w) / nq
        else:  # the norm is clamped: qn = q / 1e-12
            g_quats[i, 0] = gx / 1e-12
            g_quats[i, 1] = gy / 1e-12
            g_quats[i, 2] = gzq / 1e-12
            g_quats[i, 3] = gw / 1e-12



def _fallback_loss_and_grad(tab: np.ndarray, ad: np.ndarray, blocks: np.ndarray, b_img: np.ndarray,
                            b_ref: np.ndarray, xs: np.ndarray, ys: np.ndarray, anc: np.ndarray, tgt: np.ndarray,
                            conf: np.ndarray, gamma: float, off: float, scale: float, g_tab: np.ndarray,
                            g_ad: np.ndarray) -> float:
    """DUSt3R-fallback regression: sum over targets of ``conf * ((r + off)^gamma - off^gamma)``, ``r`` the distance
    between an anchor's world point (its image's camera, pixel ``(x, y)``, depth ``ad[anc]``) and the target
    point ``tgt (F, 3)`` given in the frame of the other image's camera. Gradients w.r.t. ``tab (N, 17)`` and
    ``ad (A,)``, times ``scale``, are ADDED to ``g_tab`` and ``g_ad``; the returned sum is unscaled.

    Targets come in blocks ``blocks[k]:blocks[k+1]`` of constant (image ``b_img[k]``, reference ``b_ref[k]``): the
    two cameras' gradients are accumulated in scalars per block, as the match kernel does per chunk, and the anchor
    gradients are buffered and scattered after each block's loop (so that the loop vectorises)."""
    total = 0.0
    g_off = off**gamma if gamma != 1.0 else 0.0
    nt = anc.shape[0]
    adg = np.empty(nt)
    gbuf = np.empty(nt)
    for n in range(nt):
        adg[n] = ad[anc[n]]
    for k in range(b_img.shape[0]):
        i = b_img[k]
        j = b_ref[k]
        f, px, py = tab[i, 12], tab[i, 13], tab[i, 14]
        inv_f = 1.0 / f
        ri0, ri1, ri2, ri3, ri4, ri5, ri6, ri7, ri8 = (tab[i, 0], tab[i, 1], tab[i, 2], tab[i, 3], tab[i, 4],
                                                       tab[i, 5], tab[i, 6], tab[i, 7], tab[i, 8])
        rj0, rj1, rj2, rj3, rj4, rj5, rj6, rj7, rj8 = (tab[j, 0], tab[j, 1], tab[j, 2], tab[j, 3], tab[j, 4],
                                                       tab[j, 5], tab[j, 6], tab[j, 7], tab[j, 8])
        dt0, dt1, dt2 = tab[i, 9] - tab[j, 9], tab[i, 10] - tab[j, 10], tab[i, 11] - tab[j, 11]
        a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = 0.0  # sum g pc^T (camera i)
        b00 = b01 = b02 = b10 = b11 = b12 = b20 = b21 = b22 = 0.0  # sum g q^T (camera j, minus sign)
        s0 = s1 = s2 = 0.0
        gf = gpx = gpy = 0.0
        acc = 0.0
        for n in range(blocks[k], blocks[k + 1]):
            d = adg[n]
            u = (xs[n] - px) * inv_f
            v = (ys[n] - py) * inv_f
            p0 = u * d
            p1 = v * d
            q0, q1, q2 = tgt[n, 0], tgt[n, 1], tgt[n, 2]
            e0 = ri0 * p0 + ri1 * p1 + ri2 * d - (rj0 * q0 + rj1 * q1 + rj2 * q2) + dt0
            e1 = ri3 * p0 + ri4 * p1 + ri5 * d - (rj3 * q0 + rj4 * q1 + rj5 * q2) + dt1
            e2 = ri6 * p0 + ri7 * p1 + ri8 * d - (rj6 * q0 + rj7 * q1 + rj8 * q2) + dt2
            sq = e0 * e0 + e1 * e1 + e2 * e2
            live = not (sq < SQ_MIN)
            r = math.sqrt(sq if live else SQ_MIN)
            cf = conf[n]
            t = r + off
            tg = math.exp(gamma * math.log(t)) if gamma != 1.0 else r
            acc += cf * (tg - g_off)
            slope = (gamma * tg / (t * r)) if gamma != 1.0 else 1.0 / r
            w = scale * cf * slope if live else 0.0
            g0 = w * e0
            g1 = w * e1
            g2 = w * e2
            a00 += g0 * p0
            a01 += g0 * p1
            a02 += g0 * d
            a10 += g1 * p0
            a11 += g1 * p1
            a12 += g1 * d
            a20 += g2 * p0
            a21 += g2 * p1
            a22 += g2 * d
            b00 += g0 * q0
            b01 += g0 * q1
            b02 += g0 * q2
            b10 += g1 * q0
            b11 += g1 * q1
            b12 += g1 * q2
            b20 += g2 * q0
            b21 += g2 * q1
            b22 += g2 * q2
            s0 += g0
            s1 += g1
            s2 += g2
            # camera-frame gradient c = R_i^T g, then pc = d (u, v, 1) with u = (x - ppx) / f
            c0 = ri0 * g0 + ri3 * g1 + ri6 * g2
            c1 = ri1 * g0 + ri4 * g1 + ri7 * g2
            c2 = ri2 * g0 + ri5 * g1 + ri8 * g2
            gbuf[n] = c0 * u + c1 * v + c2
            gf -= (c0 * p0 + c1 * p1) * inv_f
            gpx -= c0 * d * inv_f
            gpy -= c1 * d * inv_f
        total += acc
        gi = g_tab[i]
        gj = g_tab[j]
        gi[0] += a00
        gi[1] += a01
        gi[2] += a02
        gi[3] += a10
        gi[4] += a11
        gi[5] += a12
        gi[6] += a20
        gi[7] += a21
        gi[8] += a22
        gj[0] -= b00
        gj[1] -= b01
        gj[2] -= b02
        gj[3] -= b10
        gj[4] -= b11
        gj[5] -= b12
        gj[6] -= b20
        gj[7] -= b21
        gj[8] -= b22
        gi[9] += s0
        gi[10] += s1
        gi[11] += s2
        gj[9] -= s0
        gj[10] -= s1
        gj[11] -= s2
        gi[12] += gf
        gi[13] += gpx
        gi[14] += gpy
    for n in range(nt):
        g_ad[anc[n]] += gbuf[n]
    return total


def _adam(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, step: int, lr: float, beta1: float,
          beta2: float, eps: float) -> None:
    """One Adam step in place on flat float64 arrays, torch's formula (no weight decay, no amsgrad)."""
    bc1 = 1.0 - beta1**step
    bc2 = math.sqrt(1.0 - beta2**step)
    for k in range(p.shape[0]):
        m[k] = beta1 * m[k] + (1.0 - beta1) * g[k]
        v[k] = beta2 * v[k] + (1.0 - beta2) * g[k] * g[k]
        p[k] -= (lr / bc1) * m[k] / (math.sqrt(v[k]) / bc2 + eps)



def _clean_view_pair(depth_i: np.ndarray, conf_i: np.ndarray, depth_j: np.ndarray, conf_j: np.ndarray,
                     M: np.ndarray, t: np.ndarray, tol: float, bad_conf: float, out_i: np.ndarray) -> None:
    """Visibility cleaning of view i against view j (see :func:`sparsega.scene.clean_confidences`): pixel
    ``(x, y)`` of i at depth ``d`` lands in j at ``p = d M (x, y, 1) + t`` (``M = K_j R_ji K_i^-1``, ``t = K_j
    t_ji``, so ``p_z`` is j's depth); where it is in front of j's surface by more than ``tol`` (relative) and less
    confident than j's pixel, ``out_i`` is lowered to ``bad_conf``."""
    hi, wi = depth_i.shape
    hj, wj = depth_j.shape
    for y in range(hi):
        for x in range(wi):
            d = depth_i[y, x]
            z = d * (M[2, 0] * x + M[2, 1] * y + M[2, 2]) + t[2]
            if not (z > 0):
                continue
            u = round((d * (M[0, 0] * x + M[0, 1] * y + M[0, 2]) + t[0]) / z)
            v = round((d * (M[1, 0] * x + M[1, 1] * y + M[1, 2]) + t[1]) / z)
            if u < 0 or u >= wj or v < 0 or v >= hj:
                continue
            if z < (1 - tol) * depth_j[v, u] and conf_i[y, x] < conf_j[v, u]:
                out_i[y, x] = min(out_i[y, x], bad_conf)


if _HAVE_NUMBA:
    _rho = numba.njit(cache=True, inline="always")(_rho)
    _side = numba.njit(cache=True, inline="always")(_side)
    _point_grads = numba.njit(cache=True, inline="always")(_point_grads)
    _reproject = numba.njit(cache=True, inline="always")(_reproject)
    _pose_grads = numba.njit(cache=True)(_pose_grads)
    _loss_and_grad_jit = numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy", parallel=True)(
        _loss_and_grad)
    _camera_model = numba.njit(cache=True)(_camera_model)
    _camera_forward_jit = numba.njit(cache=True)(_camera_forward)
    _camera_backward_jit = numba.njit(cache=True)(_camera_backward)
    _fallback_jit = numba.njit(cache=True, fastmath=_FASTMATH, error_model="numpy")(_fallback_loss_and_grad)
    _adam_jit = numba.njit(cache=True, error_model="numpy")(_adam)
    _clean_view_pair_jit = numba.njit(cache=True, error_model="numpy")(_clean_view_pair)
else:  # pragma: no cover
    _loss_and_grad_jit = _camera_forward_jit = _camera_backward_jit = _fallback_jit = _adam_jit = None
    _clean_view_pair_jit = None


def set_threads(threads: int) -> None:
    """Numba threads for the kernels: ``threads`` (0 = as many as torch uses). Call under :data:`LOCK`."""
    want = int(threads) or torch.get_num_threads()
    want = max(1, min(want, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)


class _KernelMatchLoss(torch.autograd.Function):
    """Autograd wrapper: the forward runs the kernel (loss and gradients together), the backward scales them."""

    @staticmethod
    def forward(ctx, table: Tensor, anchor_depth: Tensor, lay, stage: int, gamma: float,  # type: ignore[override]
                intr_grad: bool, threads: int) -> Tensor:
        tab = table.detach().T.to(torch.float64).contiguous().numpy()
        ad = anchor_depth.detach().to(torch.float64).contiguous().numpy()
        g_tab = np.zeros_like(tab)
        g_ad = np.zeros_like(ad)
        arrs = lay.arrays
        gamma = float(gamma)
        off = gamma_offset(gamma)
        with LOCK:
            set_threads(threads)
            total = _loss_and_grad_jit(tab, ad, *arrs, stage, KERNEL_GAMMAS[gamma], gamma, off, g_tab, g_ad)
        k = 1 if stage == 1 else 2
        norm = lay.conf_sum * k
        total -= k * off**gamma * lay.conf_sum  # the constant rho(0) of every match, as the fused loss does
        if not intr_grad:
            g_tab[:, 12:] = 0.0
        ctx.grads = (torch.from_numpy(g_tab).T.to(table.dtype) / norm, torch.from_numpy(g_ad).to(table.dtype) / norm)
        return table.new_tensor(total / norm)

    @staticmethod
    def backward(ctx, gout: Tensor):  # type: ignore[override]
        g_tab, g_ad = ctx.grads
        ctx.grads = None
        return g_tab * gout, g_ad * gout, None, None, None, None, None


Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# the match layout: the kernel's input
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatchLayout:
    """Trusted matches grouped by (image0, image1) pair and cut into chunks of ``chunk`` matches.

    Attributes:
        img: (2C,) int64 image of each chunk row (side 0 rows, then side 1 rows).
        x, y: (2C, B) pixel coordinates of each match side (0 on padding).
        off_m1: (2C, B) canonical depth ratio minus one (0 on padding).
        anchor: (2C, B) int64 global anchor index (a valid anchor of the row's image on padding).
        conf: (C, B) match confidence, 0 on padding.
        conf_sum: sum of the confidences (Python float).
        chunk: B.
    """

    img: Tensor
    x: Tensor
    y: Tensor
    off_m1: Tensor
    anchor: Tensor
    conf: Tensor
    conf_sum: float
    chunk: int

    @property
    def n_chunks(self) -> int:
        return int(self.conf.shape[0])

    @functools.cached_property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """``(img, x, y, off_m1, anchor, conf)`` as numpy arrays (zero-copy views of the CPU tensors, made once)."""
        return tuple(t.contiguous().numpy() for t in (self.img, self.x, self.y, self.off_m1, self.anchor, self.conf))


def choose_chunk(n_matches: int, n_pairs: int) -> int:
    """Chunk length: a power of two near a quarter of the mean matches per pair, in [32, 512] (bounds the
    padding to ~1/8 of the matches while keeping the batched matmuls efficient)."""
    if n_matches == 0 or n_pairs == 0:
        return 32
    target = n_matches / (4 * n_pairs)
    return int(min(512, max(32, 2 ** math.floor(math.log2(max(target, 1.0))))))


def build_layout(m_img: Tensor, m_xy: Tensor, m_anchor: Tensor, m_off: Tensor, m_conf: Tensor,
                 chunk: int | None = None, seed: int = 0) -> MatchLayout:
    """Chunked layout of K matches: ``m_img (2, K)``, ``m_xy (2, K, 2)``, ``m_anchor (2, K)``, ``m_off (2, K)``,
    ``m_conf (K,)`` (all the trusted matches, any order).

    Matches are shuffled (fixed seed) inside each pair: the anchor gradient's ``index_add_`` is several times
    slower on CPU with sorted indices, and the order inside a chunk is otherwise irrelevant.
    """
    dev, dt = m_xy.device, m_xy.dtype
    img = m_img.cpu().numpy().astype(np.int64)
    k = img.shape[1]
    n_img = int(img.max()) + 1 if k else 1
    rng = np.random.default_rng(seed)
    shuffle = rng.permutation(k)
    key = img[0, shuffle] * n_img + img[1, shuffle]
    order = shuffle[np.argsort(key, kind="stable")]
    key = img[0, order] * n_img + img[1, order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if k else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, k])
    b = chunk or choose_chunk(k, len(starts))
    n_chunks_per = -(-lengths // b)
    chunk_base = np.r_[0, np.cumsum(n_chunks_per)[:-1]].astype(np.int64)
    n_chunks = int(n_chunks_per.sum())
    seg = np.repeat(np.arange(len(starts)), lengths)
    rank = np.arange(k) - starts[seg]
    pos = torch.as_tensor((chunk_base[seg] + rank // b) * b + rank % b, device=dev)  # flat slot of order[i]
    order_t = torch.as_tensor(order, device=dev)
    chunk_seg = np.repeat(np.arange(len(starts)), n_chunks_per)
    first = order[starts[chunk_seg]] if n_chunks else np.zeros(0, np.int64)  # a real match of each chunk

    def fill(values: Tensor, pad: Tensor) -> Tensor:
        """(2, K) per-side values -> (2C, B), padding slots taking the per-chunk ``pad (2, C)``."""
        out = pad.unsqueeze(-1).expand(2, n_chunks, b).reshape(2, n_chunks * b).clone()
        out[:, pos] = values[:, order_t]
        return out.reshape(2 * n_chunks, b)

    first_t = torch.as_tensor(first, device=dev)
    zero = torch.zeros((2, n_chunks), device=dev, dtype=dt)
    conf = torch.zeros(n_chunks * b, device=dev, dtype=m_conf.dtype)
    conf[pos] = m_conf[order_t]
    return MatchLayout(
        img=torch.as_tensor(img[:, first].reshape(-1), device=dev),
        x=fill(m_xy[..., 0], zero), y=fill(m_xy[..., 1], zero),
        off_m1=fill(m_off - 1, zero),
        anchor=fill(m_anchor, m_anchor[:, first_t]),
        conf=conf.reshape(n_chunks, b),
        conf_sum=float(m_conf.sum()),
        chunk=b,
    )



@dataclass(frozen=True)
class CameraConsts:
    """Fixed inputs of the compiled camera model (numpy, float64 / int64): ``median_depths, base_focals (N,)``,
    ``imsizes (N, 2)`` as (W, H), focal bounds ``fmin, fmax (N,)``, the kinematic tree as ``parent (N,)`` (-1 at
    roots) and a parents-first ``order (N,)``, and ``anchor_img (A,)``."""

    median_depths: np.ndarray
    base_focals: np.ndarray
    imsizes: np.ndarray
    fmin: np.ndarray
    fmax: np.ndarray
    parent: np.ndarray
    order: np.ndarray
    anchor_img: np.ndarray

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.median_depths, self.base_focals, self.imsizes, self.fmin, self.fmax, self.parent, self.order)


def _np64(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).contiguous().numpy()


class _CameraTable(torch.autograd.Function):
    """Parameters -> ``(17, N)`` camera table and ``(A,)`` anchor depths by the compiled camera model."""

    @staticmethod
    def forward(ctx, quats: Tensor, trans: Tensor, log_sizes: Tensor, log_focals: Tensor,  # type: ignore[override]
                pps: Tensor, core: Tensor, consts: CameraConsts) -> tuple[Tensor, Tensor]:
        params = tuple(_np64(t) for t in (quats, trans, log_sizes, log_focals, pps, core))
        n = params[0].shape[0]
        table = np.empty((n, 17))
        ad = np.empty(params[5].shape[0])
        _camera_forward_jit(*params, *consts.arrays(), consts.anchor_img, table, ad)
        ctx.params, ctx.consts, ctx.dtype = params, consts, quats.dtype
        return torch.from_numpy(table).T.to(quats.dtype), torch.from_numpy(ad).to(quats.dtype)

    @staticmethod
    def backward(ctx, g_table: Tensor | None, g_ad: Tensor | None):  # type: ignore[override]
        params, consts = ctx.params, ctx.consts
        n, a = params[0].shape[0], params[5].shape[0]
        gt = np.zeros((n, 17)) if g_table is None else g_table.detach().T.to(torch.float64).contiguous().numpy()
        ga = np.zeros(a) if g_ad is None else _np64(g_ad)
        outs = tuple(np.empty_like(p) for p in params)
        _camera_backward_jit(*params, *consts.arrays(), consts.anchor_img, gt, ga, *outs)
        ctx.params = None
        grads = [torch.from_numpy(o).to(ctx.dtype) if need else None
                 for o, need in zip(outs, ctx.needs_input_grad[:6])]
        return (*grads, None)


def camera_table(quats: Tensor, trans: Tensor, log_sizes: Tensor, log_focals: Tensor, pps: Tensor, core: Tensor,
                 consts: CameraConsts) -> tuple[Tensor, Tensor]:
    """The camera table ``(17, N)`` and anchor depths ``(A,)`` of :meth:`sparsega.alignment.optimizer.SparseAligner.cameras`
    (without known-pose constraints), differentiable, computed by the compiled camera model (CPU only)."""
    if not _HAVE_NUMBA:
        raise RuntimeError("the compiled camera model needs numba (pip install numba)")
    return _CameraTable.apply(quats, trans, log_sizes, log_focals, pps, core, consts)


def kernel_match_loss(table: Tensor, anchor_depth: Tensor, layout, stage: int, gamma: float,
                      intr_grad: bool = True, threads: int = 1) -> Tensor:
    """The stage-1 (3D) or stage-2 (reprojection) loss of the matches in ``layout``, normalised by the sum of their
    confidences (stage 2: twice that), from the ``(17, N)`` camera table and ``(A,)`` anchor depths; differentiable
    (the kernel computes the gradients in its forward). CPU tensors only. ``intr_grad=False`` drops the gradients of
    the intrinsics rows."""
    if not _HAVE_NUMBA:
        raise RuntimeError("the compiled match-loss kernel needs numba (pip install numba)")
    if table.device.type != "cpu":
        raise ValueError("the compiled match-loss kernel runs on CPU tensors only")
    if float(gamma) not in KERNEL_GAMMAS:
        raise ValueError(f"the compiled kernel supports gamma in {sorted(KERNEL_GAMMAS)}, not {gamma}")
    if layout.n_chunks == 0:
        return table.new_zeros(())
    return _KernelMatchLoss.apply(table, anchor_depth, layout, stage, gamma, intr_grad, threads)
