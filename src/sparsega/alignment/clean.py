"""Visibility cleaning of the dense result (pipeline step 7): a pixel whose point lies in front of another view's
surface, and is less confident than that view's pixel, is rejected (the reference's ``clean_pointcloud``).

:func:`clean_confidences` runs one compiled pass per view pair; :func:`clean_confidences_numpy` is its plain twin
(``tests/test_clean.py`` compares them).
"""

from __future__ import annotations

import numba
import numpy as np

from ..scene import unproject_depth


def _clean_view_pair(
    depth_i: np.ndarray,
    conf_i: np.ndarray,
    depth_j: np.ndarray,
    conf_j: np.ndarray,
    M: np.ndarray,
    t: np.ndarray,
    tol: float,
    bad_conf: float,
    out_i: np.ndarray,
) -> None:
    """Visibility cleaning of view i against view j (see :func:`clean_confidences`): pixel
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


_clean_view_pair_jit = numba.njit(cache=True, error_model="numpy")(_clean_view_pair)


def clean_confidences(
    confs: list[np.ndarray],
    intrinsics: np.ndarray,
    cam2w: np.ndarray,
    depthmaps: list[np.ndarray],
    pairs: np.ndarray,
    tol: float = 0.001,
    bad_conf: float = 0.0,
) -> list[np.ndarray]:
    """Lower the confidence of points seen IN FRONT of another view's surface (as the reference's
    clean_pointcloud): a pixel of view i whose 3D point projects into view j closer than j's depth there by more
    than ``tol`` (relative), while being less confident than j's pixel, gets ``bad_conf``.

    Only the view pairs in ``pairs (P, 2)`` (both directions) are compared: the scene graph's neighbours are the
    views that overlap, and comparing all N^2 pairs does not scale. One compiled pass per view pair (float64);
    :func:`clean_confidences_numpy` is its plain twin.
    """

    out = [c.astype(np.float32, copy=True) for c in confs]
    K = np.asarray(intrinsics, np.float64)
    c2w = np.asarray(cam2w, np.float64)
    w2c = np.linalg.inv(c2w)
    dep = [np.ascontiguousarray(d, np.float32) for d in depthmaps]
    cf = [np.ascontiguousarray(c, np.float32) for c in confs]
    done = set()
    for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2):
        for i, j in ((int(a), int(b)), (int(b), int(a))):
            if i == j or (i, j) in done:
                continue
            done.add((i, j))
            rel = w2c[j] @ c2w[i]
            M = K[j] @ rel[:3, :3] @ np.linalg.inv(K[i])
            t = K[j] @ rel[:3, 3]
            _clean_view_pair_jit(dep[i], cf[i], dep[j], cf[j], M, t, tol, bad_conf, out[i])
    return out


def clean_confidences_numpy(
    confs: list[np.ndarray],
    intrinsics: np.ndarray,
    cam2w: np.ndarray,
    depthmaps: list[np.ndarray],
    pairs: np.ndarray,
    tol: float = 0.001,
    bad_conf: float = 0.0,
) -> list[np.ndarray]:
    """Plain numpy twin of :func:`clean_confidences` (world points, then projection; for tests)."""
    out = [c.astype(np.float32, copy=True) for c in confs]
    w2c = np.linalg.inv(cam2w.astype(np.float64))
    pts = [
        unproject_depth(d, K, c2w).reshape(-1, 3).astype(np.float64) for d, K, c2w in zip(depthmaps, intrinsics, cam2w)
    ]
    done = set()
    for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2):
        for i, j in ((a, b), (b, a)):
            if i == j or (i, j) in done:
                continue
            done.add((i, j))
            cam = pts[i] @ w2c[j, :3, :3].T + w2c[j, :3, 3]
            z = cam[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                u = np.round(cam[:, 0] / z * intrinsics[j, 0, 0] + intrinsics[j, 0, 2])
                v = np.round(cam[:, 1] / z * intrinsics[j, 1, 1] + intrinsics[j, 1, 2])
            hj, wj = depthmaps[j].shape
            vis = (z > 0) & (u >= 0) & (u < wj) & (v >= 0) & (v < hj)
            idx = np.flatnonzero(vis)
            uu, vv = u[idx].astype(np.int64), v[idx].astype(np.int64)
            ci = confs[i].reshape(-1)
            bad = (z[idx] < (1 - tol) * depthmaps[j][vv, uu]) & (ci[idx] < confs[j][vv, uu])
            flat = out[i].reshape(-1)
            flat[idx[bad]] = np.minimum(flat[idx[bad]], bad_conf)
    return out
