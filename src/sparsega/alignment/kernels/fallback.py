"""Compiled DUSt3R-fallback regression loss with its gradients, and the Adam step (numba)."""

from __future__ import annotations

import math

import numba
import numpy as np

from .common import FASTMATH, SQ_MIN


def fallback_loss_and_grad(
    tab: np.ndarray,
    ad: np.ndarray,
    blocks: np.ndarray,
    b_img: np.ndarray,
    b_ref: np.ndarray,
    fin: np.ndarray,
    anc: np.ndarray,
    gamma: float,
    off: float,
    scale: float,
    g_tab: np.ndarray,
    g_ad: np.ndarray,
) -> float:
    """DUSt3R-fallback regression: sum over targets of ``conf * ((r + off)^gamma - off^gamma)``, ``r`` the distance
    between a regressed world point (its image's camera, pixel ``(x, y)``, depth ``ad[anc] (1 + offm1 f0 / f)``, as
    a match side's) and the target point ``(t0, t1, t2)`` given in the frame of the other image's camera.
    ``fin (7, F)`` holds the targets' rows ``x, y, offm1, t0, t1, t2, conf`` (``stage_compiled.fallback_blocks``),
    in blocks ``blocks[k]:blocks[k+1]`` of constant (image ``b_img[k]``, reference ``b_ref[k]``). Gradients w.r.t.
    ``tab (N, 17)`` and ``ad (A,)``, times ``scale``, are ADDED to ``g_tab`` and ``g_ad``; the returned sum is
    unscaled.

    Four passes: the distances (compiled), the power (numpy's SIMD ``power``: libm's scalar calls would keep a
    compiled loop from vectorising), the loss and the cameras' gradients, and the anchor depths' gradients."""
    nt = anc.shape[0]
    adg = np.empty(nt)
    tg = np.empty(nt)
    fallback_distances_jit(tab, ad, blocks, b_img, b_ref, fin, anc, off, adg, tg)
    if gamma != 1.0:
        np.power(tg, gamma, out=tg)
    total = fallback_grad_jit(tab, adg, tg, blocks, b_img, b_ref, fin, gamma, off, scale, g_tab)
    fallback_depth_grad_jit(tab, adg, tg, blocks, b_img, b_ref, fin, anc, gamma, off, scale, np.empty(nt), g_ad)
    return total


def _fallback_distances(
    tab: np.ndarray,
    ad: np.ndarray,
    blocks: np.ndarray,
    b_img: np.ndarray,
    b_ref: np.ndarray,
    fin: np.ndarray,
    anc: np.ndarray,
    off: float,
    adg: np.ndarray,
    tg: np.ndarray,
) -> None:
    """First pass of :func:`fallback_loss_and_grad`: the targets' anchor depths into ``adg (F,)`` and their
    ``r + off`` into ``tg (F,)``. Elementwise, compiled without reassociation or contraction, like the last pass."""
    for n in range(anc.shape[0]):
        adg[n] = ad[anc[n]]
    for k in range(b_img.shape[0]):
        cam = _block_cameras(tab, b_img[k], b_ref[k])
        for n in range(blocks[k], blocks[k + 1]):
            e0, e1, e2, d, u, v, fac = _residual(fin, adg, n, cam)
            sq = e0 * e0 + e1 * e1 + e2 * e2
            tg[n] = math.sqrt(sq if not (sq < SQ_MIN) else SQ_MIN) + off


