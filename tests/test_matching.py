"""Tests of sparsega.frontend.matching against the reference goldens, plus reciprocity, blocking and 3D matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparsega.frontend.matching as matching
from sparsega.errors import InputError
from sparsega.frontend.matching import (
    extract_correspondences,
    fast_reciprocal_nns,
    match_pointmaps_3d,
    merge_correspondences,
    pair_score,
)

from conftest import load_golden

G = load_golden("blocks/matching.npz")
KEYS = ("11", "21", "22", "12")
DIRECTIONS = [("11", "21"), ("21", "11"), ("12", "22"), ("22", "12")]


@pytest.mark.parametrize("a,b", DIRECTIONS)
def test_frnn_golden(a: str, b: str, device: str) -> None:
    i1, i2 = fast_reciprocal_nns(torch.from_numpy(G[f"desc{a}"]).to(device), G[f"desc{b}"], subsample=8)
    np.testing.assert_array_equal(i1, G[f"frnn_{a}_{b}_idx1"])
    np.testing.assert_array_equal(i2, G[f"frnn_{a}_{b}_idx2"])


def test_frnn_xy_golden() -> None:
    xy1, xy2 = fast_reciprocal_nns(G["desc11"], G["desc21"], ret_xy=True)
    assert xy1.dtype == np.int64 and xy2.dtype == np.int64
    np.testing.assert_array_equal(xy1, G["frnn_11_21_xy1"])
    np.testing.assert_array_equal(xy2, G["frnn_11_21_xy2"])


def test_frnn_float64_and_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    """float64 gives the same pairs (as the reference); tiny blocks (many partial maxima) too."""
    i1, i2 = fast_reciprocal_nns(G["desc11"].astype(np.float64), G["desc21"].astype(np.float64))
    np.testing.assert_array_equal(i1, G["frnn_11_21_idx1"])
    monkeypatch.setattr(matching, "_BLOCK_ELEMS", 1000)
    i1, i2 = fast_reciprocal_nns(G["desc21"], G["desc11"])
    np.testing.assert_array_equal(i1, G["frnn_21_11_idx1"])
    np.testing.assert_array_equal(i2, G["frnn_21_11_idx2"])


def test_running_best_search_equals_the_tile_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU running-best search returns exactly the per-tile table's neighbours, ties included (descriptors
    with many exact duplicates, small tiles so that maxima recur across tiles)."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((40, 24)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    db = torch.from_numpy(base[rng.integers(0, 40, 3000)])  # every vector repeated ~75 times: ties everywhere
    q = torch.from_numpy(base[rng.integers(0, 40, 500)] + 0.01 * rng.standard_normal((500, 24)).astype(np.float32))
    monkeypatch.setattr(matching, "_BLOCK_ELEMS", 4096)
    fast = matching._dot_nn(db)(q)
    monkeypatch.setattr(matching, "_RUNNING_BEST", False)
    table = matching._dot_nn(db)(q)
    np.testing.assert_array_equal(fast.numpy(), table.numpy())
    sims = q.numpy() @ db.numpy().T
    assert (sims[np.arange(500), fast.numpy()] == sims.max(1)).all()
    first = np.argmax(sims == sims.max(1, keepdims=True), axis=1)  # lowest index among the maxima
    np.testing.assert_array_equal(fast.numpy(), first)


def test_frnn_pairs_are_reciprocal() -> None:
    a, b = G["desc11"].reshape(-1, 24), G["desc21"].reshape(-1, 24)
    i1, i2 = fast_reciprocal_nns(G["desc11"], G["desc21"])
    assert len(i1) > 100
    np.testing.assert_array_equal(np.argmax(a[i1] @ b.T, axis=1), i2)
    np.testing.assert_array_equal(np.argmax(b[i2] @ a.T, axis=1), i1)
    key = i1 * len(b) + i2
    assert (np.diff(key) > 0).all()  # unique, sorted by (idx1, idx2)
    # one round: only seeds whose round trip comes straight back
    s1, _ = fast_reciprocal_nns(G["desc11"], G["desc21"], subsample=8, max_iter=1)
    h, w = G["desc11"].shape[:2]
    assert ((s1 % w) % 8 == 4).all() and ((s1 // w) % 8 == 4).all()
    assert set(s1.tolist()) <= set(i1.tolist())


def test_extract_correspondences_golden(device: str) -> None:
    descs = [torch.from_numpy(G[f"desc{k}"]).to(device) for k in KEYS]
    qonfs = [torch.from_numpy(G[f"qonf{k}"]).to(device) for k in KEYS]
    xy1, xy2, conf = extract_correspondences(descs, qonfs, subsample=int(G["subsample"]))
    assert xy1.dtype == np.int64 and xy2.dtype == np.int64 and conf.dtype == np.float32
    np.testing.assert_array_equal(xy1, G["corres_xy1"])
    np.testing.assert_array_equal(xy2, G["corres_xy2"])
    np.testing.assert_allclose(conf, G["corres_confs"], rtol=1e-6)


def test_merge_golden() -> None:
    xy1, xy2, index = merge_correspondences(G["merge_in_idx1"], G["merge_in_idx2"], (96, 128), (112, 96))
    np.testing.assert_array_equal(xy1, G["merge_xy1"])
    np.testing.assert_array_equal(xy2, G["merge_xy2"])
    np.testing.assert_array_equal(index, G["merge_index"])
    # the raw list is the four directions concatenated in reference order
    raw1 = np.concatenate([G["frnn_11_21_idx1"], G["frnn_21_11_idx2"], G["frnn_12_22_idx1"], G["frnn_22_12_idx2"]])
    raw2 = np.concatenate([G["frnn_11_21_idx2"], G["frnn_21_11_idx1"], G["frnn_12_22_idx2"], G["frnn_22_12_idx1"]])
    np.testing.assert_array_equal(raw1, G["merge_in_idx1"])
    np.testing.assert_array_equal(raw2, G["merge_in_idx2"])
    e1, e2, ei = merge_correspondences(np.zeros(0, np.int64), np.zeros(0, np.int64), (4, 4), (4, 4))
    assert e1.shape == (0, 2) and e2.shape == (0, 2) and ei.shape == (0,)


def test_merge_keeps_first_occurrence() -> None:
    xy1, xy2, index = merge_correspondences(np.array([5, 1, 5, 1]), np.array([2, 3, 2, 0]), (2, 4), (2, 4))
    np.testing.assert_array_equal(index, [3, 1, 0])  # sorted (1,0), (1,3), (5,2); first (5,2) is position 0
    np.testing.assert_array_equal(xy1, [[1, 0], [1, 0], [1, 1]])
    np.testing.assert_array_equal(xy2, [[0, 0], [3, 0], [2, 0]])


def test_pair_score_golden() -> None:
    score = pair_score(G["conf11"], G["conf21"], G["conf22"], G["conf12"], G["corres_confs"])
    ref = G["pair_score"]
    np.testing.assert_allclose(score[:2], ref[:2], rtol=1e-6)
    assert isinstance(score[2], int) and score[2] == int(ref[2])


def _surface(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[:h, :w].astype(np.float32)
    z = 5 + np.sin(x / 7.0) + np.cos(y / 5.0)
    return np.stack([x * 0.1, y * 0.1, z], axis=-1).astype(np.float32)


def test_match_pointmaps_3d_recovers_the_shift() -> None:
    big = _surface(60, 80)
    dx, dy = 6, 3
    p1, p2 = big[:48, :64], big[dy : dy + 40, dx : dx + 56]  # image 2 = image 1 shifted by (dx, dy)
    rng = np.random.default_rng(0)
    c1, c2 = 1 + rng.random((48, 64), dtype=np.float32), 1 + rng.random((40, 56), dtype=np.float32)
    xy1, xy2, conf = match_pointmaps_3d([p1, p2, p2, p1], [c1, c2, c2, c1], subsample=8)
    assert len(xy1) > 50
    np.testing.assert_array_equal(xy1, xy2 + [dx, dy])
    np.testing.assert_allclose(conf, np.sqrt(c1[xy1[:, 1], xy1[:, 0]] * c2[xy2[:, 1], xy2[:, 0]]), rtol=1e-6)
    key = (xy1[:, 1] * 64 + xy1[:, 0]) * (40 * 56) + xy2[:, 1] * 56 + xy2[:, 0]
    assert (np.diff(key) > 0).all()


def test_errors() -> None:
    d = G["desc11"]
    with pytest.raises(InputError, match="desc_b"):
        fast_reciprocal_nns(d, d[..., :10])
    with pytest.raises(InputError, match="desc_a"):
        fast_reciprocal_nns(d[0], d)
    bad = d.copy()
    bad[3, 4, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        fast_reciprocal_nns(bad, d)
    with pytest.raises(InputError, match="subsample"):
        fast_reciprocal_nns(d, d, subsample=0)
    qonfs = [G[f"qonf{k}"] for k in KEYS]
    with pytest.raises(InputError, match="desc21"):
        extract_correspondences([G["desc11"], G["desc11"], G["desc22"], G["desc12"]], qonfs)
    with pytest.raises(InputError):
        extract_correspondences([G["desc11"]], qonfs)
    with pytest.raises(InputError, match="idx2"):
        merge_correspondences(np.array([0]), np.array([99]), (2, 2), (3, 3))
