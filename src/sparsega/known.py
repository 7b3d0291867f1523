"""Known cameras: intrinsics and poses as inputs, and the user's frame and metric scale from them.

The reference optimiser only knows poses relative to a parent in the kinematic tree and never inverts that
chain (it stops with "inverse kinematic chain not yet implemented"). This module does.

Notation (see :mod:`sparsega.optimize`): the optimiser's camera ``i`` has rotation ``R_i`` and "chain translation"
``T_i`` obtained by composing relative poses down the tree, per-image scale ``a_i = exp(s_i)``, global guard
``g = 1 / min_k a_k``, and a focal-plane offset ``o_i = z_i [(W_i, H_i) / f_i * (0.5 - pp_i), 1]`` with
``z_i = a_i m_i f_i / f0_i``. Its camera-to-world pose is ``(R_i, g (T_i - R_i o_i))``.

Inversion. Given a camera centre ``C_i`` and rotation ``R_i`` in internal units:

    T_i = C_i / g + R_i o_i                      (absolute chain pose of camera i)
    rel_i = chain(parent(i))^-1 @ chain(i)        (relative pose stored in the parameters)

Units. Internal lengths are the network's (canonical depths). The user's frame has its own scale: for every match
between two known cameras ``i, j`` the back-projected canonical points must agree,
``l_i R_i p_i + C_i = l_j R_j p_j + C_j``, which is linear in the per-image scales ``l`` (user units per network
unit). We solve it by least squares over all such matches (needs two overlapping known views with a baseline),
set ``S = min_i l_i``, work internally with centres ``C / S`` and sizes ``a_i = l_i / S`` (so ``g = 1``), and
multiply all output lengths by ``S``. With a single known pose, ``S = 1`` (the network's metric units).

Hard constraints (``fix_poses=True``): known cameras become roots of the kinematic forest (the edge to their parent
is cut) and their chain pose is DERIVED each iteration from the fixed ``(R_i, C_i)`` with the formula above, so the
output equals the input exactly whatever scales, focals and principal points do. Unknown cameras keep their tree
parent (possibly a known camera). Soft priors (``fix_poses=False``): the tree is unchanged and the loss gains
``w (angle(R_i, R_i*)^2 [rad] + |C_i - C_i*|^2 / L^2)`` per known camera, ``L`` the spread of the known centres.

Intrinsics: focal ``(fx + fy) / 2`` and principal point, in the predictions' pixel frame; ``fix_intrinsics``
freezes them (per image), otherwise they are only the initial values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import roma
import torch

from .errors import InputError
from .optimize import AlignProblem, SparseAligner, backproject, tree_levels
from .types import AlignConfig

log = logging.getLogger(__name__)


def _as_per_image(value: Any, n: int, shape: tuple[int, ...], what: str) -> dict[int, np.ndarray]:
    """Normalise an (N, ...) array or an {index: array} mapping to {index: float64 array}, validated."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape:
            raise InputError(f"{what}: expected shape (N, {', '.join(map(str, shape))}), got {arr.shape}")
        if len(arr) != n:
            raise InputError(f"{what}: {len(arr)} given for {n} images")
        items = list(enumerate(arr))
    out: dict[int, np.ndarray] = {}
    for k, v in items:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise InputError(f"{what}: key {k!r} is not an image index")
        if not 0 <= int(k) < n:
            raise InputError(f"{what}: image index {k} out of range [0, {n})")
        a = np.asarray(v, dtype=np.float64)
        if a.shape != shape:
            raise InputError(f"{what}[{k}]: expected shape {shape}, got {a.shape}")
        if not np.isfinite(a).all():
            raise InputError(f"{what}[{k}]: contains NaN or inf")
        out[int(k)] = a
    return out


