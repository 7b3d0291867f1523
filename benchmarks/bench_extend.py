"""Adding photos to a finished reconstruction (issue 13): extend vs one-shot accuracy on rendered scenes at 512x384.

    python benchmarks/bench_extend.py                      # walk 24, orbit 16, hemisphere 24; table
    python benchmarks/bench_extend.py --scenes walk:40 --json

Per scene: the views are split 70 / 30 (a walk: its last 30 %, the photos taken later; orbit and hemisphere: a
seeded random 30 %). Pairs: ``--graph`` (default ``swin-2+retrieval-4``, SIFT retrieval over all views, as
``reconstruct --extend`` pairs new photos with old ones). The old 70 % are aligned alone, then
:func:`sparsega.alignment.extend.align_extend` adds the new views from the pairs that touch one (old cameras fixed;
and with ``fix_old=False``, soft priors); the one-shot alignment of all views is the reference. Errors against the
exact ground truth: all views, and the new views alone (RMS centre error / extent and median rotation error, in
the frame of the similarity fitted on all centres).
Not run by CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from _report import run_scenes


def _errors(scene, gt_cam2w, gt_focals, extent, new) -> dict:
    """Camera errors of all views, and of the new views in the frame fitted on all (sim3 on the centres)."""
    import numpy as np

    from sparsega import metrics

    est = scene.cam2w.astype(np.float64)
    m = metrics.camera_metrics(est, gt_cam2w, scene.focals, gt_focals, extent)
    moved = metrics.align_poses(est, gt_cam2w)
    centre = np.linalg.norm(moved[new, :3, 3] - gt_cam2w[new, :3, 3], axis=1) / extent
    rel = np.einsum("nji,njk->nik", gt_cam2w[new, :3, :3], moved[new, :3, :3])
    ang = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    if len(new) == 0:  # the old reconstruction alone: no new views
        centre, ang = np.zeros(1), np.zeros(1)
    return {
        "ate_rel": round(float(m["ate_rel"]), 4),
        "rot_err_med": round(float(m["rot_err_med"]), 3),
        "focal_err_med": round(float(m["focal_err_med"]), 4),
        "new_centre_err_rel": round(float(np.sqrt((centre**2).mean())), 4),
        "new_rot_err_med": round(float(np.median(ang)), 3),
    }


def run_scene(kind: str, n: int, args: argparse.Namespace) -> list[dict]:
    import numpy as np

    from sparsega import AlignConfig, align, sim
    from sparsega.alignment.extend import align_extend
    from sparsega.frontend.pairs import make_pairs, unique_pairs
    from sparsega.frontend.retrieval import sift_similarity

    h, w = args.size
    sc = sim.make_scene(kind, n_views=n, height=h, width=w, seed=args.seed)
    n_new = max(1, round(0.3 * n))
    if kind == "walk":
        order = np.arange(n)
    else:
        order = np.random.default_rng(args.seed).permutation(n)  # old views first, then the new ones
    cam2w, focals = sc.cam2w[order], sc.focals[order]
    images = [sc.images[k] for k in order]
    similarity = sift_similarity(images) if "retrieval" in args.graph else None
    pairs = unique_pairs(make_pairs(n, args.graph, similarity=similarity))
    pairs_orig = order[pairs]  # simulate in the scene's own indices, then renumber
    preds = sim.simulate_predictions(sc, pairs_orig, seed=args.seed)
    inv = np.argsort(order)
    preds = [dataclasses.replace(p, i=int(inv[p.i]), j=int(inv[p.j])) for p in preds]
    n_old = n - n_new
    new = np.arange(n_old, n)
    old_preds = [p for p in preds if max(p.i, p.j) < n_old]
    new_preds = [p for p in preds if max(p.i, p.j) >= n_old]
    cfg = AlignConfig(progress=False, clean_depth=False)
    rows = []
    t0 = time.perf_counter()
    one = align(preds, cfg)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    old = align(old_preds, cfg)
    t_old = time.perf_counter() - t0
    base = {"scene": f"{kind} {n}", "graph": args.graph, "old_views": n_old, "new_views": n_new}
    rows.append({**base, "run": "one-shot", "pairs": len(preds), "wall_s": round(t_one, 1)})
    rows[-1].update(_errors(one, cam2w, focals, sc.extent, new))
    old_idx = np.arange(n_old)
    rows.append({**base, "run": "old views alone", "pairs": len(old_preds), "wall_s": round(t_old, 1)})
    rows[-1].update(_errors(old, cam2w[old_idx], focals[old_idx], sc.extent, old_idx[:0]))
    for fix_old in (True, False):
        t0 = time.perf_counter()
        ext = align_extend(old, new_preds, cfg, fix_old=fix_old)
        t_ext = time.perf_counter() - t0
        run = "extend (old fixed)" if fix_old else "extend (old soft)"
        rows.append(
            {**base, "run": run, "pairs": len(new_preds), "wall_s": round(t_ext, 1), "old_wall_s": round(t_old, 1)}
        )
        rows[-1].update(_errors(ext, cam2w, focals, sc.extent, new))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["walk:24", "orbit:16", "hemisphere:24"], help="KIND:N ...")
    ap.add_argument("--graph", default="swin-2+retrieval-4")
    ap.add_argument("--size", type=int, nargs=2, default=[384, 512], help="H W (default: the network's 384 512)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cols = ["scene", "run", "pairs", "ate_rel", "rot_err_med", "focal_err_med", "new_centre_err_rel", "new_rot_err_med"]
    run_scenes(args, run_scene, cols)


if __name__ == "__main__":
    main()
