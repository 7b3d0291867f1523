"""Canonical views, focal estimation and anchor offsets against the reference goldens (blocks/canonical.npz)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsega import ConfigError, InputError
from sparsega.alignment.canonical import (
    anchor_columns,
    anchor_depth_offsets,
    anchor_grid,
    canonical_view,
    core_depth,
    dense_anchor_depth_offsets,
    estimate_focal,
    focal_base,
)

from conftest import load_golden

G = load_golden("blocks/canonical.npz")
CASES = ["c3", "c1"]
MODES = [("avg-angle", "avgangle"), ("avg-reldepth", "avgreldepth")]
S = int(G["subsample"])


def _t(name: str, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(G[name]).to(device=device, dtype=dtype)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def _close_per_array(ours: np.ndarray, ref: np.ndarray, rel: float) -> None:
    """max|ours - ref| <= rel * max|ref| (element-wise relative error is meaningless near zero)."""
    err = np.abs(ours - ref).max()
    assert err <= rel * np.abs(ref).max(), f"max error {err:.3g} vs scale {np.abs(ref).max():.3g}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode,tag", MODES)
def test_canonical_view_matches_golden(case, mode, tag, dtype, device):
    canon, canon2, confs = canonical_view(
        _t(f"{case}_ptmaps11", dtype, device), _t(f"{case}_confs11", dtype, device), S, mode
    )
    assert canon.dtype == canon2.dtype == confs.dtype == dtype
    assert canon.device.type == device
    ref_canon = G[f"{case}_{tag}_canon"]
    assert canon.shape == ref_canon.shape and canon2.shape == ref_canon.shape[:2] == confs.shape
    _close_per_array(_np(canon), ref_canon, 1e-6)
    np.testing.assert_allclose(_np(confs), G[f"{case}_{tag}_confs"], rtol=1e-6)
    np.testing.assert_allclose(_np(canon2), G[f"{case}_{tag}_canon2"], rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode,tag", MODES)
def test_fp64_agrees_with_fp32(case, mode, tag):
    out32 = canonical_view(_t(f"{case}_ptmaps11", torch.float32), _t(f"{case}_confs11", torch.float32), S, mode)
    out64 = canonical_view(_t(f"{case}_ptmaps11", torch.float64), _t(f"{case}_confs11", torch.float64), S, mode)
    for a, b in zip(out32, out64):
        _close_per_array(_np(a), _np(b), 1e-6)
    f32, f64 = estimate_focal(out32[0]), estimate_focal(out64[0])
    assert f32.dtype == torch.float32 and f64.dtype == torch.float64
    assert float(f32) == pytest.approx(float(f64), rel=2e-6)


def test_anchors_are_exactly_one_in_avg_angle():
    _, canon2, _ = canonical_view(_t("c3_ptmaps11", torch.float32), _t("c3_confs11", torch.float32), S)
    assert torch.all(canon2[S // 2 :: S, S // 2 :: S] == 1)


@pytest.mark.parametrize("case", CASES)
def test_focal_matches_golden(case, dtype, device):
    focal = estimate_focal(_t(f"{case}_avgangle_canon", dtype, device))
    assert focal.shape == () and focal.dtype == dtype
    assert float(focal) == pytest.approx(float(G[f"{case}_focal"][0]), rel=2e-6)
    # the whole chain: our canonical view, then the focal
    canon, _, _ = canonical_view(_t(f"{case}_ptmaps11", dtype, device), _t(f"{case}_confs11", dtype, device), S)
    assert float(estimate_focal(canon)) == pytest.approx(float(G[f"{case}_focal"][0]), rel=2e-6)


@pytest.mark.parametrize("which", ["clip_hi", "clip_lo", "inrange"])
def test_focal_bounds_match_golden(which, dtype):
    pts = _t(f"focal_{which}_pts3d", dtype)
    focal = float(estimate_focal(pts))
    assert focal == pytest.approx(float(G[f"focal_{which}_focal"][0]), rel=2e-6)
    H, W = pts.shape[:2]
    if which == "clip_hi":
        assert focal == pytest.approx(3.5 * focal_base(H, W), rel=1e-6)
    elif which == "clip_lo":
        assert focal == pytest.approx(0.5 * focal_base(H, W), rel=1e-6)


def _pinhole(H: int, W: int, f: float, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    """Exact pinhole pointmap with pp (W/2, H/2) and a smooth random depth."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dtype), torch.arange(W, dtype=dtype), indexing="ij")
    z = 2 + 0.5 * torch.rand(H, W, generator=gen, dtype=dtype)
    return torch.stack(((xs - W / 2) * z / f, (ys - H / 2) * z / f, z), dim=-1)


