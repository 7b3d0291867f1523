"""Fuzz: 50 random synthetic scenes (kinds, sizes, view counts, scene graphs, noise up to 10x the default, outlier
rates up to 50 %) must always align to finite outputs, without an exception, in a few optimiser iterations."""

from __future__ import annotations

import numpy as np
import pytest

from sparsega import sim
from sparsega.alignment.api import align
from sparsega.frontend.pairs import make_pairs
from sparsega.types import AlignConfig

N_CASES = 50
SIZES = [(48, 64), (64, 64), (64, 96), (96, 112), (96, 128), (64, 48), (112, 96), (80, 112)]  # (H, W), mult. of 16
KINEMATIC = ["hclust-ward", "mst", "hclust-single", "hclust-average"]


def _graph(rng: np.random.Generator, n: int) -> str:
    kind = rng.choice(["complete", "swin", "logwin", "oneref"])
    if kind == "complete":
        return "complete"
    if kind == "oneref":
        return f"oneref-{int(rng.integers(0, n))}"
    k = int(rng.integers(1, 4))
    return f"{kind}-{k}" + ("-noncyclic" if rng.random() < 0.3 else "")


def _case(seed: int) -> dict:
    rng = np.random.default_rng(1000 + seed)
    h, w = SIZES[int(rng.integers(0, len(SIZES)))]
    n = int(rng.integers(3, 9))
    return {
        "kind": str(rng.choice(list(sim.KINDS))),
        "n": n,
        "h": h,
        "w": w,
        "graph": _graph(rng, n),
        "noise": float(rng.uniform(0, 10)),
        "outliers": float(rng.uniform(0, 0.5)),
        "kinematic": KINEMATIC[int(rng.integers(0, len(KINEMATIC)))],
        "shared": bool(rng.random() < 0.2),
        "seed": seed,
    }


@pytest.mark.parametrize("seed", range(N_CASES))
def test_random_scene_aligns_to_finite_outputs(seed):
    c = _case(seed)
    gt = sim.make_scene(c["kind"], n_views=c["n"], height=c["h"], width=c["w"], seed=c["seed"])
    sim_cfg = sim.SimConfig(noise_scale=c["noise"], outlier_rate=c["outliers"])
    preds = sim.simulate_predictions(gt, make_pairs(c["n"], c["graph"]), sim=sim_cfg, seed=c["seed"])
    cfg = AlignConfig(
        niter1=30, niter2=30, kinematic_mode=c["kinematic"], shared_intrinsics=c["shared"], progress=False
    )
    scene = align(preds, cfg, images=gt.images)
    assert scene.n_images == c["n"], c
    assert scene.cam2w.shape == (c["n"], 4, 4) and np.isfinite(scene.cam2w).all(), c
    R = scene.cam2w[:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-4)
    assert np.isfinite(scene.intrinsics).all() and (scene.focals > 0).all(), c
    for d, conf in zip(scene.depthmaps, scene.confidences):
        assert d.shape == (c["h"], c["w"]) and np.isfinite(d).all() and np.isfinite(conf).all(), c
    pts = scene.pts3d(dense=True)
    assert all(np.isfinite(p).all() for p in pts), c
    for st in scene.info["stages"]:
        assert st["loss_last"] is None or np.isfinite(st["loss_last"]), c
