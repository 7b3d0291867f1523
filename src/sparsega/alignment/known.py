"""Known cameras: intrinsics and poses as inputs, and the user's frame and metric scale from them.

The reference optimiser only knows poses relative to a parent in the kinematic tree and never inverts that
chain (it stops with "inverse kinematic chain not yet implemented"). This module does.

Notation (see :mod:`sparsega.alignment.optimizer`): the optimiser's camera ``i`` has rotation ``R_i`` and "chain
translation" ``T_i`` obtained by composing relative poses down the tree, per-image scale ``a_i = exp(s_i)``,
global guard ``g = 1 / min_k a_k``, and a focal-plane offset ``o_i = z_i [(W_i, H_i) / f_i * (0.5 - pp_i), 1]`` with
``z_i = a_i m_i f_i / f0_i``. Its camera-to-world pose is ``(R_i, g (T_i - R_i o_i))``.

Inversion. Given a camera centre ``C_i`` and rotation ``R_i`` in internal units:

    T_i = C_i / g + R_i o_i                      (absolute chain pose of camera i)
    rel_i = chain(parent(i))^-1 @ chain(i)        (relative pose stored in the parameters)

Initialisation and units. Internal lengths are the network's. With known poses a first unconstrained stage 1
gives every camera a pose; the similarity ``x -> s Q x + t`` taking its known cameras onto the given ones (``Q``
averaged from the rotations, ``s`` from the spread of the centres, so two cameras with a baseline suffice) maps
all cameras into the user's frame. Internally we work with centres ``C / s`` and multiply all output lengths by
``s`` (the world scale). With a single known pose, ``s = 1`` (the network's metric units). The chain is then
inverted onto these poses (``SparseAligner.set_absolute_poses``).

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
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import roma
import torch

from ..errors import InputError
from ..types import AlignConfig
from .losses import tree_levels
from .optimizer import SparseAligner
from .problem import AlignProblem

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


def similarity_from_cameras(
    R_est: np.ndarray, C_est: np.ndarray, R_ref: np.ndarray, C_ref: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``x -> s Q x + t`` taking estimated cameras onto reference ones (K >= 1 cameras).

    The rotation ``Q`` averages ``R_ref_k R_est_k^T`` (special Procrustes), so it is defined even for two
    cameras; the scale is the ratio of the centres' spreads (1 with a single camera or no baseline); ``t`` maps
    the centroids. Shapes: ``R (K,3,3)``, ``C (K,3)``.
    """
    Q = roma.special_procrustes(torch.as_tensor(np.einsum("kab,kcb->ac", R_ref, R_est))).numpy()
    me, mr = C_est.mean(0), C_ref.mean(0)
    spread_e = np.linalg.norm(C_est - me, axis=1).sum()
    spread_r = np.linalg.norm(C_ref - mr, axis=1).sum()
    s = float(spread_r / spread_e) if len(C_est) > 1 and spread_e > 1e-12 and spread_r > 1e-12 else 1.0
    return s, Q, mr - s * Q @ me


