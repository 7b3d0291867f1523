"""Tests of sparsega.sim: analytic ray-casting truth, layouts, and the prediction simulator's properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sparsega.errors import ConfigError, InputError
from sparsega.sim import (
    Geometry,
    SimConfig,
    SyntheticScene,
    base_focal,
    look_at,
    make_scene,
    render_scene,
    simulate_predictions,
)

EXACT = SimConfig(noise_scale=0.0, outlier_rate=0.0, match_keep=1.0)


def all_pairs(n: int) -> np.ndarray:
    return np.array(list(itertools.combinations(range(n), 2)))


def geometry(
    spheres: list[list[float]] = (), boxes: list[list[float]] = (), lo=(-10, -10, -10), hi=(10, 10, 10)
) -> Geometry:
    sph = np.asarray(spheres, np.float64).reshape(-1, 4)
    bxs = np.asarray(boxes, np.float64).reshape(-1, 7)
    colors = np.full((6 + len(sph) + len(bxs), 3), 0.5)
    return Geometry(
        room_lo=np.asarray(lo, float),
        room_hi=np.asarray(hi, float),
        spheres=sph,
        boxes=bxs,
        colors=colors,
        waves=np.zeros((3, 4)),
    )


def intrinsics(f: float, h: int, w: int) -> np.ndarray:
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


@pytest.fixture(scope="module")
def orbit() -> SyntheticScene:
    return make_scene("orbit", n_views=6, height=96, width=128, seed=3, portrait_every=3)


# ---------------------------------------------------------------------------------------------------------------
# ground truth


def test_depth_of_a_facing_plane_is_exact() -> None:
    """A camera facing the room's +x wall at distance 2.5: every pixel's z-depth is 2.5."""
    geom = geometry(lo=(-1, -100, -100), hi=(2, 100, 100))
    eye = np.array([-0.5, 0.0, 0.0])
    cam = look_at(eye, eye + [1.0, 0.0, 0.0], roll=0.3)
    scene = render_scene(geom, cam[None], intrinsics(100.0, 48, 64)[None], [(48, 64)])
    np.testing.assert_allclose(scene.depthmaps[0], 2.5, rtol=1e-7)
    np.testing.assert_allclose(scene.points(0)[..., 0], 2.0, atol=1e-6)  # on the wall x = 2


def test_sphere_and_box_hits_are_analytic() -> None:
    geom = geometry(spheres=[[0.0, 0.0, 5.0, 1.0]], boxes=[[2.0, 0.5, 6.0, 0.5, 0.7, 0.4, 0.6]])
    cam = np.eye(4)  # OpenCV camera at the origin looking along +z
    h, w, f = 96, 128, 110.0
    scene = render_scene(geom, cam[None], intrinsics(f, h, w)[None], [(h, w)])
    depth = scene.depthmaps[0]
    assert depth[h // 2, w // 2] == pytest.approx(4.0, rel=1e-7)  # pixel (W/2, H/2) looks down the axis
    # every pixel: the ray hits the sphere iff the quadratic has a root; compare its depth in closed form
    ys, xs = np.mgrid[0:h, 0:w]
    d = np.stack([(xs - w / 2) / f, (ys - h / 2) / f, np.ones((h, w))], axis=-1)
    a, b, c = (d * d).sum(-1), -2 * 5.0 * d[..., 2], 25.0 - 1.0
    disc = b * b - 4 * a * c
    hit = disc > 0
    t = (-b - np.sqrt(np.where(hit, disc, 0))) / (2 * a)
    assert hit.sum() > 500
    sphere_px = hit & (np.abs(depth - t) < 1e-4)
    assert sphere_px.sum() == hit.sum() - ((scene.points(0)[..., 0] > 1.0) & hit).sum()  # only the box may occlude
    np.testing.assert_allclose(depth[sphere_px], t[sphere_px], rtol=1e-6)
    # box pixels lie on the box surface: max over axes of |local| / half == 1
    pts = scene.points(0)
    on_box = (pts[..., 0] > 1.4) & (depth < 9.0)
    assert on_box.sum() > 100
    q = pts[on_box] - [2.0, 0.5, 6.0]
    cs, sn = math.cos(0.6), math.sin(0.6)
    local = np.stack([q[:, 0] * cs + q[:, 1] * sn, -q[:, 0] * sn + q[:, 1] * cs, q[:, 2]], axis=1)
    np.testing.assert_allclose(np.max(np.abs(local) / [0.5, 0.7, 0.4], axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["orbit", "walk", "hemisphere", "loop"])
def test_layouts_render_every_pixel(kind: str) -> None:
    scene = make_scene(kind, n_views=5, height=48, width=64, seed=1, portrait_every=2)
    assert scene.cam2w.shape == (5, 4, 4) and scene.intrinsics.shape == (5, 3, 3)
    assert scene.cam2w.dtype == np.float64
    for i, (depth, img) in enumerate(zip(scene.depthmaps, scene.images)):
        shape = (64, 48) if i % 2 == 1 else (48, 64)
        assert depth.shape == shape and depth.dtype == np.float32
        assert img.shape == (*shape, 3) and img.dtype == np.uint8
        assert np.isfinite(depth).all() and depth.min() > 0.1
        assert img.std() > 10  # textured, not flat
        k = scene.intrinsics[i]
        assert k[0, 2] == shape[1] / 2 and k[1, 2] == shape[0] / 2 and k[0, 0] == k[1, 1]
        assert 0.8 * base_focal(48, 64) <= k[0, 0] <= 1.2 * base_focal(48, 64)
        rot = scene.cam2w[i, :3, :3]
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0)
    assert scene.extent > 0 and scene.kind == kind
    assert len(set(np.round(scene.focals, 6))) == 5  # varied focals


def test_walk_moves_forward_and_orbit_looks_inward() -> None:
    walk = make_scene("walk", n_views=6, height=48, width=64, seed=2)
    c = walk.cam2w[:, :3, 3]
    assert (np.diff(c[:, 0]) > 0).all()
    assert (walk.cam2w[:, 0, 2] > 0.9).all()  # optical axes point along +x
    orbit = make_scene("orbit", n_views=6, height=48, width=64, seed=2)
    to_centre = -orbit.cam2w[:, :2, 3] / np.linalg.norm(orbit.cam2w[:, :2, 3], axis=1, keepdims=True)
    axis_xy = orbit.cam2w[:, :2, 2] / np.linalg.norm(orbit.cam2w[:, :2, 2], axis=1, keepdims=True)
    assert ((axis_xy * to_centre).sum(1) > 0.95).all()


def test_loop_returns_to_its_start_and_covisibility_sees_it() -> None:
    """The loop walk ends where it began: its last view overlaps its first as much as a close neighbour does,
    while the view half way round shares nothing with it."""
    n = 24
    loop = make_scene("loop", n_views=n, height=48, width=64, seed=3)
    c = loop.cam2w[:, :3, 3]
    steps = np.linalg.norm(np.diff(c, axis=0), axis=1)
    assert np.linalg.norm(c[0] - c[-1]) < 1.5 * np.median(steps)
    assert np.linalg.norm(c[0] - c[n // 2]) > 5 * np.median(steps)  # the diameter: n / pi steps
    cov = loop.covisibility(step=4)
    assert cov.shape == (n, n) and (np.diag(cov) == 1).all() and (cov >= 0).all() and (cov <= 1).all()
    assert cov[0, -1] > 0.4 and cov[1, 0] > 0.4  # seen by the view behind
    assert cov[-1, 0] > 0.2 and cov[0, 1] > 0.2  # seen by the view ahead
    assert cov[0, n // 2] == 0 and cov[n // 2, 0] == 0
    with pytest.raises(ConfigError, match="loop_radius"):
        make_scene("loop", n_views=4, height=48, width=64, loop_radius=2.0)


def test_scene_is_deterministic_by_seed() -> None:
    a = make_scene("hemisphere", n_views=3, height=32, width=48, seed=7)
    b = make_scene("hemisphere", n_views=3, height=32, width=48, seed=7)
    c = make_scene("hemisphere", n_views=3, height=32, width=48, seed=8)
    np.testing.assert_array_equal(a.cam2w, b.cam2w)
    for x, y in zip(a.images + a.depthmaps, b.images + b.depthmaps):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.cam2w, c.cam2w)


def test_views_agree_on_shared_points(orbit: SyntheticScene) -> None:
    """A world point seen by view 0, projected into view 1 where visible, lands on a pixel whose world point is
    the same (up to the pixel footprint)."""
    pts0 = orbit.points(0)[::4, ::4].reshape(-1, 3)
    uv, z = orbit.project(1, pts0)
    h, w = orbit.depthmaps[1].shape
    ui, vi = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    inside = (z > 0) & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    ui, vi = ui[inside], vi[inside]
    visible = np.abs(orbit.depthmaps[1][vi, ui] - z[inside]) < 0.01 * z[inside]
    assert visible.sum() > 50
    gap = np.linalg.norm(orbit.points(1)[vi, ui][visible] - pts0[inside][visible], axis=1)
    footprint = 2.0 * z[inside][visible] / orbit.focals[1]
    assert np.median(gap / footprint) < 0.5


def test_bad_specs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="height"):
        make_scene(height=100)
    with pytest.raises(ConfigError, match="kind"):
        make_scene("spiral")
    with pytest.raises(ConfigError, match="colour"):
        make_scene(colour=3)
    with pytest.raises(ConfigError, match="outlier_rate"):
        SimConfig(outlier_rate=1.0)


# ---------------------------------------------------------------------------------------------------------------
# simulator


def test_predictions_are_valid_and_shaped(orbit: SyntheticScene) -> None:
    preds = simulate_predictions(orbit, all_pairs(6))
    assert len(preds) == 15
    for p in preds:
        p.validate()
        assert p.pts11.shape == (*orbit.shapes[p.i], 3) and p.pts21.shape == (*orbit.shapes[p.j], 3)
        for arr in (p.pts11, p.pts21, p.pts22, p.pts12, p.conf11, p.conf21, p.conf22, p.conf12, p.match_conf):
            assert arr.dtype == np.float32 and np.isfinite(arr).all()
        for c in (p.conf11, p.conf21, p.conf22, p.conf12):
            assert c.min() >= 1.0
        assert p.xy1.dtype == np.int64 and p.match_conf.min() >= 1.0
        assert p.score[2] == p.n_matches and p.score[1] == pytest.approx(float(p.match_conf.sum()), rel=1e-5)
        key = p.xy1[:, 1] * p.shape1[1] + p.xy1[:, 0]
        assert (np.diff(key) >= 0).all()  # sorted by pixel index in i, like the reference


def test_symmetrised_pairs_give_one_prediction_each(orbit: SyntheticScene) -> None:
    pairs = np.array([[1, 0], [0, 1], [2, 1], [1, 2]])
    preds = simulate_predictions(orbit, pairs, EXACT)
    assert [(p.i, p.j) for p in preds] == [(1, 0), (2, 1)]
    with pytest.raises(InputError, match="out of range"):
        simulate_predictions(orbit, np.array([[0, 6]]))
    with pytest.raises(InputError, match="pairs"):
        simulate_predictions(orbit, np.array([0, 1, 2]))


def test_noise_free_pointmaps_equal_scaled_truth(orbit: SyntheticScene) -> None:
    for p in simulate_predictions(orbit, np.array([[0, 2], [4, 3]]), EXACT):
        i, j = p.i, p.j
        s_ij = float(np.median(p.pts11[..., 2] / orbit.depthmaps[i]))
        s_ji = float(np.median(p.pts22[..., 2] / orbit.depthmaps[j]))
        assert 0.5 <= s_ij <= 2.0 and 0.5 <= s_ji <= 2.0 and s_ij != s_ji
        j_in_i = np.linalg.inv(orbit.cam2w[i]) @ orbit.cam2w[j]
        truth21 = orbit.points_cam(j) @ j_in_i[:3, :3].T + j_in_i[:3, 3]
        truth12 = orbit.points_cam(i) @ np.linalg.inv(j_in_i)[:3, :3].T + np.linalg.inv(j_in_i)[:3, 3]
        scale = np.abs(truth21).max()
        np.testing.assert_allclose(p.pts11, s_ij * orbit.points_cam(i), atol=2e-6 * scale * s_ij)
        np.testing.assert_allclose(p.pts21, s_ij * truth21, atol=2e-6 * scale * s_ij)
        np.testing.assert_allclose(p.pts22, s_ji * orbit.points_cam(j), atol=2e-6 * scale * s_ji)
        np.testing.assert_allclose(p.pts12, s_ji * truth12, atol=2e-6 * scale * s_ji)


def reprojection_errors(scene: SyntheticScene, p) -> np.ndarray:
    """Per match, the smaller of the two one-way errors (inf-norm, px): the seed's true point projected into the
    other image versus the matched pixel there."""
    wi = scene.points(p.i)[p.xy1[:, 1], p.xy1[:, 0]]
    wj = scene.points(p.j)[p.xy2[:, 1], p.xy2[:, 0]]
    e12 = np.abs(scene.project(p.j, wi)[0] - p.xy2).max(axis=1)
    e21 = np.abs(scene.project(p.i, wj)[0] - p.xy1).max(axis=1)
    return np.minimum(e12, e21)


def test_noise_free_matches_reproject_exactly(orbit: SyntheticScene) -> None:
    preds = simulate_predictions(orbit, all_pairs(6), EXACT)
    total = 0
    for p in preds:
        if p.n_matches == 0 or p.match_conf.max() <= 5:
            continue
        err = reprojection_errors(orbit, p)
        assert err.max() <= 0.5 + 1e-4
        seeded_i = (p.xy1 % 8 == 4).all(axis=1)
        seeded_j = (p.xy2 % 8 == 4).all(axis=1)
        assert (seeded_i | seeded_j).all()  # every match starts from an 8-px grid seed
        total += p.n_matches
    assert total > 1000


def test_outlier_fraction_matches_request(orbit: SyntheticScene) -> None:
    sim = SimConfig(noise_scale=0.0, outlier_rate=0.3)
    preds = simulate_predictions(orbit, all_pairs(6), sim)
    errs = np.concatenate([reprojection_errors(orbit, p) for p in preds if p.match_conf.max() > 5])
    frac = float((errs > 1.0).mean())
    assert frac == pytest.approx(0.3, abs=0.03)
    good = [p for p in preds if p.match_conf.max() > 5]
    conf = np.concatenate([p.match_conf for p in good])
    bad = np.concatenate([reprojection_errors(orbit, p) > 1.0 for p in good])
    assert np.median(conf[bad]) < np.median(conf[~bad])  # outliers are less confident


def test_match_pixel_noise_is_about_one_pixel(orbit: SyntheticScene) -> None:
    preds = simulate_predictions(orbit, all_pairs(6), SimConfig(outlier_rate=0.0))
    errs = np.concatenate([reprojection_errors(orbit, p) for p in preds if p.match_conf.max() > 5])
    assert 0.3 < np.median(errs) < 1.5 and np.quantile(errs, 0.99) < 4.0


def test_confidence_drops_where_error_grows(orbit: SyntheticScene) -> None:
    p = simulate_predictions(orbit, np.array([[0, 1]]), SimConfig(noise_scale=3.0))[0]
    truth = orbit.points_cam(0)
    s = float(np.median(p.pts11[..., 2] / truth[..., 2]))
    err = np.linalg.norm(p.pts11 / s - truth, axis=-1) / np.linalg.norm(truth, axis=-1)
    rank = lambda x: np.argsort(np.argsort(x.ravel()))  # noqa: E731
    rho = np.corrcoef(rank(err), rank(p.conf11))[0, 1]
    assert rho < -0.5
    assert 0.5 * 0.025 * 3 < np.quantile(err, 0.9) < 0.2  # a few percent of distortion, scaled by 3


def test_non_overlapping_pair_gets_only_poor_matches() -> None:
    base = make_scene("orbit", n_views=8, height=48, width=64, seed=4)
    away = base.cam2w[0].copy()
    turn = np.array([[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]])  # 180 degrees about the world z axis
    away[:3, :3] = turn @ away[:3, :3]
    cams = np.stack([base.cam2w[0], away, base.cam2w[1]])
    scene = render_scene(base.geometry, cams, base.intrinsics[[0, 0, 1]], [base.shapes[0]] * 3)
    for sim in (SimConfig(), SimConfig(noise_scale=10.0, outlier_rate=0.5)):
        preds = simulate_predictions(scene, np.array([[0, 1], [0, 2]]), sim)
        blind, good = preds
        assert 3 <= blind.n_matches <= 10 and blind.match_conf.max() <= 5.0
        blind.validate()
        assert good.match_conf.max() > 5.0 and good.n_matches > 15


def test_simulation_is_deterministic_and_per_pair(orbit: SyntheticScene) -> None:
    a = simulate_predictions(orbit, np.array([[0, 1], [2, 3]]), seed=5)
    b = simulate_predictions(orbit, np.array([[2, 3]]), seed=5)
    c = simulate_predictions(orbit, np.array([[2, 3]]), seed=6)
    for name in ("pts11", "conf21", "pts12", "xy1", "xy2", "match_conf"):
        np.testing.assert_array_equal(getattr(a[1], name), getattr(b[0], name))
    assert not np.array_equal(a[1].pts11, c[0].pts11)


def test_heavy_corruption_stays_valid(orbit: SyntheticScene) -> None:
    for p in simulate_predictions(orbit, all_pairs(6)[:5], SimConfig(noise_scale=10.0, outlier_rate=0.5)):
        p.validate()
        assert np.isfinite(p.pts11).all() and p.conf21.min() >= 1.0


def test_lazy_predictions_equal_eager():
    from sparsega import sim as syn

    sc = syn.make_scene("walk", 6, 96, 128, seed=2)
    pairs = [[0, 1], [1, 2], [2, 0], [3, 5], [1, 0]]
    eager = syn.simulate_predictions(sc, pairs, seed=3)
    lazy = syn.LazyPredictions(sc, pairs, seed=3)
    assert len(lazy) == len(eager) == 4
    for k, p in enumerate(eager):
        q = lazy[k]
        assert (p.i, p.j) == (q.i, q.j)
        for f in ("pts11", "pts21", "pts22", "pts12", "conf11", "conf22", "xy1", "xy2", "match_conf"):
            assert np.array_equal(getattr(p, f), getattr(q, f)), f