def validate_intrinsics(known: Any, n: int) -> dict[int, np.ndarray]:
    """{index: K (3, 3)} with positive focals and a pinhole form."""
    ks = _as_per_image(known, n, (3, 3), "known_intrinsics")
    for k, K in ks.items():
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise InputError(f"known_intrinsics[{k}]: focal lengths must be > 0")
        if not np.allclose(K[2], (0, 0, 1)) or abs(K[0, 1]) > 1e-6 * K[0, 0] or abs(K[1, 0]) > 1e-9:
            raise InputError(f"known_intrinsics[{k}]: not a pinhole matrix [[fx,0,cx],[0,fy,cy],[0,0,1]]")
        if abs(K[0, 0] - K[1, 1]) > 0.05 * K[0, 0]:
            log.warning("known_intrinsics[%d]: fx and fy differ by more than 5%%; one focal (their mean) is used", k)
    return ks


def validate_poses(known: Any, n: int) -> dict[int, np.ndarray]:
    """{index: cam2w (4, 4)} with a proper rotation (orthonormal, det +1) and last row (0, 0, 0, 1)."""
    ps = _as_per_image(known, n, (4, 4), "known_poses")
    for k, P in ps.items():
        R = P[:3, :3]
        if not np.allclose(P[3], (0, 0, 0, 1), atol=1e-6):
            raise InputError(f"known_poses[{k}]: last row must be (0, 0, 0, 1)")
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
            raise InputError(f"known_poses[{k}]: rotation is not orthonormal with det +1")
    return ps


@dataclass
class KnownCameras:
    """Validated known cameras, in internal units after :func:`make_setup`."""

    intrinsics: dict[int, np.ndarray]
    poses: dict[int, np.ndarray]
    world_scale: float = 1.0


def _canonical_points(problem: AlignProblem, side: int, sel: torch.Tensor) -> torch.Tensor:
    """Camera-frame canonical points of one side of the selected matches (initial focal and pp)."""
    img = problem.m_img[side, sel]
    depth = problem.core_depth[problem.m_anchor[side, sel]] * problem.median_depths[img] * problem.m_off[side, sel]
    return backproject(problem.m_xy[side, sel], depth, problem.base_focals[img], problem.pps[img])


def solve_scales(problem: AlignProblem, poses: dict[int, np.ndarray]) -> dict[int, float]:
    """Per-image scale l_i (user units per network unit) of known cameras from their mutual matches (linear LS)."""
    known = np.zeros(problem.n_images, dtype=bool)
    known[list(poses)] = True
    m_img = problem.m_img.cpu().numpy()
    sel_np = known[m_img[0]] & known[m_img[1]] & problem.m_ok.cpu().numpy() & (m_img[0] != m_img[1])
    if sel_np.sum() < 3:
        raise InputError("known poses: at least two known cameras must share matches to fix the scale")
    sel = torch.as_tensor(sel_np, device=problem.m_img.device)
    p1 = _canonical_points(problem, 0, sel).double().cpu().numpy()
    p2 = _canonical_points(problem, 1, sel).double().cpu().numpy()
    i, j = m_img[0, sel_np], m_img[1, sel_np]
    R = np.stack([poses[k][:3, :3] if k in poses else np.eye(3) for k in range(problem.n_images)])
    C = np.stack([poses[k][:3, 3] if k in poses else np.zeros(3) for k in range(problem.n_images)])
    a = np.einsum("mab,mb->ma", R[i], p1)
    b = np.einsum("mab,mb->ma", R[j], p2)
    idx = {k: c for c, k in enumerate(sorted(poses))}
    m = len(i)
    A = np.zeros((3 * m, len(idx)))
    rows = np.arange(3 * m).reshape(m, 3)
    A[rows, np.array([idx[k] for k in i])[:, None]] = a
    A[rows, np.array([idx[k] for k in j])[:, None]] -= b
    rhs = (C[j] - C[i]).reshape(-1)
    w = np.sqrt(np.repeat(problem.m_conf[sel].double().cpu().numpy(), 3))
    # iteratively reweighted (Cauchy) to resist outlier matches
    lam = np.linalg.lstsq(A * w[:, None], rhs * w, rcond=None)[0]
    for _ in range(5):
        r = (A @ lam - rhs).reshape(m, 3)
        res = np.linalg.norm(r, axis=1)
        sig = max(np.median(res), 1e-12)
        ww = np.repeat(problem.m_conf[sel].double().cpu().numpy() / (1 + (res / sig) ** 2), 3)
        lam = np.linalg.lstsq(A * np.sqrt(ww)[:, None], rhs * np.sqrt(ww), rcond=None)[0]
    if not np.isfinite(lam).all() or (lam <= 0).any():
        raise InputError("known poses: the scale could not be estimated (do the known cameras have a baseline and "
                         "overlapping views?)")
    return {k: float(lam[c]) for k, c in idx.items()}