def make_setup(
    problem: AlignProblem, cfg: AlignConfig, known_intrinsics: Any, known_poses: Any
) -> tuple[Callable[[SparseAligner], None], AlignConfig, float]:
    """Validate known cameras and return ``(setup(aligner), config, world_scale)``.

    With known poses, a first unconstrained stage 1 gives every camera a pose; the similarity from its known
    cameras onto the given poses puts all cameras in the user's frame, ``world_scale`` (user units per internal
    unit) is that similarity's scale, the chain is inverted onto these poses and the constraints installed.
    Outputs of the aligner are in internal units and must be multiplied by ``world_scale`` (lengths only).
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

    def set_intrinsics(al: SparseAligner) -> None:
        if not intr:
            return
        ks = sorted(intr)
        f = torch.tensor([0.5 * (intr[k][0, 0] + intr[k][1, 1]) for k in ks], dtype=dt, device=dev)
        pp = torch.tensor(np.stack([intr[k][:2, 2] for k in ks]), dtype=dt, device=dev)
        idx = torch.tensor(ks, device=dev)
        with torch.no_grad():
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
        return set_intrinsics, cfg, 1.0

    # unconstrained stage 1 for the cameras the user did not give
    pre = SparseAligner(problem, cfg)
    set_intrinsics(pre)
    pre.run_stage(1)
    with torch.no_grad():
        _, _, cam2w_free, _, _ = pre.cameras()
    cam2w_free = cam2w_free.double().cpu().numpy()
    ks = sorted(poses)
    R_ref = np.stack([poses[k][:3, :3] for k in ks])
    C_ref = np.stack([poses[k][:3, 3] for k in ks])
    scale, Q, t = similarity_from_cameras(cam2w_free[ks, :3, :3], cam2w_free[ks, :3, 3], R_ref, C_ref)
    if len(ks) >= 2 and np.linalg.norm(C_ref - C_ref.mean(0), axis=1).max() < 1e-9:
        raise InputError("known poses: the known cameras have no baseline, the scale is undefined")
    R_all = np.einsum("ab,kbc->kac", Q, cam2w_free[:, :3, :3])
    C_all = (cam2w_free[:, :3, 3] @ Q.T * scale + t) / scale  # internal units = user units / scale
    R_all[ks] = R_ref
    C_all[ks] = C_ref / scale
    log_sizes = pre.log_sizes.detach().clone()
    log.info("known poses: %d cameras, world scale %.6g user units per network unit", len(ks), scale)

    def setup(al: SparseAligner) -> None:
        set_intrinsics(al)
        with torch.no_grad():
            al.log_sizes[:] = log_sizes
        R = torch.as_tensor(R_all, dtype=dt, device=dev)
        C = torch.as_tensor(C_all, dtype=dt, device=dev)
        mask = torch.zeros(n, dtype=torch.bool, device=dev)
        mask[ks] = True
        install_known_poses(al, R, C, mask, hard=fix_poses, weight=cfg.pose_prior_weight)
        al.set_absolute_poses(R, C)

    return setup, cfg, scale


def install_known_poses(
    al: SparseAligner, R: torch.Tensor, C: torch.Tensor, mask: torch.Tensor, hard: bool, weight: float
) -> None:
    """Constrain cameras ``mask (N,)`` to rotations ``R (N,3,3)`` and centres ``C (N,3)`` (internal units).

    ``hard``: known cameras become roots of the kinematic forest and their chain pose is derived from (R, C)
    every iteration, so they never move. Otherwise a prior ``weight * (angle^2 + |dC|^2 / L^2)`` is added to
    the loss (L = spread of the known centres). Call :meth:`SparseAligner.set_absolute_poses` afterwards to initialise.
    """
    p = al.p
    known = mask.cpu().numpy()
    if hard:
        edges = p.edges[~known[p.edges[:, 1]]] if len(p.edges) else p.edges
        roots = sorted({p.root} | set(np.flatnonzero(known).tolist()))
        al.levels, al.parent_pos, al.inverse = tree_levels(p.n_images, roots, edges)
        # rows of free cameras are never used: make them finite so that torch.where's gradients stay clean
        eye = torch.eye(3, dtype=R.dtype, device=R.device).expand_as(R)
        al.fixed_mask = mask
        al.fixed_R = torch.where(mask.view(-1, 1, 1), R, eye)
        al.fixed_C = torch.where(mask.view(-1, 1), C, torch.zeros_like(C))
        return
    spread = float((C[mask] - C[mask].mean(0)).norm(dim=1).max()) if int(mask.sum()) > 1 else 1.0
    al.prior = (mask, R, C, weight, max(spread, 1e-9))


__all__ = ["validate_intrinsics", "validate_poses", "similarity_from_cameras", "make_setup"]
