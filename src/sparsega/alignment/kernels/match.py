"""Compiled match losses (numba): stage-1 3D distance and stage-2 reprojection loss with their gradients, in one
pass over the matches.

Each match is loaded once, its forward and backward are computed in registers, and per-chunk camera gradients are
accumulated in scalars. Inputs are the :class:`~sparsega.alignment.kernels.layout.MatchLayout` arrays and the
``(N, 17)`` camera table (per image ``R (9, row-major), t (3), f, ppx, ppy, f0 / f, 1``). Arithmetic is float64;
padding slots (confidence 0) contribute nothing. The plain twin is :mod:`sparsega.alignment.losses`
(``loss_backend="autograd"``); ``tests/test_kernels.py`` compares the two.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .common import FASTMATH, PIX_MAX, PIX_MIN, SQ_MIN, Z_MIN
from .common import rho as _rho


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


def _side(
    xs: np.ndarray,
    ys: np.ndarray,
    offm1: np.ndarray,
    adg: np.ndarray,
    row: int,
    b: int,
    px: float,
    py: float,
    inv_f: float,
    r15: float,
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


def _point_grads(
    g0: float, g1: float, g2: float, u: float, v: float, p0: float, p1: float, d: float, a: float, o: float, fac: float
) -> tuple[float, float, float, float, float]:
    """The gradient ``g = dL/dpc`` of one match end's camera-frame point ``pc = d (u, v, 1)`` (see :func:`_side`)
    pushed back: ``dL/d(anchor depth)``, the per-chunk sums ``g . (pc_x, pc_y)``, ``g_x d``, ``g_y d`` (their factor
    ``-1/f`` is applied once per chunk) and ``dL/d(f0/f)``."""
    gd = g0 * u + g1 * v + g2
    return gd * fac, g0 * p0 + g1 * p1, g0 * d, g1 * d, gd * a * o


def _reproject(
    p0: float,
    p1: float,
    p2: float,
    f: float,
    px: float,
    py: float,
    x: float,
    y: float,
    cf: float,
    gcode: int,
    gamma: float,
    off: float,
) -> tuple[float, float, float, float, float, float, float]:
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


def _loss_and_grad(
    tab: np.ndarray,
    ad: np.ndarray,
    img: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    offm1: np.ndarray,
    anc: np.ndarray,
    conf: np.ndarray,
    stage: int,
    gcode: int,
    gamma: float,
    off: float,
    g_tab: np.ndarray,
    g_ad: np.ndarray,
    work: np.ndarray,
    out: np.ndarray,
) -> float:
    """Sum over matches of ``conf * rho(r)`` with ``rho(r) = (r + off)^gamma`` (``off``: see
    :func:`gamma_offset`; stage 1: both ends' 3D distance; stage 2: reprojection
    error of each end into the other image, both terms summed); gradients w.r.t. ``tab (N, 17)`` and ``ad (A,)``
    are ADDED to ``g_tab`` and ``g_ad`` (float64, unscaled).

    Per chunk, the relative pose and every gradient accumulator are local scalars, and the inner loops (one per
    stage) have no branch but selects and no scatter: they compile to SIMD code. The anchor gradients are
    buffered per match and scattered after the loop.

    ``work (2, 2C, B)`` and ``out (C, 21)`` float64 are scratch space (:func:`workspace`), passed in so that the
    hundreds of iterations of a stage reuse them instead of mapping and zero-filling fresh pages each time.
    """
    n_chunks, nb = conf.shape
    total = 0.0
    gbuf = work[0]
    adg = work[1]  # anchor depths gathered first: a gather in the loop prevents SIMD
    for c in numba.prange(2 * n_chunks):
        for b in range(nb):
            adg[c, b] = ad[anc[c, b]]
    # per-chunk results [loss, dR_ab (9), dt_ab (3), A: df dppx dppy dr15, B: same], reduced in chunk order after the
    # (parallel) loop: the result does not depend on the number of threads
    for c in numba.prange(n_chunks):
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
        # accumulators: the gradient of the relative pose A<-B (R, t), and the intrinsics of A and B. Few on purpose:
        # each is a SIMD register in the vectorised loop, and more than the CPU holds spill (stage 2 once had 39, and
        # ran 1.3x slower). Stage 1 sums gpc . (pc_x, pc_y), gpc_x d and gpc_y d (s..), whose factor -1 / f is
        # applied once per chunk; stage 2 applies it per match and sums the intrinsics' gradients directly (gf..).
        g00 = g01 = g02 = g10 = g11 = g12 = g20 = g21 = g22 = gt0 = gt1 = gt2 = 0.0
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
                la, gq0, gq1, gq2, dfa, dpxa, dpya = _reproject(
                    qa0, qa1, qa2, fa, pxa, pya, xa, ya, cf, gcode, gamma, off
                )
                lb, gh0, gh1, gh2, dfb, dpxb, dpyb = _reproject(
                    qb0, qb1, qb2, fb, pxb, pyb, xb, yb, cf, gcode, gamma, off
                )
                acc += la + lb
                # qa = R pb + t and qb = R^T (pa - t) (B's view of A's point through the same relative pose):
                # dL/dR = gq pb^T + (pa - t) gh^T, dL/dt = gq - R gh; dL/dpa = R gh, dL/dpb = R^T gq
                ga0 = r00 * gh0 + r01 * gh1 + r02 * gh2
                ga1 = r10 * gh0 + r11 * gh1 + r12 * gh2
                ga2 = r20 * gh0 + r21 * gh1 + r22 * gh2
                gb0 = r00 * gq0 + r10 * gq1 + r20 * gq2
                gb1 = r01 * gq0 + r11 * gq1 + r21 * gq2
                gb2 = r02 * gq0 + r12 * gq1 + r22 * gq2
                y0 = pa0 - t0
                y1 = pa1 - t1
                y2 = da - t2
                g00 += gq0 * pb0 + y0 * gh0
                g01 += gq0 * pb1 + y0 * gh1
                g02 += gq0 * db + y0 * gh2
                g10 += gq1 * pb0 + y1 * gh0
                g11 += gq1 * pb1 + y1 * gh1
                g12 += gq1 * db + y1 * gh2
                g20 += gq2 * pb0 + y2 * gh0
                g21 += gq2 * pb1 + y2 * gh1
                g22 += gq2 * db + y2 * gh2
                gt0 += gq0 - ga0
                gt1 += gq1 - ga1
                gt2 += gq2 - ga2
                gda, dsf, dsx, dsy, dgr = _point_grads(ga0, ga1, ga2, ua, va, pa0, pa1, da, ada, oa, faca)
                gfa += dfa - dsf * ifa
                gpxa += dpxa - dsx * ifa
                gpya += dpya - dsy * ifa
                gra += dgr
                gdb, dsf, dsx, dsy, dgr = _point_grads(gb0, gb1, gb2, ub, vb, pb0, pb1, db, adb, ob, facb)
                gfb += dfb - dsf * ifb
                gpxb += dpxb - dsx * ifb
                gpyb += dpyb - dsy * ifb
                grb += dgr
                gbuf[c, b] = gda
                gbuf[cb, b] = gdb
        o = out[c]
        o[0] = acc
        o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], o[9] = g00, g01, g02, g10, g11, g12, g20, g21, g22
        o[10], o[11], o[12] = gt0, gt1, gt2
        o[13], o[14], o[15], o[16] = gfa - sfa * ifa, gpxa - sxa * ifa, gpya - sya * ifa, gra
        o[17], o[18], o[19], o[20] = gfb - sfb * ifb, gpxb - sxb * ifb, gpyb - syb * ifb, grb
    for c in range(n_chunks):
        ia = img[c]
        ib = img[n_chunks + c]
        total += out[c, 0]
        _pose_grads(g_tab, ia, ib, tab, out[c, 1:10], out[c, 10:13])
        for k in range(4):
            g_tab[ia, 12 + k] += out[c, 13 + k]
            g_tab[ib, 12 + k] += out[c, 17 + k]
    for c in range(2 * n_chunks):
        for b in range(nb):
            g_ad[anc[c, b]] += gbuf[c, b]
    return total


def workspace(n_chunks: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Scratch arrays ``work, out`` of :func:`_loss_and_grad` for a layout of ``n_chunks`` chunks of ``chunk``."""
    return np.empty((2, 2 * n_chunks, chunk)), np.empty((n_chunks, 21))


_side = numba.njit(cache=True, inline="always")(_side)
_point_grads = numba.njit(cache=True, inline="always")(_point_grads)
_reproject = numba.njit(cache=True, inline="always")(_reproject)
_pose_grads = numba.njit(cache=True)(_pose_grads)
loss_and_grad_jit = numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy", parallel=True)(_loss_and_grad)
