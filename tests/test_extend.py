"""Adding images to a saved reconstruction (sparsega.alignment.extend): a 10-view walk split 7 + 3. The old cameras
stay exactly where they were, the new ones land in the old frame and scale, as accurately as a one-shot alignment
of all ten views."""

from __future__ import annotations

import numpy as np
import pytest

from sparsega import AlignConfig, GraphError, InputError, align, metrics, sim
from sparsega.alignment.extend import align_extend
from sparsega.frontend.pairs import make_pairs, unique_pairs

CFG = AlignConfig(niter1=150, niter2=150, progress=False)
N, OLD = 10, 7


@pytest.fixture(scope="module")
def case():
    gt = sim.make_scene("walk", n_views=N, height=96, width=128, seed=6)
    pairs = unique_pairs(make_pairs(N, "swin-3-noncyclic"))
    preds = sim.simulate_predictions(gt, pairs, seed=6)
    old_preds = [p for p in preds if max(p.i, p.j) < OLD]
    new_preds = [p for p in preds if max(p.i, p.j) >= OLD]
    old = align(old_preds, CFG, images=gt.images[:OLD])
    return gt, preds, old, new_preds


def _errors(scene, gt):
    m = metrics.camera_metrics(scene.cam2w.astype(np.float64), gt.cam2w, scene.focals, gt.focals, gt.extent)
    return m["ate_rel"], m["rot_err_med"]


def test_extend_matches_one_shot(case):
    gt, preds, old, new_preds = case
    ext = align_extend(old, new_preds, CFG, images=gt.images[OLD:])
    assert ext.n_images == N and ext.info["extend"]["n_new"] == N - OLD
    np.testing.assert_array_equal(ext.cam2w[:OLD], old.cam2w)  # the old cameras do not move
    np.testing.assert_array_equal(ext.intrinsics[:OLD], old.intrinsics)
    one_shot = align(preds, CFG, images=gt.images)
    ate_e, rot_e = _errors(ext, gt)
    ate_o, rot_o = _errors(one_shot, gt)
    assert ate_e <= 1.5 * ate_o + 0.005 and rot_e <= rot_o + 0.5, (ate_e, ate_o, rot_e, rot_o)
    # the new views are in the old frame: their cameras agree with the one-shot ones once both are in GT's frame
    assert np.isfinite(ext.cam2w).all() and all(np.isfinite(d).all() for d in ext.depthmaps)


def test_soft_old_cameras_may_move(case):
    gt, preds, old, new_preds = case
    ext = align_extend(old, new_preds, CFG, fix_old=False)
    used = ext.info["extend"]["old_views_used"]
    assert used and max(used) == OLD - 1
    untouched = [k for k in range(OLD) if k not in used]
    np.testing.assert_array_equal(ext.cam2w[untouched], old.cam2w[untouched])


def test_clear_errors(case):
    gt, preds, old, new_preds = case
    with pytest.raises(InputError, match="no new image"):
        align_extend(old, [p for p in preds if max(p.i, p.j) < OLD], CFG)
    only_new = [p for p in new_preds if min(p.i, p.j) >= OLD]
    with pytest.raises(GraphError, match="share no pair"):
        align_extend(old, only_new, CFG)
    with pytest.raises(InputError, match="2 images given for 3 new views"):
        align_extend(old, new_preds, CFG, images=gt.images[OLD : OLD + 2])
