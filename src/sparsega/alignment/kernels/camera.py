"""Compiled camera model (numba): parameters -> ``(N, 17)`` camera table and ``(A,)`` anchor depths, and its
reverse pass (analytic gradients of the parameters from the table's and depths' gradients).

The model is :meth:`sparsega.alignment.optimizer.SparseAligner.cameras` (its torch twin): relative poses chained
along the kinematic tree, the focal-plane reparametrisation and the scale guard ``1 / min(sizes)``.
"""

from __future__ import annotations

import math

import numba
import numpy as np


def _camera_model(
    quats: np.ndarray,
    trans: np.ndarray,
    log_sizes: np.ndarray,
    log_focals: np.ndarray,
    pps: np.ndarray,
    md: np.ndarray,
    bf: np.ndarray,
    imsz: np.ndarray,
    fmin: np.ndarray,
    fmax: np.ndarray,
    parent: np.ndarray,
    order: np.ndarray,
) -> tuple[
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    float,
    np.ndarray,
]:
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


def _camera_forward(
    quats: np.ndarray,
    trans: np.ndarray,
    log_sizes: np.ndarray,
    log_focals: np.ndarray,
    pps: np.ndarray,
    core: np.ndarray,
    md: np.ndarray,
    bf: np.ndarray,
    imsz: np.ndarray,
    fmin: np.ndarray,
    fmax: np.ndarray,
    parent: np.ndarray,
    order: np.ndarray,
    anchor_ptr: np.ndarray,
    table: np.ndarray,
    ad: np.ndarray,
) -> None:
    """Fill ``table (N, 17)`` (rows of the torch path's ``camera_table``) and ``ad (A,)`` anchor depths."""
    qn, rot, rc, tc, off, f, f_raw, s, z, g, ppn = _camera_model(
        quats, trans, log_sizes, log_focals, pps, md, bf, imsz, fmin, fmax, parent, order
    )
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
    for i in range(quats.shape[0]):  # image i's anchors are anchor_ptr[i]:anchor_ptr[i + 1]
        fa = g * s[i] * md[i]
        fb = f[i] / bf[i] - 1.0
        for a in range(anchor_ptr[i], anchor_ptr[i + 1]):
            ad[a] = fa * (fb + core[a])


def _camera_backward(
    quats: np.ndarray,
    trans: np.ndarray,
    log_sizes: np.ndarray,
    log_focals: np.ndarray,
    pps: np.ndarray,
    core: np.ndarray,
    md: np.ndarray,
    bf: np.ndarray,
    imsz: np.ndarray,
    fmin: np.ndarray,
    fmax: np.ndarray,
    parent: np.ndarray,
    order: np.ndarray,
    anchor_ptr: np.ndarray,
    g_table: np.ndarray,
    g_ad: np.ndarray,
    g_quats: np.ndarray,
    g_trans: np.ndarray,
    g_logs: np.ndarray,
    g_logf: np.ndarray,
    g_pps: np.ndarray,
    g_core: np.ndarray,
) -> None:
    """Reverse pass of :func:`_camera_forward`: gradients w.r.t. every parameter from those of the table and the
    anchor depths (written, not added). Follows torch's conventions at the kinks: the focal clamp passes the
    gradient inside its bounds (half of it at a bound), the minimum size shares it evenly among ties."""
    n = quats.shape[0]
    qn, rot, rc, tc, off, f, f_raw, s, z, g, ppn = _camera_model(
        quats, trans, log_sizes, log_focals, pps, md, bf, imsz, fmin, fmax, parent, order
    )
    gf = np.zeros(n)
    gs = np.zeros(n)
    gz = np.zeros(n)
    gppn = np.zeros((n, 2))
    grc = np.zeros((n, 3, 3))
    gtc = np.zeros((n, 3))
    goff = np.zeros((n, 3))
    gg = 0.0
    # anchor depths: ad = FA_i (FB_i + core), FA = g s md, FB = f / bf - 1; per image, over its contiguous anchors
    for i in range(n):
        fa = g * s[i] * md[i]
        fb = f[i] / bf[i] - 1.0
        sum_gfa = 0.0  # sum of dL/dFA
        sum_ga = 0.0  # sum of dL/d(anchor depth)
        for a in range(anchor_ptr[i], anchor_ptr[i + 1]):
            ga = g_ad[a]
            g_core[a] = ga * fa
            sum_gfa += ga * (fb + core[a])
            sum_ga += ga
        gg += sum_gfa * s[i] * md[i]
        gs[i] += sum_gfa * g * md[i]
        gf[i] += sum_ga * fa / bf[i]
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
    # g = 1 / min(s): the minimum's gradient is shared evenly among ties (torch's min()); the minimum is taken
    # again from s (1 / (1 / m) need not round back to m, which would drop the gradient)
    smin = np.inf
    for i in range(n):
        smin = min(smin, s[i])
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
        gx = 2 * (
            x * (G[0, 0] - G[1, 1] - G[2, 2])
            + y * (G[0, 1] + G[1, 0])
            + zq * (G[0, 2] + G[2, 0])
            + w * (G[2, 1] - G[1, 2])
        )
        gy = 2 * (
            y * (-G[0, 0] + G[1, 1] - G[2, 2])
            + x * (G[0, 1] + G[1, 0])
            + zq * (G[1, 2] + G[2, 1])
            + w * (G[0, 2] - G[2, 0])
        )
        gzq = 2 * (
            zq * (-G[0, 0] - G[1, 1] + G[2, 2])
            + x * (G[0, 2] + G[2, 0])
            + y * (G[1, 2] + G[2, 1])
            + w * (G[1, 0] - G[0, 1])
        )
        gw = 2 * (
            w * (G[0, 0] + G[1, 1] + G[2, 2])
            + x * (G[2, 1] - G[1, 2])
            + y * (G[0, 2] - G[2, 0])
            + zq * (G[1, 0] - G[0, 1])
        )
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


_camera_model = numba.njit(cache=True)(_camera_model)
camera_forward_jit = numba.njit(cache=True)(_camera_forward)
camera_backward_jit = numba.njit(cache=True)(_camera_backward)
