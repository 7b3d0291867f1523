"""Alignment benchmark: wall time per stage, ms per iteration, peak memory and accuracy vs N views.

    python benchmarks/bench_align.py                       # N in 8 32 128 512, swin-5, walk, table
    python benchmarks/bench_align.py --n 8 32 --json       # one JSON object per N on stdout
    python benchmarks/bench_align.py --n 128 --niter 300 300 --kind orbit --threads 1

Each N runs in a fresh subprocess so that peak RSS (``ru_maxrss``) is that run's own. Reports the measured exponent of
ms/iteration vs number of matches (least squares on log-log). Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def run_one(args: argparse.Namespace, n: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from sparsega import align, metrics, sim
    from sparsega.frontend.pairs import make_pairs, unique_pairs

    h, w = args.size if n <= args.big_n else args.size_big
    t0 = time.perf_counter()
    sc = sim.make_scene(args.kind, n_views=n, height=h, width=w, seed=args.seed)
    preds = sim.simulate_predictions(sc, unique_pairs(make_pairs(n, args.graph)), seed=args.seed)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    scene = align(
        preds,
        progress=False,
        niter1=args.niter[0],
        niter2=args.niter[1],
        clean_depth=False,
        pose_init=args.pose_init,
        loss_backend=args.backend,
        threads=args.threads,
        device=args.device,
    )
    wall = time.perf_counter() - t0
    m = metrics.camera_metrics(scene.cam2w.astype(np.float64), sc.cam2w, scene.focals, sc.focals, sc.extent)
    tim = scene.info["timings_s"]
    st = scene.info["stats"]
    iters = sum(s["niter"] for s in scene.info["stages"])
    stage_times = {k: round(v, 3) for k, v in tim.items()}
    opt_s = tim["stage 1 (3D)"] + tim.get("stage 2 (2D)", 0.0)
    return {
        "n_views": n,
        "image_hw": [h, w],
        "n_pairs": st["n_pairs"],
        "n_matches": st["n_matches"],
        "n_anchors": st["n_anchors"],
        "simulate_s": round(t_sim, 2),
        "wall_s": round(wall, 3),
        "stage_s": stage_times,
        "iterations": iters,
        "ms_per_iter": round(1000 * opt_s / max(iters, 1), 3),
        "ms_per_iter_stage1": round(1000 * tim["stage 1 (3D)"] / max(args.niter[0], 1), 3),
        "ms_per_iter_stage2": round(1000 * tim.get("stage 2 (2D)", 0.0) / max(args.niter[1], 1), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rot_err_med": round(float(m["rot_err_med"]), 4),
        "ate_rel": round(float(m["ate_rel"]), 5),
        "rra5": round(float(m["rra5"]), 4),
        "rta5": round(float(m["rta5"]), 4),
        "focal_err_med": round(float(m["focal_err_med"]), 5),
        "threads": args.threads,
        "device": scene.info["config"]["device"],
        "pose_init": args.pose_init,
        "loss_backend": args.backend,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32, 128, 512])
    ap.add_argument("--kind", default="walk", choices=["orbit", "walk", "hemisphere"])
    ap.add_argument("--graph", default="swin-5")
    ap.add_argument("--niter", type=int, nargs=2, default=[300, 300])
    ap.add_argument("--size", type=int, nargs=2, default=[384, 512], help="H W for N <= --big-n (network size)")
    ap.add_argument(
        "--size-big",
        type=int,
        nargs=2,
        default=[384, 512],
        help="H W above --big-n (default: the network size too; smaller only when asked)",
    )
    ap.add_argument("--big-n", type=int, default=128)
    ap.add_argument("--pose-init", default="procrustes", choices=["procrustes", "identity"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "kernel", "autograd"],
        help="match-loss implementation (AlignConfig.loss_backend)",
    )
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda[:k] or mps (cpu: the compiled kernels)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one is not None:
        print(json.dumps(run_one(args, args._one)))
        return

    rows = []
    for n in args.n:
        cmd = [sys.executable, __file__, "--_one", str(n)] + [a for a in sys.argv[1:] if a != "--json"]
        # drop the outer --n list from the child's argv
        if "--n" in cmd:
            i = cmd.index("--n")
            j = i + 1
            while j < len(cmd) and not cmd[j].startswith("--"):
                j += 1
            del cmd[i:j]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode:
            sys.exit(f"N={n} failed:\n{out.stderr[-2000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if args.json:
        return
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, {args.threads} thread(s)"
    print(f"# sparsega bench_align — {args.kind}, {args.graph}, niter {args.niter}, {machine}")
    hdr = (
        "N",
        "HxW",
        "pairs",
        "matches",
        "prep s",
        "stage1 s",
        "stage2 s",
        "wall s",
        "ms/it",
        "RSS MB",
        "rot med",
        "ATE %",
        "RRA@5",
        "focal %",
    )
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        st = r["stage_s"]
        print(
            f"| {r['n_views']} | {r['image_hw'][0]}x{r['image_hw'][1]} | {r['n_pairs']} | {r['n_matches']} | "
            f"{st['prepare']:.2f} | {st['stage 1 (3D)']:.2f} | {st.get('stage 2 (2D)', 0):.2f} | {r['wall_s']:.1f} | "
            f"{r['ms_per_iter']:.2f} | {r['peak_rss_mb']:.0f} | {r['rot_err_med']:.3f} | {100 * r['ate_rel']:.2f} | "
            f"{100 * r['rra5']:.0f} | {100 * r['focal_err_med']:.2f} |"
        )
    if len(rows) >= 2:
        import numpy as np

        x = np.log([r["n_matches"] for r in rows])
        y = np.log([r["ms_per_iter"] for r in rows])
        slope = np.polyfit(x, y, 1)[0]
        print(f"\nms/iteration grows as n_matches^{slope:.2f}")


if __name__ == "__main__":
    main()