def _fallback_grad(
    tab: np.ndarray,
    adg: np.ndarray,
    tg: np.ndarray,
    blocks: np.ndarray,
    b_img: np.ndarray,
    b_ref: np.ndarray,
    fin: np.ndarray,
    gamma: float,
    off: float,
    scale: float,
    g_tab: np.ndarray,
) -> float:
    """Third pass of :func:`fallback_loss_and_grad`, given the gathered anchor depths ``adg`` and ``tg = (r +
    off)^gamma``: the loss, and the cameras' gradients (added to ``g_tab``), accumulated in scalars per block as
    the match kernel does per chunk."""
    g_off = off**gamma if gamma != 1.0 else 0.0
    total = 0.0
    # The inner loop only loads: a store there (the depth gradients once were) lets LLVM guard the vectorised loop
    # with runtime overlap checks whose outcome depends on where the allocator put the arrays, and its scalar
    # fallback sums in another order, so results differed between runs in about one call in ten. The depth
    # gradients are their own pass.
    for k in range(b_img.shape[0]):
        i = b_img[k]
        j = b_ref[k]
        cam = _block_cameras(tab, i, j)
        c15, px, py, inv_f, ri0, ri1, ri2, ri3, ri4, ri5, ri6, ri7, ri8 = cam[:13]
        lo, hi = blocks[k], blocks[k + 1]
        a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = 0.0  # sum g pc^T (camera i)
        b00 = b01 = b02 = b10 = b11 = b12 = b20 = b21 = b22 = 0.0  # sum g q^T (camera j, minus sign)
        s0 = s1 = s2 = 0.0
        gf = gpx = gpy = g15 = 0.0
        acc = 0.0
        for n in range(lo, hi):
            e0, e1, e2, d, u, v, fac = _residual(fin, adg, n, cam)
            p0 = u * d
            p1 = v * d
            q0, q1, q2 = fin[3, n], fin[4, n], fin[5, n]
            sq = e0 * e0 + e1 * e1 + e2 * e2
            live = not (sq < SQ_MIN)  # NaN stays NaN
            r = math.sqrt(sq if live else SQ_MIN)
            cf = fin[6, n]
            t = r + off
            tgn = tg[n] if gamma != 1.0 else r
            acc += cf * (tgn - g_off)
            slope = (gamma * tgn / (t * r)) if gamma != 1.0 else 1.0 / r
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
            gd = c0 * u + c1 * v + c2  # dL/d(depth)
            g15 += gd * adg[n] * fin[2, n]
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
        gi[15] += g15
    return total


def _fallback_depth_grad(
    tab: np.ndarray,
    adg: np.ndarray,
    tg: np.ndarray,
    blocks: np.ndarray,
    b_img: np.ndarray,
    b_ref: np.ndarray,
    fin: np.ndarray,
    anc: np.ndarray,
    gamma: float,
    off: float,
    scale: float,
    gbuf: np.ndarray,
    g_ad: np.ndarray,
) -> None:
    """Last pass of :func:`fallback_loss_and_grad`: each target's anchor-depth gradient into ``gbuf (F,)``, then
    added to ``g_ad`` in target order. Compiled without reassociation or contraction (elementwise, no sums): the
    vectorised loop and its scalar fallback compute the same IEEE operations, whichever one runs."""
    for k in range(b_img.shape[0]):
        cam = _block_cameras(tab, b_img[k], b_ref[k])
        ri0, ri1, ri2, ri3, ri4, ri5, ri6, ri7, ri8 = cam[4:13]
        for n in range(blocks[k], blocks[k + 1]):
            e0, e1, e2, d, u, v, fac = _residual(fin, adg, n, cam)
            sq = e0 * e0 + e1 * e1 + e2 * e2
            live = not (sq < SQ_MIN)
            r = math.sqrt(sq if live else SQ_MIN)
            slope = (gamma * tg[n] / ((r + off) * r)) if gamma != 1.0 else 1.0 / r
            w = scale * fin[6, n] * slope if live else 0.0
            g0 = w * e0
            g1 = w * e1
            g2 = w * e2
            gd = (ri0 * g0 + ri3 * g1 + ri6 * g2) * u + (ri1 * g0 + ri4 * g1 + ri7 * g2) * v
            gbuf[n] = (gd + (ri2 * g0 + ri5 * g1 + ri8 * g2)) * fac
    for n in range(anc.shape[0]):
        g_ad[anc[n]] += gbuf[n]