def test_focal_recovers_exact_pinhole_and_ignores_bad_points():
    pts = _pinhole(48, 64, 70.0)
    assert float(estimate_focal(pts)) == pytest.approx(70.0, rel=1e-9)
    bad = pts.clone()
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(48, 64, generator=gen) < 0.2
    bad[mask] = float("nan")
    bad[5, 7, 2] = -3.0  # negative depth
    bad[9, 9, 0] = float("inf")
    bad[11, 3, 2] = 0.0  # zero depth
    focal = estimate_focal(bad)
    assert torch.isfinite(focal)
    assert float(focal) == pytest.approx(70.0, rel=1e-9)


def test_focal_batch_and_principal_point():
    a, b = _pinhole(32, 48, 50.0, seed=1), _pinhole(32, 48, 60.0, seed=2)
    focals = estimate_focal(torch.stack((a, b)))
    assert focals.shape == (2,)
    np.testing.assert_allclose(_np(focals), [50.0, 60.0], rtol=1e-9)
    # a principal point that is not the centre: shift the pixel grid, pass pp explicitly
    H, W, f, pp = 32, 48, 55.0, (20.0, 13.0)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    z = torch.full((H, W), 3.0, dtype=torch.float64)
    pts = torch.stack(((xs - pp[0]) * z / f, (ys - pp[1]) * z / f, z), dim=-1)
    assert float(estimate_focal(pts, pp=pp)) == pytest.approx(f, rel=1e-9)


def test_focal_errors():
    with pytest.raises(InputError, match="no point"):
        estimate_focal(torch.full((16, 16, 3), float("nan")))
    with pytest.raises(InputError, match="pts3d"):
        estimate_focal(torch.zeros(16, 16, 2))


@pytest.mark.parametrize("mode,tag", MODES)
def test_scale_and_order_invariance(mode, tag, dtype):
    X, C = _t("c3_ptmaps11", dtype), _t("c3_confs11", dtype)
    canon, canon2, confs = canonical_view(X, C, S, mode)
    scale = 3.7
    s_canon, s_canon2, s_confs = canonical_view(X * scale, C, S, mode)
    rel = 1e-6 if dtype == torch.float32 else 1e-12
    _close_per_array(_np(s_canon), _np(canon) * scale, rel)
    np.testing.assert_allclose(_np(s_canon2), _np(canon2), rtol=10 * rel)
    np.testing.assert_array_equal(_np(s_confs), _np(confs))
    assert float(estimate_focal(s_canon)) == pytest.approx(float(estimate_focal(canon)), rel=10 * rel)
    _, off, _ = dense_anchor_depth_offsets(canon2, S)
    _, s_off, _ = dense_anchor_depth_offsets(s_canon2, S)
    np.testing.assert_allclose(_np(s_off), _np(off), rtol=10 * rel)
    # the predictions are an unordered set
    perm = torch.tensor([2, 0, 1])
    for a, b, tol in zip(canonical_view(X[perm], C[perm], S, mode), (canon, canon2, confs), (rel, 10 * rel, rel)):
        _close_per_array(_np(a), _np(b), tol)


