"""Tests of sparsega.metrics: exact values on constructed cases, perfect scores on identical inputs, invariance
to a global similarity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sparsega.errors import ConfigError, InputError
from sparsega.metrics import (
    align_poses,
    ate,
    ate_rel,
    auc,
    camera_metrics,
    depth_abs_rel,
    focal_error,
    maa,
    relative_pose_errors,
    rotation_error_deg,
    rra_rta,
    umeyama_sim3,
)


def random_poses(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    out[:, :3, 3] = rng.normal(0, 2.0, (n, 3))
    return out


def similarity(poses: np.ndarray, s: float, rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Apply x -> s R x + t to the world of a pose stack (rotations R R_i, centres s R c + t)."""
    out = poses.copy()
    out[:, :3, :3] = rot @ poses[:, :3, :3]
    out[:, :3, 3] = s * poses[:, :3, 3] @ rot.T + t
    return out


def test_umeyama_recovers_known_sim3() -> None:
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    rot = Rotation.from_rotvec([0.3, -1.2, 2.0]).as_matrix()
    dst = 2.7 * src @ rot.T + np.array([1.0, -4.0, 0.5])
    s, r, t = umeyama_sim3(src, dst)
    assert s == pytest.approx(2.7, rel=1e-12)
    np.testing.assert_allclose(r, rot, atol=1e-12)
    np.testing.assert_allclose(t, [1.0, -4.0, 0.5], atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    # rigid fit: scale fixed to 1, still the right rotation for scaled-by-1 data
    s1, r1, t1 = umeyama_sim3(src, src @ rot.T + 3.0, with_scale=False)
    assert s1 == 1.0
    np.testing.assert_allclose(r1, rot, atol=1e-12)
    np.testing.assert_allclose(t1, [3.0, 3.0, 3.0], atol=1e-12)


def test_umeyama_reflection_is_not_returned() -> None:
    rng = np.random.default_rng(2)
    src = rng.normal(size=(20, 3))
    dst = src * np.array([1.0, 1.0, -1.0])  # a mirror: best proper rotation, det +1
    _, r, _ = umeyama_sim3(src, dst)
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_perfect_on_identical_inputs() -> None:
    gt = random_poses(7)
    f = np.linspace(300, 400, 7)
    m = camera_metrics(gt, gt, f, f, extent=5.0)
    assert set(m) == {
        "ate",
        "ate_rel",
        "rot_err_med",
        "trans_err_med",
        "rra5",
        "rra15",
        "rta5",
        "rta15",
        "auc5",
        "maa30",
        "focal_err_med",
    }
    for key in ("ate", "ate_rel", "rot_err_med", "trans_err_med", "focal_err_med"):
        assert m[key] == pytest.approx(0.0, abs=1e-6), key
    for key in ("rra5", "rra15", "rta5", "rta15", "auc5", "maa30"):
        assert m[key] == 1.0, key


def test_invariant_to_global_similarity() -> None:
    gt = random_poses(9, seed=3)
    rng = np.random.default_rng(4)
    noisy = gt.copy()
    noisy[:, :3, 3] += rng.normal(0, 0.05, (9, 3))
    noisy[:, :3, :3] = Rotation.from_rotvec(rng.normal(0, 0.02, (9, 3))).as_matrix() @ noisy[:, :3, :3]
    rot = Rotation.from_rotvec([1.0, 2.0, -0.5]).as_matrix()
    moved = similarity(noisy, 0.37, rot, np.array([10.0, -3.0, 7.0]))
    # the exact truth under a similarity scores perfectly
    m = camera_metrics(similarity(gt, 3.0, rot, np.ones(3)), gt, extent=2.0)
    assert m["ate"] < 1e-9 and m["rot_err_med"] < 1e-6 and m["trans_err_med"] < 1e-6
    # a perturbed estimate scores the same wherever its frame is
    a, b = camera_metrics(noisy, gt, extent=2.0), camera_metrics(moved, gt, extent=2.0)
    for key in a:
        if np.isfinite(a[key]):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key
    assert a["ate"] > 0.01
    np.testing.assert_allclose(align_poses(moved, gt)[:, :3, 3], align_poses(noisy, gt)[:, :3, 3], atol=1e-9)


def test_known_rotation_perturbation() -> None:
    gt = random_poses(5, seed=5)
    est = gt.copy()
    delta = Rotation.from_rotvec(np.radians(10.0) * np.array([0.6, 0.0, 0.8])).as_matrix()
    est[2, :3, :3] = est[2, :3, :3] @ delta  # camera 2 turned 10 degrees about its own axis, centre kept
    rot, _ = relative_pose_errors(est, gt)
    ii, jj = np.triu_indices(5, k=1)
    touched = (ii == 2) | (jj == 2)
    np.testing.assert_allclose(rot[touched], 10.0, atol=1e-9)
    np.testing.assert_allclose(rot[~touched], 0.0, atol=1e-9)
    assert ate(est, gt) < 1e-9  # centres unchanged


def test_known_translation_direction_error() -> None:
    gt = np.tile(np.eye(4), (2, 1, 1))
    gt[1, :3, 3] = [1.0, 0.0, 0.0]
    est = gt.copy()
    theta = np.radians(25.0)
    est[1, :3, 3] = [3 * np.cos(theta), 3 * np.sin(theta), 0.0]  # length is irrelevant
    rot, trans = relative_pose_errors(est, gt)
    assert rot[0] == pytest.approx(0.0, abs=1e-9)
    assert trans[0] == pytest.approx(25.0, abs=1e-9)
    est[1, :3, 3] = [-1.0, 0.0, 0.0]
    assert relative_pose_errors(est, gt)[1][0] == pytest.approx(180.0)
    assert relative_pose_errors(est, gt, ambiguity=True)[1][0] == pytest.approx(0.0)
    est[1, :3, 3] = 0.0  # zero-length estimate: no direction
    assert relative_pose_errors(est, gt)[1][0] == 90.0
    assert relative_pose_errors(est, est)[1][0] == 0.0


def test_rotation_error_stable_near_180() -> None:
    for deg in (1e-4, 90.0, 179.9, 180.0):
        r = Rotation.from_rotvec(np.radians(deg) * np.array([0.0, 1.0, 0.0])).as_matrix()
        assert rotation_error_deg(np.eye(3), r) == pytest.approx(deg, abs=1e-7)


def test_accuracy_curves_exact_values() -> None:
    assert auc(np.array([0.0, 2.5, 5.0, 10.0]), 5.0) == pytest.approx(0.375)
    assert maa(np.array([0.5, 10.5, 40.0]), np.array([0.1, 3.0, 1.0]), 30) == pytest.approx(5 / 9)
    acc = rra_rta(np.array([1.0, 6.0, 20.0, 4.9]), np.array([16.0, 14.0, 1.0, 5.0]))
    assert acc == {"rra5": 0.5, "rta5": 0.25, "rra15": 0.75, "rta15": 0.75}
    assert auc(np.array([]), 5.0) == 1.0


def test_ate_value_and_alignment_modes() -> None:
    gt = random_poses(6, seed=6)
    est = gt.copy()
    est[:, :3, 3] += np.array([1.0, 0.0, 0.0])
    assert ate(est, gt, "none") == pytest.approx(1.0)
    assert ate(est, gt, "se3") == pytest.approx(0.0, abs=1e-9)
    est[0, :3, 3] += [0.0, 0.6, 0.0]  # one centre off: sim3 spreads it, rmse below the raw error
    assert 0 < ate(est, gt) < 0.6 / np.sqrt(6) + 1e-9
    assert ate_rel(est, gt, 4.0) == pytest.approx(ate(est, gt) / 4.0)


def test_focal_and_depth_metrics() -> None:
    np.testing.assert_allclose(focal_error([110.0, 90.0], [100.0, 100.0]), [0.1, 0.1])
    k = np.tile(np.diag([200.0, 200.0, 1.0]), (2, 1, 1))
    np.testing.assert_allclose(focal_error(k, [200.0, 250.0]), [0.0, 0.2])
    rng = np.random.default_rng(7)
    gts = [rng.uniform(1, 5, (12, 16)), rng.uniform(1, 5, (16, 12))]
    ests = [0.3 * g for g in gts]
    assert depth_abs_rel(ests, gts, "median") == pytest.approx(0.0, abs=1e-12)
    assert depth_abs_rel(ests, gts, "lsq") == pytest.approx(0.0, abs=1e-12)
    assert depth_abs_rel(ests, gts, None) == pytest.approx(0.7)
    mixed = [0.3 * gts[0], 0.6 * gts[1]]  # scale drift between images: only per-image fitting hides it
    assert depth_abs_rel(mixed, gts, "median", per_image=True) == pytest.approx(0.0, abs=1e-12)
    assert depth_abs_rel(mixed, gts, "median") > 0.2
    bad = [g.copy() for g in gts]
    bad[0][0, 0] = np.nan  # invalid ground-truth pixels are skipped
    assert depth_abs_rel(ests, bad) == pytest.approx(0.0, abs=1e-12)


def test_clear_errors() -> None:
    gt = random_poses(3)
    with pytest.raises(InputError, match="cameras"):
        ate(gt[:2], gt)
    with pytest.raises(InputError, match="est_cam2w"):
        camera_metrics(np.zeros((3, 4)), gt)
    with pytest.raises(ConfigError, match="align"):
        ate(gt, gt, align="affine")
    with pytest.raises(InputError, match="depth map 0"):
        depth_abs_rel([np.ones((2, 3))], [np.ones((3, 2))])
    with pytest.raises(ConfigError, match="scale"):
        depth_abs_rel([np.ones((2, 2))], [np.ones((2, 2))], scale="mean")
    with pytest.raises(InputError, match="src"):
        umeyama_sim3(np.zeros((4, 3)), np.zeros((5, 3)))
