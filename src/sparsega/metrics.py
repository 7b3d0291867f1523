"""Camera and depth metrics for evaluating a reconstruction against ground truth (pure numpy, float64 inside).

Camera poses are ``cam2w`` (N, 4, 4) in the OpenCV convention. Reconstructions are defined up to a similarity, so
absolute metrics (ATE) align the estimate to the truth first, and relative metrics (RRA/RTA, AUC, mAA) use only
relative rotations and translation directions, which a global similarity does not change.

Conventions:

- errors are in degrees; accuracies (RRA, RTA, AUC, mAA) are fractions in [0, 1] (1 = perfect);
- the relative pose of pair (i, j) is camera j seen from camera i: ``R_ij = R_i^T R_j`` and
  ``t_ij = R_i^T (c_j - c_i)`` (a direction; its length is meaningless up to scale).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .errors import ConfigError, InputError

log = logging.getLogger(__name__)

ALIGN_MODES = ("sim3", "se3", "none")
DEPTH_SCALE_MODES = ("median", "lsq", None)


def _poses(name: str, x: np.ndarray) -> np.ndarray:
    """Validate an (N, 4, 4) / (N, 3, 4) pose stack and return it as float64."""
    arr = np.asarray(x, np.float64)
    if arr.ndim != 3 or arr.shape[1:] not in ((4, 4), (3, 4)):
        raise InputError(f"{name}: expected (N, 4, 4) camera-to-world matrices, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: contains non-finite values")
    return arr


def _pose_pair(est: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e, g = _poses("est_cam2w", est), _poses("gt_cam2w", gt)
    if len(e) != len(g):
        raise InputError(f"est_cam2w has {len(e)} cameras but gt_cam2w has {len(g)}")
    return e, g


def umeyama_sim3(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity with ``dst ~ s R src + t`` (Umeyama 1991).

    Args:
        src, dst: (N, 3) corresponding points.
        with_scale: estimate s (False: s = 1, a rigid fit).
    Returns:
        s (float), R (3, 3) proper rotation, t (3,), all float64. With fewer than 2 distinct points the
        rotation is the identity and s = 1 (the fit is then a pure translation).
    """
    a = np.asarray(src, np.float64)
    b = np.asarray(dst, np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or a.shape != b.shape or len(a) == 0:
        raise InputError(f"umeyama_sim3: src {a.shape} and dst {b.shape} must both be (N, 3) with N >= 1")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("umeyama_sim3: non-finite points")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    da, db = a - mu_a, b - mu_b
    var_a = float((da**2).sum() / len(a))
    if var_a <= 1e-300:
        return 1.0, np.eye(3), mu_b - mu_a
    cov = db.T @ da / len(a)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = (u * d) @ vt
    scale = float((sig * d).sum() / var_a) if with_scale else 1.0
    t = mu_b - scale * rot @ mu_a
    return scale, rot, t


def align_poses(est_cam2w: np.ndarray, gt_cam2w: np.ndarray, align: str = "sim3") -> np.ndarray:
    """The estimate moved onto the truth by the similarity fitted to the camera centres.

    Returns (N, 4, 4) float64 cam2w: centres ``s R c + t``, rotations ``R R_i`` (a proper cam2w, the scale only
    affects the centres). ``align``: ``"sim3"``, ``"se3"`` (no scale) or ``"none"``.
    """
    e, g = _pose_pair(est_cam2w, gt_cam2w)
    if align not in ALIGN_MODES:
        raise ConfigError(f"align={align!r}: must be one of {', '.join(ALIGN_MODES)}")
    out = np.tile(np.eye(4), (len(e), 1, 1))
    out[:, :3, :4] = e[:, :3, :4]
    if align == "none":
        return out
    s, rot, t = umeyama_sim3(e[:, :3, 3], g[:, :3, 3], with_scale=(align == "sim3"))
    out[:, :3, :3] = rot @ e[:, :3, :3]
    out[:, :3, 3] = s * e[:, :3, 3] @ rot.T + t
    return out


def ate(est_cam2w: np.ndarray, gt_cam2w: np.ndarray, align: str = "sim3") -> float:
    """Absolute trajectory error: RMSE (in ground-truth units) of the camera centres after aligning the
    estimate's centres to the truth's (``"sim3"``, ``"se3"`` or ``"none"``)."""
    aligned = align_poses(est_cam2w, gt_cam2w, align)
    g = _poses("gt_cam2w", gt_cam2w)
    diff = aligned[:, :3, 3] - g[:, :3, 3]
    return float(np.sqrt((diff**2).sum(axis=1).mean()))


def ate_rel(est_cam2w: np.ndarray, gt_cam2w: np.ndarray, extent: float, align: str = "sim3") -> float:
    """:func:`ate` divided by a scene extent (e.g. :attr:`sparsega.sim.synthetic.SyntheticScene.extent`)."""
    if not (np.isfinite(extent) and extent > 0):
        raise InputError(f"extent={extent!r}: must be a finite number > 0")
    return ate(est_cam2w, gt_cam2w, align) / float(extent)


def _rot_angle_deg(rel: np.ndarray) -> np.ndarray:
    """Rotation angles (degrees) of (..., 3, 3) rotation matrices, stable near 0 and 180 degrees."""
    # angle = atan2(|axis * sin|, cos) with 2 sin = |R - R^T| vee, 2 cos = trace - 1
    vee = np.stack(
        [rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], axis=-1
    )
    sin2 = np.linalg.norm(vee, axis=-1)
    cos2 = np.trace(rel, axis1=-2, axis2=-1) - 1.0
    return np.degrees(np.arctan2(sin2, cos2))


def rotation_error_deg(r_est: np.ndarray, r_gt: np.ndarray) -> np.ndarray:
    """Angle (degrees) of ``r_est^T r_gt`` for (..., 3, 3) rotations."""
    return _rot_angle_deg(np.swapaxes(r_est, -1, -2) @ r_gt)


def angle_between_deg(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Angle (degrees, in [0, 180]) between (..., 3) vectors. Where both are (near) zero it is 0; where only one
    is, 90 (no direction to agree with)."""
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    dot = (a * b).sum(axis=-1)
    ang = np.degrees(np.arctan2(cross, dot))
    za, zb = na <= eps * np.maximum(nb, 1.0), nb <= eps * np.maximum(na, 1.0)
    ang = np.where(za & zb, 0.0, np.where(za | zb, 90.0, ang))
    return ang


def relative_pose_errors(
    est_cam2w: np.ndarray, gt_cam2w: np.ndarray, ambiguity: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Relative rotation and translation-direction errors over all pairs i < j (row-major pair order).

    Args:
        ambiguity: if True, the translation error is ``min(e, 180 - e)`` (the sign-agnostic variant some
            benchmarks use); default False, the strict angle.
    Returns:
        rot_err_deg (P,), trans_dir_err_deg (P,) float64 with P = N (N - 1) / 2. A zero-length relative
        translation on one side only counts as 90 degrees, on both sides as 0.
    """
    e, g = _pose_pair(est_cam2w, gt_cam2w)
    n = len(e)
    ii, jj = np.triu_indices(n, k=1)

    def rel(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rot, c = p[:, :3, :3], p[:, :3, 3]
        rt = np.swapaxes(rot[ii], -1, -2)
        return rt @ rot[jj], (rt @ (c[jj] - c[ii])[..., None])[..., 0]

    re, te = rel(e)
    rg, tg = rel(g)
    rot_err = rotation_error_deg(re, rg)
    trans_err = angle_between_deg(te, tg)
    if ambiguity:
        trans_err = np.minimum(trans_err, 180.0 - trans_err)
    return rot_err, trans_err


def _errs(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, np.float64).ravel()
    if np.isnan(arr).any():
        raise InputError(f"{name}: contains NaN")
    return arr


def rra_rta(rot_err: np.ndarray, trans_err: np.ndarray, thresholds: Sequence[float] = (5, 15)) -> dict[str, float]:
    """Relative rotation / translation accuracy: fraction of pairs with error below each threshold (degrees).

    Returns ``{"rra5": .., "rta5": .., "rra15": .., "rta15": ..}`` (keys from the thresholds, ``g`` format);
    1.0 for an empty pair list.
    """
    r, t = _errs("rot_err", rot_err), _errs("trans_err", trans_err)
    out: dict[str, float] = {}
    for thr in thresholds:
        tag = f"{thr:g}"
        out[f"rra{tag}"] = float((r < thr).mean()) if len(r) else 1.0
        out[f"rta{tag}"] = float((t < thr).mean()) if len(t) else 1.0
    return out


def auc(errors: np.ndarray, max_threshold: float = 5.0) -> float:
    """Area under the accuracy-vs-threshold curve on [0, max_threshold], normalised to [0, 1].

    ``errors`` are per-pair pose errors in degrees (usually ``max(rot_err, trans_err)``). The curve is the
    fraction of errors below t; its exact integral is ``mean(clip(1 - e / T, 0, 1))`` (the continuous pose AUC of
    RealEstate10K / CO3D evaluations). 1.0 for an empty list.
    """
    e = _errs("errors", errors)
    if not (np.isfinite(max_threshold) and max_threshold > 0):
        raise ConfigError(f"max_threshold={max_threshold!r}: must be a finite number > 0")
    if len(e) == 0:
        return 1.0
    return float(np.clip(1.0 - e / max_threshold, 0.0, 1.0).mean())


def maa(rot_err: np.ndarray, trans_err: np.ndarray, max_threshold: int = 30) -> float:
    """Mean average accuracy: the mean over integer thresholds k = 1..max_threshold of the fraction of pairs whose
    ``max(rot_err, trans_err) < k`` degrees (mAA@30 of CO3D / RealEstate10K evaluations). 1.0 for no pairs."""
    r, t = _errs("rot_err", rot_err), _errs("trans_err", trans_err)
    if r.shape != t.shape:
        raise InputError(f"rot_err {r.shape} and trans_err {t.shape} differ in length")
    if int(max_threshold) != max_threshold or max_threshold < 1:
        raise ConfigError(f"max_threshold={max_threshold!r}: must be an integer >= 1")
    if len(r) == 0:
        return 1.0
    worst = np.maximum(r, t)
    ks = np.arange(1, int(max_threshold) + 1)
    return float((worst[None, :] < ks[:, None]).mean())


def focal_error(est_focals: np.ndarray, gt_focals: np.ndarray) -> np.ndarray:
    """(N,) relative focal errors ``|f_est - f_gt| / f_gt`` (focals in pixels, or (N, 3, 3) intrinsics)."""

    def focals(name: str, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x, np.float64)
        if arr.ndim == 3 and arr.shape[1:] == (3, 3):
            arr = 0.5 * (arr[:, 0, 0] + arr[:, 1, 1])
        if arr.ndim != 1:
            raise InputError(f"{name}: expected (N,) focals or (N, 3, 3) intrinsics, got shape {arr.shape}")
        return arr

    e, g = focals("est_focals", est_focals), focals("gt_focals", gt_focals)
    if e.shape != g.shape:
        raise InputError(f"est_focals {e.shape} and gt_focals {g.shape} differ")
    if not (g > 0).all():
        raise InputError("gt_focals: must all be > 0")
    return np.abs(e - g) / g


def depth_abs_rel(
    est_depths: Sequence[np.ndarray] | np.ndarray,
    gt_depths: Sequence[np.ndarray] | np.ndarray,
    scale: str | None = "median",
    per_image: bool = False,
) -> float:
    """AbsRel = mean over valid pixels of ``|s d - g| / g``.

    Args:
        est_depths, gt_depths: lists (or stacks) of (H_i, W_i) depth maps; valid pixels have a finite g > 0 and a
            finite d.
        scale: how s is chosen: ``"median"`` = median of g / d, ``"lsq"`` = sum(d g) / sum(d^2), None = 1.
        per_image: one s per image (single-view style) instead of one s for all images (default: a multi-view
            reconstruction has a single global scale, so per-image rescaling would hide scale drift).
    Returns:
        the mean over all valid pixels of all images (pooled).
    """
    if scale not in DEPTH_SCALE_MODES:
        raise ConfigError(f"scale={scale!r}: must be 'median', 'lsq' or None")
    if len(est_depths) != len(gt_depths):
        raise InputError(f"{len(est_depths)} estimated depth maps for {len(gt_depths)} ground-truth ones")
    ds, gs = [], []
    for k, (d, g) in enumerate(zip(est_depths, gt_depths)):
        d, g = np.asarray(d, np.float64), np.asarray(g, np.float64)
        if d.shape != g.shape:
            raise InputError(f"depth map {k}: estimate {d.shape} and ground truth {g.shape} differ")
        ok = np.isfinite(g) & (g > 0) & np.isfinite(d)
        ds.append(d[ok])
        gs.append(g[ok])
    if sum(len(g) for g in gs) == 0:
        raise InputError("depth_abs_rel: no valid ground-truth pixel")

    def fit(d: np.ndarray, g: np.ndarray) -> float:
        if scale is None or len(d) == 0:
            return 1.0
        if scale == "median":
            pos = d > 0
            return float(np.median(g[pos] / d[pos])) if pos.any() else 1.0
        den = float((d * d).sum())
        return float((d * g).sum() / den) if den > 0 else 1.0

    if per_image:
        scales = [fit(d, g) for d, g in zip(ds, gs)]
    else:
        s = fit(np.concatenate(ds), np.concatenate(gs))
        scales = [s] * len(ds)
    num = sum(float((np.abs(s * d - g) / g).sum()) for s, d, g in zip(scales, ds, gs))
    return num / sum(len(g) for g in gs)


def camera_metrics(
    est_cam2w: np.ndarray,
    gt_cam2w: np.ndarray,
    est_focals: np.ndarray | None = None,
    gt_focals: np.ndarray | None = None,
    extent: float | None = None,
) -> dict[str, float]:
    """Every camera metric in one call.

    Returns a dict with ``ate`` (Sim(3)-aligned, ground-truth units), ``ate_rel`` (ate / extent; NaN when no
    extent is given), ``rot_err_med`` and ``trans_err_med`` (median relative errors, degrees), ``rra5``,
    ``rra15``, ``rta5``, ``rta15``, ``auc5`` (of max(rot, trans) error), ``maa30`` and ``focal_err_med``
    (median relative focal error; NaN when focals are not given). Medians of an empty pair list are 0.
    """
    e, g = _pose_pair(est_cam2w, gt_cam2w)
    out: dict[str, float] = {"ate": ate(e, g, "sim3")}
    out["ate_rel"] = out["ate"] / float(extent) if extent is not None else float("nan")
    if extent is not None and not (np.isfinite(extent) and extent > 0):
        raise InputError(f"extent={extent!r}: must be a finite number > 0")
    rot, trans = relative_pose_errors(e, g)
    out["rot_err_med"] = float(np.median(rot)) if len(rot) else 0.0
    out["trans_err_med"] = float(np.median(trans)) if len(trans) else 0.0
    acc = rra_rta(rot, trans, (5, 15))
    for key in ("rra5", "rra15", "rta5", "rta15"):
        out[key] = acc[key]
    out["auc5"] = auc(np.maximum(rot, trans), 5.0)
    out["maa30"] = maa(rot, trans, 30)
    if est_focals is not None and gt_focals is not None:
        out["focal_err_med"] = float(np.median(focal_error(est_focals, gt_focals)))
    else:
        out["focal_err_med"] = float("nan")
    return out


__all__ = [
    "umeyama_sim3",
    "align_poses",
    "ate",
    "ate_rel",
    "relative_pose_errors",
    "rotation_error_deg",
    "angle_between_deg",
    "rra_rta",
    "auc",
    "maa",
    "focal_error",
    "depth_abs_rel",
    "camera_metrics",
]