def test_identical_predictions_give_back_the_pointmap():
    pts = _pinhole(32, 48, 40.0)
    X = pts.expand(3, -1, -1, -1)
    C = 1 + torch.rand(3, 32, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    canon, canon2, _ = canonical_view(X, C, S, "avg-reldepth")
    torch.testing.assert_close(canon, pts, rtol=1e-12, atol=1e-12)
    z = pts[..., 2]
    anchor_z = z[S // 2 :: S, S // 2 :: S].repeat_interleave(S, 0).repeat_interleave(S, 1)
    torch.testing.assert_close(canon2, z / anchor_z, rtol=1e-12, atol=1e-12)
    # avg-angle on identical predictions: the mean angle is the angle itself, so the depth step is exact
    _, canon2_angle, _ = canonical_view(X, C, S, "avg-angle")
    torch.testing.assert_close(canon2_angle, z / anchor_z, rtol=1e-9, atol=1e-9)


def test_leading_batch_dimensions():
    X, C = _t("c3_ptmaps11", torch.float64), _t("c3_confs11", torch.float64)
    single = canonical_view(X, C, S)
    both = canonical_view(torch.stack((X, 2 * X)), torch.stack((C, C)), S)
    for a, b in zip(both, single):
        torch.testing.assert_close(a[0], b)
    torch.testing.assert_close(both[0][1], 2 * single[0])


def test_canonical_view_errors():
    X, C = _t("c3_ptmaps11", torch.float32), _t("c3_confs11", torch.float32)
    with pytest.raises(InputError, match="multiple of subsample"):
        canonical_view(X[:, :44], C[:, :44], S)
    with pytest.raises(ConfigError, match="avg-median"):
        canonical_view(X, C, S, "avg-median")
    with pytest.raises(InputError, match="does not match"):
        canonical_view(X, C[:2], S)
    with pytest.raises(InputError, match="non-finite"):
        bad = X.clone()
        bad[0, 1, 2, 0] = float("nan")
        canonical_view(bad, C, S)
    with pytest.raises(InputError, match="confidences"):
        canonical_view(X, C - 1, S)
    with pytest.raises(ConfigError, match="subsample"):
        canonical_view(X, C, 0)


@pytest.mark.parametrize("case", CASES)
def test_anchor_offsets_match_golden(case, dtype, device):
    canon2 = _t(f"{case}_avgangle_canon2", dtype, device)
    for which in ["A", "B"]:
        pixels = torch.from_numpy(G[f"{case}_anchor_pixels_{which}"]).to(device)
        idx, off = anchor_depth_offsets(canon2, pixels, S)
        assert idx.dtype == torch.int64 and off.dtype == dtype
        np.testing.assert_array_equal(idx.cpu().numpy(), G[f"{case}_anchor_core_idxs_{which}"])
        np.testing.assert_allclose(_np(off), G[f"{case}_anchor_offsets_{which}"], rtol=1e-6)
        # float pixels are truncated like the reference
        idx_f, off_f = anchor_depth_offsets(canon2, pixels.to(dtype) + 0.25, S)
        assert torch.equal(idx_f, idx) and torch.equal(off_f, off)
    pixels, idx, off = dense_anchor_depth_offsets(canon2, S)
    H, W = canon2.shape
    assert pixels.shape == (H * W, 2)
    assert torch.equal(pixels[:3].cpu(), torch.tensor([[0, 0], [1, 0], [2, 0]]))  # x fastest
    np.testing.assert_array_equal(idx.cpu().numpy(), G[f"{case}_anchor_core_idxs_dense"])
    np.testing.assert_allclose(_np(off), G[f"{case}_anchor_offsets_dense"], rtol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_anchor_grid_and_core_depth(case):
    canon = _t(f"{case}_avgangle_canon", torch.float32)
    H, W = canon.shape[:2]
    np.testing.assert_array_equal(_np(core_depth(canon, S)), G[f"{case}_core_depth"])
    grid = anchor_grid(H, W, S)
    assert grid.dtype == torch.int64 and grid.shape == (G[f"{case}_core_depth"].size, 2)
    assert torch.all(grid % S == S // 2)
    idx, off = anchor_depth_offsets(_t(f"{case}_avgangle_canon2", torch.float32), grid, S)
    assert torch.equal(idx, torch.arange(len(grid)))
    assert torch.all(off == 1)
    # anchor k sits at the centre of block k; the pixels are x fastest
    assert torch.equal(grid[1] - grid[0], torch.tensor([S, 0]))
    assert anchor_columns(W, S) == W // S


def test_anchor_offsets_border_blocks_and_errors():
    depth = 1 + torch.rand(16, 46, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    # W = 46: the last partial block (x 40..45) has an anchor at x = 44
    assert anchor_columns(46, 8) == 6 == len(range(4, 46, 8))
    idx, off = anchor_depth_offsets(depth, torch.tensor([[45, 15], [44, 4]]), 8)
    assert idx.tolist() == [11, 5]
    assert float(off[1]) == 1.0
    assert float(off[0]) == pytest.approx(float(depth[15, 45] / depth[12, 44]))
    # W = 44: the last partial block (x 40..43) has none
    with pytest.raises(InputError, match="no anchor"):
        anchor_depth_offsets(depth[:, :44], torch.tensor([[43, 0]]), 8)
    with pytest.raises(InputError, match="outside"):
        anchor_depth_offsets(depth, torch.tensor([[46, 0]]), 8)
    with pytest.raises(InputError, match="outside"):
        anchor_depth_offsets(depth, torch.tensor([[-1, 0]]), 8)
    bad = depth.clone()
    bad[4, 12] = -1.0
    with pytest.raises(InputError, match="> 0 at the anchors"):
        anchor_depth_offsets(bad, torch.tensor([[0, 0]]), 8)
    with pytest.raises(InputError, match="pixels"):
        anchor_depth_offsets(depth, torch.zeros(3, 3, dtype=torch.int64), 8)
    empty_idx, empty_off = anchor_depth_offsets(depth, torch.zeros(0, 2, dtype=torch.int64), 8)
    assert empty_idx.shape == empty_off.shape == (0,)


def test_focal_base_is_60_degree_fov():
    assert focal_base(48, 64) == pytest.approx(64 / (2 * math.tan(math.radians(30))))


# ------------------------------------------------------------------ the compiled kernel (alignment.kernels.canonical)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode,tag", MODES)
def test_compiled_canonical_view_matches_golden_and_twin(case, mode, tag):
    """The numba fusion on float32 input against the reference golden and the float64 torch twin (the kernel
    computes in float64 and rounds once, so it is closer to the float64 twin than float32 allows)."""
    from sparsega.alignment.kernels import canonical as fast

    X, C = G[f"{case}_ptmaps11"].astype(np.float32), G[f"{case}_confs11"].astype(np.float32)
    canon, canon2, confs = fast.fuse_view(X, C, S, mode)
    assert canon.dtype == canon2.dtype == confs.dtype == np.float32
    _close_per_array(canon.astype(np.float64), G[f"{case}_{tag}_canon"], 1e-6)
    np.testing.assert_allclose(confs, G[f"{case}_{tag}_confs"], rtol=1e-6)
    np.testing.assert_allclose(canon2, G[f"{case}_{tag}_canon2"], rtol=1e-5)
    twin = canonical_view(torch.from_numpy(X).double(), torch.from_numpy(C).double(), S, mode)
    for ours, ref in zip((canon, canon2, confs), twin):
        _close_per_array(ours.astype(np.float64), _np(ref), 2e-7)
    f_fast = fast.estimate_focal(canon)
    assert f_fast == pytest.approx(float(estimate_focal(torch.from_numpy(canon).double())), rel=1e-6)
    assert f_fast == pytest.approx(float(G[f"{case}_focal"][0]), rel=2e-6)


def test_compiled_canonical_view_on_random_views():
    """Parity with the float64 twin on random predictions with depth edges, several image shapes and subsamples
    (avg-angle exercises every branch of the compiled arctangent)."""
    from sparsega.alignment.kernels import canonical as fast

    rng = np.random.default_rng(3)
    for n, H, W, s in ((1, 16, 24, 8), (3, 32, 48, 8), (4, 24, 16, 4)):
        base = _pinhole(H, W, 30.0).numpy()
        X = (base[None] * rng.uniform(0.5, 3.0, (n, H, W, 1)) + rng.normal(0, 0.3, (n, H, W, 3))).astype(np.float32)
        X[..., 2] = np.abs(X[..., 2]) + 0.1
        C = (1 + rng.exponential(3.0, (n, H, W))).astype(np.float32)
        for mode, _ in MODES:
            ours = fast.fuse_view(X, C, s, mode)
            twin = canonical_view(torch.from_numpy(X).double(), torch.from_numpy(C).double(), s, mode)
            for a, b in zip(ours, twin):
                _close_per_array(a.astype(np.float64), _np(b), 3e-7)
        f_twin = float(estimate_focal(torch.from_numpy(X[0]).double()))
        assert fast.estimate_focal(X[0]) == pytest.approx(f_twin, rel=1e-6)
    assert math.isnan(fast.estimate_focal(np.full((8, 8, 3), np.nan, np.float32)))


def test_compiled_arctangent():
    from sparsega.alignment.kernels.canonical import _atan

    xs = np.concatenate(
        (np.linspace(-6, 6, 4001), np.logspace(-12, 15, 271), -np.logspace(-12, 15, 271), [0.0, np.inf, -np.inf])
    )
    ours = np.array([_atan(float(x)) for x in xs])
    np.testing.assert_allclose(ours, np.arctan(xs), rtol=0, atol=4e-16)
    assert math.isnan(_atan(math.nan))
