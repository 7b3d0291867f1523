"""Visibility cleaning of confidences: the compiled pass against its numpy twin, and the property it enforces."""

from __future__ import annotations

import numpy as np

from sparsega.alignment.clean import clean_confidences, clean_confidences_numpy


def _two_views(h: int = 384, w: int = 512, seed: int = 0):
    """Two cameras facing a bumpy wall; view 1 also sees a floating occluder patch in front of view 0's surface."""
    rng = np.random.default_rng(seed)
    K = np.array([[400.0, 0, w / 2], [0, 400.0, h / 2], [0, 0, 1]])
    cam2w = np.tile(np.eye(4), (2, 1, 1))
    ang = 0.15
    cam2w[1, :3, :3] = [[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]]
    cam2w[1, :3, 3] = (-0.6, 0.05, 0.1)
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    d0 = (4.0 + 0.2 * np.sin(x / 40.0) + 0.1 * np.cos(y / 30.0)).astype(np.float32)
    d1 = (4.2 + 0.15 * np.cos(x / 35.0)).astype(np.float32)
    d1[100:200, 150:300] = 2.0  # in front of what view 0 sees: view 0's points there land behind it
    confs = [rng.uniform(1, 10, (h, w)).astype(np.float32) for _ in range(2)]
    return confs, np.stack([K, K]), cam2w, [d0, d1]


def test_compiled_cleaning_matches_numpy_twin():
    confs, K, cam2w, depths = _two_views()
    fast = clean_confidences(confs, K, cam2w, depths, np.array([[0, 1]]))
    slow = clean_confidences_numpy(confs, K, cam2w, depths, np.array([[0, 1]]))
    for f, s, c in zip(fast, slow, confs):
        changed = int((s != c).sum())
        assert changed > 1000  # the scene really exercises the cleaning
        # same decisions up to float round-off at the rounding / tolerance boundaries
        assert int((f != s).sum()) <= max(5, changed // 1000)


def test_cleaning_only_lowers_and_keeps_untouched_views():
    confs, K, cam2w, depths = _two_views(seed=1)
    out = clean_confidences(confs, K, cam2w, depths, np.array([[0, 1]]), bad_conf=0.0)
    for o, c in zip(out, confs):
        assert o.dtype == np.float32 and o.shape == c.shape
        assert np.all((o == c) | (o == 0))
    # a pair list that does not contain the views changes nothing
    same = clean_confidences(confs, K, cam2w, depths, np.zeros((0, 2), np.int64))
    assert all(np.array_equal(a, b) for a, b in zip(same, confs))
