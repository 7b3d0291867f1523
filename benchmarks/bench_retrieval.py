"""Pair selection benchmark (issue 13): recall of the truly co-visible pairs at a fixed pair budget, and the
alignment accuracy each scene graph leads to, on rendered synthetic scenes at the network's 512x384.

    python benchmarks/bench_retrieval.py                         # orbit 48, hemisphere 48, loop 64; table
    python benchmarks/bench_retrieval.py --scenes loop:96 --json # one JSON line per (scene, graph)
    python benchmarks/bench_retrieval.py --no-align              # recall only (no simulation / alignment)

Ground truth: :meth:`sparsega.sim.SyntheticScene.covisibility` (share of a view's pixels that the other view sees,
depth-checked); a pair is *co-visible* when the mean of its two directions is >= ``--overlap`` (default 0.25).
Graphs, per scene of N views: ``swin-K`` (the budget: N*K pairs), ``retrieval-k`` with the largest k whose pair count
fits that budget, ``swin-(K/2)+retrieval-k`` likewise, and ``complete`` (recall 1, for the accuracy reference).
Retrieval uses ``sift`` (SIFT bag-of-words with a vocabulary learnt on the scene's own images, then verified
matches: sparsega.frontend.retrieval), the similarity that works without trained weights. Images are listed in a
seeded random order for ``--shuffle`` (an unordered photo collection; swin then pairs the wrong images).
Not run by CI.
"""

from __future__ import annotations

import argparse
import platform
import time

from _report import run_scenes


def _budget_k(similarity, n: int, budget: int, prefix: str) -> tuple[str, int]:
    """The largest retrieval k (with graph ``prefix``) whose unique pair count is <= budget."""
    from sparsega.frontend.pairs import make_pairs, unique_pairs

    best = (f"{prefix}retrieval-1", len(unique_pairs(make_pairs(n, f"{prefix}retrieval-1", similarity=similarity))))
    for k in range(2, n):
        name = f"{prefix}retrieval-{k}"
        count = len(unique_pairs(make_pairs(n, name, similarity=similarity)))
        if count > budget:
            break
        best = (name, count)
    return best


def run_scene(kind: str, n: int, args: argparse.Namespace) -> list[dict]:
    import numpy as np

    from sparsega import align, metrics, sim
    from sparsega.frontend.pairs import make_pairs, unique_pairs
    from sparsega.frontend.retrieval import sift_similarity

    h, w = args.size
    t0 = time.perf_counter()
    sc = sim.make_scene(kind, n_views=n, height=h, width=w, seed=args.seed)
    t_render = time.perf_counter() - t0
    if args.shuffle:  # an unordered collection: the file order says nothing about the views
        order = np.random.default_rng(args.seed).permutation(n)
        sc = sim.SyntheticScene(
            kind=sc.kind,
            cam2w=sc.cam2w[order],
            intrinsics=sc.intrinsics[order],
            depthmaps=[sc.depthmaps[k] for k in order],
            images=[sc.images[k] for k in order],
            extent=sc.extent,
            geometry=sc.geometry,
            spec=sc.spec,
        )
    cov = sc.covisibility(step=16)
    overlap = (cov + cov.T) / 2
    iu = np.triu_indices(n, 1)
    truth = {(int(a), int(b)) for a, b in zip(*iu) if overlap[a, b] >= args.overlap}
    t0 = time.perf_counter()
    similarity = sift_similarity(sc.images)
    t_sim = time.perf_counter() - t0

    budget_graph = f"swin-{args.k}"
    budget = len(unique_pairs(make_pairs(n, budget_graph)))
    graphs = [(budget_graph, budget)]
    graphs.append(_budget_k(similarity, n, budget, ""))
    half = max(1, args.k // 2)
    graphs.append(_budget_k(similarity, n, budget, f"swin-{half}+"))
    if not args.no_complete:
        graphs.append(("complete", n * (n - 1) // 2))
    rows = []
    for name, _ in graphs:
        pairs = unique_pairs(make_pairs(n, name, similarity=similarity))
        chosen = {(int(min(a, b)), int(max(a, b))) for a, b in pairs}
        hit = len(chosen & truth)
        row = {
            "scene": f"{kind} {n}{' shuffled' if args.shuffle else ''}",
            "image_hw": [h, w],
            "graph": name,
            "pairs": len(chosen),
            "covisible_pairs": len(truth),
            "recall": round(hit / max(len(truth), 1), 4),
            "precision": round(hit / max(len(chosen), 1), 4),
            "mean_overlap_of_chosen": round(float(np.mean([overlap[a, b] for a, b in chosen])), 4),
            "render_s": round(t_render, 1),
            "similarity_s": round(t_sim, 1),
        }
        if not args.no_align:
            preds = sim.LazyPredictions(sc, pairs, seed=args.seed)
            t0 = time.perf_counter()
            scene = align(preds, progress=False, clean_depth=False)
            row["align_s"] = round(time.perf_counter() - t0, 1)
            m = metrics.camera_metrics(scene.cam2w.astype(np.float64), sc.cam2w, scene.focals, sc.focals, sc.extent)
            row.update(
                rot_err_med=round(float(m["rot_err_med"]), 3),
                ate_rel=round(float(m["ate_rel"]), 4),
                rra5=round(float(m["rra5"]), 3),
                focal_err_med=round(float(m["focal_err_med"]), 4),
            )
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["orbit:48", "hemisphere:48", "loop:64"], help="KIND:N ...")
    ap.add_argument("--k", type=int, default=4, help="the budget: swin-K's pair count (default 4)")
    ap.add_argument("--overlap", type=float, default=0.25, help="co-visible: mean two-way overlap >= this")
    ap.add_argument("--size", type=int, nargs=2, default=[384, 512], help="H W (default: the network's 384 512)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shuffle", action="store_true", help="list the views in a seeded random order")
    ap.add_argument("--no-align", action="store_true")
    ap.add_argument("--no-complete", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import os

    cols = ["scene", "graph", "pairs", "covisible_pairs", "recall", "precision", "mean_overlap_of_chosen"]
    if not args.no_align:
        cols += ["rot_err_med", "ate_rel", "rra5", "focal_err_med", "align_s"]
    run_scenes(args, run_scene, cols, {"machine": f"{platform.machine()} {os.cpu_count()} cores"})


if __name__ == "__main__":
    main()
