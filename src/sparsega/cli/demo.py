"""``sparsega demo``: a synthetic scene -> simulated predictions -> alignment -> accuracy table (no weights)."""

from __future__ import annotations

import argparse
import time

from .. import sim
from ..alignment.api import align
from ..errors import ConfigError
from ..evaluate import evaluate_by_index
from ..frontend.pairs import make_pairs, needs_similarity, parse_scene_graph
from ..frontend.retrieval import sift_similarity
from . import options

DEFAULTS = {"kind": "orbit", "n_views": 8, "height": 192, "width": 256, "seed": 0, "scene_graph": "complete"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="synthetic scene -> simulated predictions -> alignment -> accuracy table (no weights needed)"
    )
    p.add_argument("--kind", choices=sim.KINDS, default=DEFAULTS["kind"])
    p.add_argument("--n-views", type=int, default=DEFAULTS["n_views"], metavar="N")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--height", type=int, default=DEFAULTS["height"], metavar="H")
    p.add_argument("--width", type=int, default=DEFAULTS["width"], metavar="W")
    options.add_output(p, gt=False)  # the demo compares to its own ground truth
    options.add_align(p)
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg, _ = options.align_config(args)
    graph = args.scene_graph or DEFAULTS["scene_graph"]
    parse_scene_graph(graph)
    if args.n_views < 2:
        raise ConfigError(f"--n-views={args.n_views}: need at least 2 views")
    if args.height < 32 or args.width < 32:
        raise ConfigError(f"--height/--width {args.height}x{args.width}: must be >= 32")
    out = options.check_output(args)
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    gt = sim.make_scene(args.kind, n_views=args.n_views, height=args.height, width=args.width, seed=args.seed)
    t["synthetic_scene"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    similarity = sift_similarity(gt.images) if needs_similarity(graph) else None
    preds = sim.simulate_predictions(gt, make_pairs(args.n_views, graph, similarity=similarity), seed=args.seed)
    t["simulate_predictions"] = time.perf_counter() - t0
    names = [f"view_{k:03d}.png" for k in range(args.n_views)]
    paths = [str(out.resolve() / "images" / n) for n in names]
    t0 = time.perf_counter()
    result = align(preds, cfg, images=gt.images, image_paths=paths, components=True)
    t["align"] = time.perf_counter() - t0
    demo_info = {
        "demo": {
            "kind": args.kind,
            "n_views": args.n_views,
            "seed": args.seed,
            "height": args.height,
            "width": args.width,
            "scene_graph": graph,
            "extent": float(gt.extent),
        }
    }
    summary = options.write(
        args,
        result,
        "demo",
        t,
        image_paths=paths,
        extra=demo_info,
        evaluate=lambda sc: evaluate_by_index(sc, gt.cam2w, gt.intrinsics[:, 0, 0], gt.extent),
        extra_files={"truth": lambda folder: sim.write_truth(gt, folder, names)},
    )
    if not args.json:
        print(
            f"sparsega demo: {args.kind}, {args.n_views} views {args.width}x{args.height}, seed {args.seed}, "
            f"scene graph {graph}"
        )
        if summary.get("metrics"):
            print(options.metrics_table(summary["metrics"]))
        print(f"output: {out}")
    options.emit(args, summary)
    return 0
