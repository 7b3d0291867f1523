"""Scale benchmark (issue 6): alignment of N views with predictions streamed from an on-disk cache.

    python benchmarks/bench_scale.py --n 64 --traj walk                 # readable table
    python benchmarks/bench_scale.py --n 1000 --traj orbit --json       # ONE JSON object on stdout
    python benchmarks/bench_scale.py --n 256 --pose-init identity --kinematic-mode mst

``--source cache`` (default): the predictions are simulated once and written to a temporary prediction cache
(:class:`sparsega.frontend.cache.CacheDir`, not timed as alignment), then aligned from a
:class:`sparsega.frontend.inference.CachedPredictions`, the way ``reconstruct`` streams them: one pair in memory at
a time.
``--source lazy``: simulated again on every access (no disk). Peak RSS is the process's maximum (the simulation
holds one pair at a time too).

Two-step runs (the 1000-view table): ``--cache-dir D --fill-only`` renders, simulates and writes the cache plus a
small truth file; the same command without ``--fill-only`` then aligns from ``D`` alone, so its wall time and peak
RSS are the alignment's (no renderer or simulator in the process), as for a user aligning a cached run:

    python benchmarks/bench_scale.py --n 1000 --traj loop --graph swin-3 --cache-dir /tmp/s1000 --fill-only
    python benchmarks/bench_scale.py --n 1000 --traj loop --graph swin-3 --cache-dir /tmp/s1000 --json

``--graph swin-3+retrieval-5`` pairs by SIFT retrieval on the rendered images (timed as ``similarity_s``); the
``first_last_*`` errors measure a loop's drift (its first and last views are neighbours). Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path


def _first_last_error(est, gt) -> dict:
    """Rotation error (deg) and translation-direction error (deg) of the relative pose of views 0 and N-1."""
    import numpy as np

    def rel(c):
        return np.linalg.inv(c[0]) @ c[-1]

    a, b = rel(est), rel(gt)
    cos = (np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2
    ta, tb = a[:3, 3], b[:3, 3]
    cos_t = ta @ tb / max(np.linalg.norm(ta) * np.linalg.norm(tb), 1e-12)
    return {
        "first_last_rot_err": round(float(np.degrees(np.arccos(np.clip(cos, -1, 1)))), 3),
        "first_last_dir_err": round(float(np.degrees(np.arccos(np.clip(cos_t, -1, 1)))), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--traj", default="walk", choices=["walk", "orbit", "hemisphere", "loop"])
    ap.add_argument("--graph", default="swin-3")
    ap.add_argument(
        "--size", type=int, nargs=2, default=[384, 512], help="H W (default: the network's 384 512 at every N)"
    )
    ap.add_argument(
        "--retrieval",
        default="sift",
        choices=["sift"],
        help="image similarity for retrieval-* graphs, e.g. --graph swin-3+retrieval-5 (computed on the rendered "
        "images and timed as similarity_s; sift: the one that needs no trained weights)",
    )
    ap.add_argument("--pose-init", default="procrustes", choices=["procrustes", "identity"])
    ap.add_argument("--kinematic-mode", default="hclust-ward")
    ap.add_argument("--niter", type=int, nargs=2, default=[300, 300])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument(
        "--align-threads",
        type=int,
        default=0,
        help="AlignConfig.threads: the match kernel's threads (default 0: auto, by problem size)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", default="cache", choices=["cache", "lazy"])
    ap.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "kernel", "autograd"],
        help="match-loss implementation (AlignConfig.loss_backend)",
    )
    ap.add_argument(
        "--storage",
        default="compact",
        choices=["compact", "float32"],
        help="cache entry form (sparsega.frontend.cache.STORAGE_CHOICES; reconstruct's default is compact)",
    )
    ap.add_argument("--cache-dir", default=None, help="where --source cache writes (default: a temporary folder)")
    ap.add_argument(
        "--fill-only",
        action="store_true",
        help="with --cache-dir: render, simulate and fill the cache, then stop; a later run with the same settings "
        "aligns from that cache without rendering",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from sparsega import align, metrics, sim
    from sparsega.frontend.pairs import make_pairs, unique_pairs

    h, w = args.size
    scene_tag = f"n{args.n}-{args.traj}-{h}x{w}-s{args.seed}-{args.storage}"  # a pair's entry: scene + pair only
    tag = f"{scene_tag}-{args.graph.replace('+', '_')}"
    truth_file = Path(args.cache_dir) / f"bench_scale_{tag}.npz" if args.cache_dir else None
    t_render = t_similarity = t_sim = 0.0
    tmp = None
    if args.source == "cache" and truth_file is not None and truth_file.is_file():
        # a cache filled by an earlier run of the same setting: align from it alone (no rendering, no simulator
        # memory in this process, so peak RSS is the alignment's)
        from sparsega.frontend.cache import CacheDir
        from sparsega.frontend.inference import CACHE_NAMESPACE, CachedPredictions

        truth = np.load(truth_file)
        gt_cam2w, gt_focals, gt_extent = truth["cam2w"], truth["focals"], float(truth["extent"])
        pairs = truth["pairs"]
        store = CacheDir(args.cache_dir, "synthetic-bench").store(CACHE_NAMESPACE)
        entries = [(int(i), int(j), f"{scene_tag}-{i}-{j}", False) for i, j in pairs]
        missing = [key for _, _, key, _ in entries if not store.has(key)]
        if missing:
            raise SystemExit(f"{len(missing)} entries of {truth_file} are missing from the cache: delete it and rerun")
        preds = CachedPredictions(store, entries)
        cache_bytes = sum(store.path(key).stat().st_size for _, _, key, _ in entries)
        reused = True
    else:
        reused = False
        t0 = time.perf_counter()
        sc = sim.make_scene(args.traj, n_views=args.n, height=h, width=w, seed=args.seed)
        t_render = time.perf_counter() - t0
        gt_cam2w, gt_focals, gt_extent = sc.cam2w, sc.focals, sc.extent
        similarity = None
        if "retrieval" in args.graph:
            from sparsega.frontend.retrieval import sift_similarity

            sim_file = Path(args.cache_dir) / f"bench_scale_{scene_tag}_sift.npy" if args.cache_dir else None
            if sim_file is not None and sim_file.is_file():  # computed by an earlier fill of another graph
                similarity = np.load(sim_file)
            else:
                t0 = time.perf_counter()
                similarity = sift_similarity(sc.images)
                t_similarity = time.perf_counter() - t0
                if sim_file is not None:
                    np.save(sim_file, similarity)
        pairs = unique_pairs(make_pairs(args.n, args.graph, similarity=similarity))
        lazy = sim.LazyPredictions(sc, pairs, seed=args.seed)
        t0 = time.perf_counter()
        if args.source == "cache":
            import tempfile

            from sparsega.frontend.cache import CacheDir, save_pair
            from sparsega.frontend.inference import CACHE_NAMESPACE, CachedPredictions

            if args.cache_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="bench_scale_")
            store = CacheDir(args.cache_dir or tmp.name, "synthetic-bench").store(CACHE_NAMESPACE)
            entries = []
            for k in range(len(lazy)):
                i, j = lazy.pairs[k]
                key = f"{scene_tag}-{i}-{j}"  # shared by the graphs of one scene
                if not store.has(key):
                    save_pair(store, key, lazy[k], args.storage)
                entries.append((i, j, key, False))
            preds = CachedPredictions(store, entries)
            cache_bytes = sum(store.path(key).stat().st_size for _, _, key, _ in entries)  # this run's entries
            if truth_file is not None:
                np.savez(truth_file, cam2w=gt_cam2w, focals=gt_focals, extent=gt_extent, pairs=np.asarray(pairs))
        else:
            preds = lazy
            cache_bytes = 0
        t_sim = time.perf_counter() - t0
        if args.fill_only:
            print(json.dumps({"filled": str(truth_file), "pairs": len(pairs), "simulate_s": round(t_sim, 1)}))
            return
    t0 = time.perf_counter()
    scene = align(
        preds,
        progress=not args.json,
        niter1=args.niter[0],
        niter2=args.niter[1],
        clean_depth=False,
        pose_init=args.pose_init,
        kinematic_mode=args.kinematic_mode,
        loss_backend=args.backend,
        threads=args.align_threads,
    )
    wall = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()
    m = metrics.camera_metrics(scene.cam2w.astype(np.float64), gt_cam2w, scene.focals, gt_focals, gt_extent)
    tim, st = scene.info["timings_s"], scene.info["stats"]
    iters = sum(s["niter"] for s in scene.info["stages"])
    opt_s = tim["stage 1 (3D)"] + tim.get("stage 2 (2D)", 0.0)
    row = {
        "n_views": args.n,
        "traj": args.traj,
        "graph": args.graph,
        "image_hw": [h, w],
        "n_pairs": st["n_pairs"],
        "n_matches": st["n_matches"],
        "wall_s": round(wall, 2),
        "render_s": round(t_render, 2),
        "similarity_s": round(t_similarity, 2),
        "source": args.source,
        "simulate_s": round(t_sim, 2),
        "cache_bytes_per_pair": int(cache_bytes / max(len(pairs), 1)),
        "cache_reused": reused,
        "storage": args.storage if args.source == "cache" else None,
        "loss_backend": args.backend,
        "stage_s": {k: round(v, 2) for k, v in tim.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "ms_per_iter": round(1000 * opt_s / max(iters, 1), 2),
        "rot_err_med": round(float(m["rot_err_med"]), 4),
        "ate_rel": round(float(m["ate_rel"]), 5),
        "rra5": round(float(m["rra5"]), 4),
        "focal_err_med": round(float(m["focal_err_med"]), 5),
        # drift: the error of the relative pose between the first and the last view (a loop's ends meet)
        **_first_last_error(scene.cam2w.astype(np.float64), gt_cam2w),
        "pose_init": args.pose_init,
        "kinematic_mode": args.kinematic_mode,
        "threads": torch.get_num_threads(),
        "align_threads": args.align_threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
    }
    if args.json:
        print(json.dumps(row))
        return
    for k, v in row.items():
        print(f"{k:>16}: {v}")


if __name__ == "__main__":
    main()