def make_setup(problem: AlignProblem, cfg: AlignConfig, known_intrinsics: Any, known_poses: Any
               ) -> tuple[Callable[[SparseAligner], None], AlignConfig, float]:
    """Validate known cameras and return ``(setup(aligner), config, world_scale)``.

    ``setup`` initialises parameters from the known values and installs the constraints; outputs of the aligner
    are in internal units and must be multiplied by ``world_scale`` (lengths only).
    """
    n = problem.n_images
    intr = validate_intrinsics(known_intrinsics, n)
    poses = validate_poses(known_poses, n)
    fix_intr = cfg.fix_intrinsics if cfg.fix_intrinsics is not None else bool(intr)
    fix_poses = cfg.fix_poses if cfg.fix_poses is not None else bool(poses)
    cfg = cfg.replace(fix_intrinsics=fix_intr, fix_poses=fix_poses)
    if cfg.shared_intrinsics and intr and len(intr) != n:
        raise InputError("shared_intrinsics with known intrinsics needs them for every image")

    dt, dev = problem.core_depth.dtype, problem.core_depth.device
    lam: dict[int, float] = {}
    scale = 1.0
    if len(poses) >= 2:
        lam = solve_scales(problem, poses)
        scale = min(lam.values())
    elif len(poses) == 1:
        lam = {next(iter(poses)): 1.0}

    def setup(al: SparseAligner) -> None:
        with torch.no_grad():
            if intr:
                ks = sorted(intr)
                f = torch.tensor([0.5 * (intr[k][0, 0] + intr[k][1, 1]) for k in ks], dtype=dt, device=dev)
                pp = torch.tensor([intr[k][:2, 2] for k in ks], dtype=dt, device=dev)
                idx = torch.tensor(ks, device=dev)
                if cfg.shared_intrinsics:
                    al.log_focals[:] = f.log().mean()
                    al.pps[:] = (pp / problem.imsizes[idx].to(dt)).mean(0)
                else:
                    al.log_focals[idx] = f.log()
                    al.pps[idx] = pp / problem.imsizes[idx].to(dt)
                if fix_intr:
                    mask = torch.ones(n, dtype=dt, device=dev)
                    mask[idx] = 0
                    al.intr_grad_mask = mask
            if not poses:
                return
            # per-image sizes: known from the LS solve, others the geometric mean of the known ones
            mean_log = float(np.mean(np.log([v / scale for v in lam.values()])))
            sizes = torch.full((n,), mean_log, dtype=dt, device=dev)
            for k, v in lam.items():
                sizes[k] = float(np.log(v / scale))
            sizes -= sizes.min()  # g = 1 at init; min size is 1
            al.log_sizes[:] = sizes
            R = torch.eye(3, dtype=dt, device=dev).repeat(n, 1, 1)
            C = torch.zeros((n, 3), dtype=dt, device=dev)
            known_mask = torch.zeros(n, dtype=torch.bool, device=dev)
            for k, P in poses.items():
                R[k] = torch.as_tensor(P[:3, :3], dtype=dt, device=dev)
                C[k] = torch.as_tensor(P[:3, 3] / scale, dtype=dt, device=dev)
                known_mask[k] = True
            al.install_known_poses(R, C, known_mask, hard=fix_poses, weight=cfg.pose_prior_weight)

    return setup, cfg, scale


def quats_from_rotmats(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 4) unit quaternions (XYZW, roma's convention)."""
    return roma.rotmat_to_unitquat(R)


__all__ = ["validate_intrinsics", "validate_poses", "solve_scales", "make_setup", "KnownCameras", "tree_levels"]