def _block_cameras(
    tab: np.ndarray, i: int, j: int
) -> tuple[
    float, float, float, float, float, float, float, float, float, float, float, float, float, float, float, float,
    float, float, float, float, float, float, float, float, float, float,
]:  # fmt: skip
    """What a block of targets of image ``i`` regressed onto reference ``j`` reads from the camera table:
    ``f0 / f, ppx, ppy, 1 / f, R_i (9, row-major), R_j (9), t_i - t_j (3)``."""
    return (
        tab[i, 15], tab[i, 13], tab[i, 14], 1.0 / tab[i, 12],
        tab[i, 0], tab[i, 1], tab[i, 2], tab[i, 3], tab[i, 4], tab[i, 5], tab[i, 6], tab[i, 7], tab[i, 8],
        tab[j, 0], tab[j, 1], tab[j, 2], tab[j, 3], tab[j, 4], tab[j, 5], tab[j, 6], tab[j, 7], tab[j, 8],
        tab[i, 9] - tab[j, 9], tab[i, 10] - tab[j, 10], tab[i, 11] - tab[j, 11],
    )  # fmt: skip


def _residual(
    fin: np.ndarray, adg: np.ndarray, n: int, cam: tuple[float, ...]
) -> tuple[float, float, float, float, float, float, float]:
    """Target ``n``'s world-frame residual ``R_i pc + t_i - (R_j q + t_j)`` (``e (3)``) and its point's depth
    ``d``, normalised pixel ``(u, v)`` and depth factor ``1 + offm1 f0 / f``; ``cam`` from :func:`_block_cameras`."""
    c15, px, py, inv_f, ri0, ri1, ri2, ri3, ri4, ri5, ri6, ri7, ri8 = cam[:13]
    rj0, rj1, rj2, rj3, rj4, rj5, rj6, rj7, rj8, dt0, dt1, dt2 = cam[13:]
    fac = 1.0 + fin[2, n] * c15
    d = adg[n] * fac
    u = (fin[0, n] - px) * inv_f
    v = (fin[1, n] - py) * inv_f
    p0 = u * d
    p1 = v * d
    q0, q1, q2 = fin[3, n], fin[4, n], fin[5, n]
    e0 = ri0 * p0 + ri1 * p1 + ri2 * d - (rj0 * q0 + rj1 * q1 + rj2 * q2) + dt0
    e1 = ri3 * p0 + ri4 * p1 + ri5 * d - (rj3 * q0 + rj4 * q1 + rj5 * q2) + dt1
    e2 = ri6 * p0 + ri7 * p1 + ri8 * d - (rj6 * q0 + rj7 * q1 + rj8 * q2) + dt2
    return e0, e1, e2, d, u, v, fac


def _adam(
    p: np.ndarray,
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """One Adam step in place on flat float64 arrays, torch's formula (no weight decay, no amsgrad)."""
    bc1 = 1.0 - beta1**step
    bc2 = math.sqrt(1.0 - beta2**step)
    for k in range(p.shape[0]):
        m[k] = beta1 * m[k] + (1.0 - beta1) * g[k]
        v[k] = beta2 * v[k] + (1.0 - beta2) * g[k] * g[k]
        p[k] -= (lr / bc1) * m[k] / (math.sqrt(v[k]) / bc2 + eps)


_residual = numba.njit(cache=True, inline="always")(_residual)
_block_cameras = numba.njit(cache=True, inline="always")(_block_cameras)
fallback_distances_jit = numba.njit(cache=True, fastmath={"nsz"}, error_model="numpy")(_fallback_distances)
fallback_grad_jit = numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")(_fallback_grad)
fallback_depth_grad_jit = numba.njit(cache=True, fastmath={"nsz"}, error_model="numpy")(_fallback_depth_grad)
adam_jit = numba.njit(cache=True, error_model="numpy")(_adam)
