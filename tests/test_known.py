"""Known cameras (issue 5): intrinsics and poses as inputs; the user's frame and metric scale from them."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sparsega import InputError, align, metrics, sim
from sparsega.alignment.known import similarity_from_cameras
from sparsega.frontend.pairs import make_pairs, unique_pairs

N = 12


@functools.cache
def _case():
    sc = sim.make_scene("orbit", n_views=N, height=96, width=128, seed=1)
    preds = sim.simulate_predictions(sc, unique_pairs(make_pairs(N, "swin-3")), seed=1)
    return sc, preds


@functools.cache
def _free():
    sc, preds = _case()
    return align(preds, progress=False)


def _m(scene, sc):
    return metrics.camera_metrics(scene.cam2w.astype(np.float64), sc.cam2w, scene.focals, sc.focals, sc.extent)


def _rot_err_deg(a, b):
    c = (np.trace(a.T @ b) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


def test_true_intrinsics_fixed():
    sc, preds = _case()
    scene = align(preds, progress=False, known_intrinsics=sc.intrinsics)
    np.testing.assert_allclose(scene.focals, sc.focals, rtol=1e-6)
    np.testing.assert_allclose(scene.principal_points, sc.intrinsics[:, :2, 2], atol=1e-4)
    fixed, free = _m(scene, sc), _m(_free(), sc)
    assert fixed["rot_err_med"] <= free["rot_err_med"] + 0.05
    assert fixed["ate_rel"] <= free["ate_rel"] + 0.002


def test_intrinsics_as_initial_values_only():
    sc, preds = _case()
    K = sc.intrinsics.copy()
    K[:, 0, 0] *= 1.1
    K[:, 1, 1] *= 1.1
    scene = align(preds, progress=False, known_intrinsics=K, fix_intrinsics=False)
    assert not np.allclose(scene.focals, K[:, 0, 0])  # they moved ...
    assert np.median(np.abs(scene.focals / sc.focals - 1)) < 0.05  # ... towards the truth


def test_all_true_poses_fixed():
    sc, preds = _case()
    scene = align(preds, progress=False, known_poses=sc.cam2w)
    assert np.array_equal(scene.cam2w, sc.cam2w.astype(np.float32))
    absrel = metrics.depth_abs_rel(scene.depthmaps, sc.depthmaps, scale=None)  # metric: no rescaling at all
    free = metrics.depth_abs_rel(_free().depthmaps, sc.depthmaps)  # even with the best scale for the free run
    assert absrel < free


def test_three_of_twelve_known_gives_frame_and_scale():
    sc, preds = _case()
    known = {0: sc.cam2w[0], 4: sc.cam2w[4], 8: sc.cam2w[8]}
    scene = align(preds, progress=False, known_poses=known)
    for k, pose in known.items():
        assert np.array_equal(scene.cam2w[k], pose.astype(np.float32))
    others = [k for k in range(N) if k not in known]
    dc = np.linalg.norm(scene.cam2w[others, :3, 3] - sc.cam2w[others, :3, 3], axis=1)
    assert dc.max() <= 0.02 * sc.extent  # no similarity alignment
    assert max(_rot_err_deg(scene.cam2w[k, :3, :3].astype(np.float64), sc.cam2w[k, :3, :3]) for k in others) <= 2.0
    assert scene.info["world_scale"] > 0


def test_soft_pose_priors():
    sc, preds = _case()
    known = {0: sc.cam2w[0], 4: sc.cam2w[4], 8: sc.cam2w[8]}
    scene = align(preds, progress=False, known_poses=known, fix_poses=False)
    dc = np.linalg.norm(scene.cam2w[:, :3, 3] - sc.cam2w[:, :3, 3], axis=1)
    assert dc.max() <= 0.03 * sc.extent
    assert not np.array_equal(scene.cam2w[0], sc.cam2w[0].astype(np.float32))  # a prior, not a constraint


def test_similarity_from_cameras_exact():
    rng = np.random.default_rng(0)
    from scipy.spatial.transform import Rotation

    R = Rotation.random(4, random_state=1).as_matrix()
    C = rng.normal(size=(4, 3))
    Q = Rotation.random(random_state=2).as_matrix()
    s, t = 2.5, np.array([1.0, -2.0, 3.0])
    s2, Q2, t2 = similarity_from_cameras(R, C, Q @ R, s * C @ Q.T + t)
    assert s2 == pytest.approx(s) and np.allclose(Q2, Q) and np.allclose(t2, t)


@pytest.mark.parametrize(
    "kw,word",
    [
        ({"known_poses": {0: np.full((4, 4), np.nan)}}, "NaN"),
        ({"known_poses": {0: np.diag([1.0, 1.0, 2.0, 1.0])}}, "orthonormal"),
        ({"known_poses": {0: np.diag([1.0, 1.0, -1.0, 1.0])}}, "det"),
        ({"known_poses": np.tile(np.eye(4), (3, 1, 1))}, "3 given for 12"),
        ({"known_poses": {99: np.eye(4)}}, "out of range"),
        ({"known_poses": {"a.jpg": np.eye(4)}}, "not an image index"),
        ({"known_intrinsics": {0: np.eye(3) * -1}}, "focal"),
        ({"known_intrinsics": {0: np.ones((2, 2))}}, "shape"),
        ({"known_poses": {0: np.eye(4), 1: np.eye(4)}}, "baseline"),
    ],
)
def test_bad_priors_are_clear_errors(kw, word):
    _, preds = _case()
    with pytest.raises(InputError, match=word):
        align(preds, progress=False, niter1=5, niter2=0, **kw)
