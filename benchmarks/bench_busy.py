"""Alignment time on a quiet machine and beside one CPU-bound process (issue 11: "threads that do not collapse").

    python benchmarks/bench_busy.py                    # orbit 8, complete, 384x512, default options
    python benchmarks/bench_busy.py --threads 1 2      # compare kernel thread counts
    python benchmarks/bench_busy.py --json

For each thread count: the wall time of ``sparsega.align`` (median of --repeats runs) with nothing else running,
then with one busy-loop process per --busy (default 1) beside it, and their ratio. Predictions are simulated once
at the network's image size. Run it on an otherwise idle machine; not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="orbit", choices=["orbit", "walk", "hemisphere"])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--graph", default="complete")
    ap.add_argument("--size", type=int, nargs=2, default=[384, 512], help="H W (network size)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="AlignConfig.threads values to time")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch threads of the caller (default: torch's)")
    ap.add_argument("--busy", type=int, default=1, help="number of CPU-bound processes beside the alignment")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    import sparsega
    from sparsega import sim
    from sparsega.frontend.pairs import make_pairs, unique_pairs

    h, w = args.size
    sc = sim.make_scene(args.kind, n_views=args.n, height=h, width=w, seed=0)
    preds = sim.simulate_predictions(sc, unique_pairs(make_pairs(args.n, args.graph)), seed=0)
    sparsega.align(preds, progress=False, niter1=2, niter2=2)  # compile / load the kernels once

    def timed(threads: int) -> float:
        walls = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sparsega.align(preds, progress=False, threads=threads)
            walls.append(time.perf_counter() - t0)
        return statistics.median(walls)

    rows = []
    for th in args.threads:
        quiet = timed(th)
        procs = [_busy() for _ in range(args.busy)]
        try:
            time.sleep(0.5)
            loaded = timed(th)
        finally:
            for p in procs:
                p.kill()
                p.wait()
        rows.append(
            {
                "threads": th,
                "quiet_wall_s": round(quiet, 3),
                "busy_wall_s": round(loaded, 3),
                "ratio": round(loaded / quiet, 3),
                "busy_processes": args.busy,
                "torch_threads": torch.get_num_threads(),
            }
        )
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    print(
        f"# bench_busy: {args.kind} {args.n} {args.graph} {h}x{w}, {platform.machine()} {os.cpu_count()} cores, "
        f"{args.busy} busy process(es), median of {args.repeats}"
    )
    print("| kernel threads | quiet wall s | beside busy s | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['quiet_wall_s']:.2f} | {r['busy_wall_s']:.2f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
