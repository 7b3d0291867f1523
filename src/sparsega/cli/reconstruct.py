"""``sparsega reconstruct``: photos + MASt3R checkpoint -> output folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..frontend.cache import STORAGE_CHOICES
from ..frontend.images import collect_image_paths
from ..frontend.pairs import parse_scene_graph
from ..frontend.retrieval import SIMILARITIES
from ..io.camera_files import load_ground_truth, load_intrinsics_file, match_image_names
from ..pipeline import reconstruct
from . import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="photos + MASt3R checkpoint -> output folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-c", "--checkpoint", required=True, metavar="PATH", help="MASt3R checkpoint (.pth)")
    p.add_argument("--cache-dir", metavar="DIR", help="cache network predictions here")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="S",
        help="network image size (long side; default: the checkpoint's, 512)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run the pair inference on Ray workers: a local cluster, or the cluster at ADDRESS "
        "(host:port; then --cache-dir must be on a file system all nodes share); needs "
        "pip install 'sparsega[ray]'",
    )
    p.add_argument("--workers", type=int, default=2, metavar="N", help="Ray workers (with --ray; default 2)")
    p.add_argument(
        "--extend",
        metavar="OLD_OUT",
        help="add the photos to the reconstruction saved in OLD_OUT (its cameras stay fixed); writes the union to -o",
    )
    p.add_argument(
        "--retrieval",
        choices=SIMILARITIES,
        default="encoder",
        help="image similarity of retrieval-* scene graphs (encoder: the network's tokens; sift)",
    )
    p.add_argument(
        "--storage",
        choices=STORAGE_CHOICES,
        default="compact",
        help="how pair predictions are kept in memory and in the cache: compact (float16, cross-frame maps on every "
        "4th pixel: what the alignment reads, a quarter of the bytes; default) or float32 (lossless)",
    )
    options.add_output(p)
    options.add_align(p)
    options.add_known(p)
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _, overrides = options.align_config(args)
    graph = args.scene_graph or "swin-5"
    parse_scene_graph(graph)
    paths = collect_image_paths(args.inputs)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise InputError(f"{ckpt}: checkpoint file not found")
    options.check_output(args)
    evaluate = options.gt_evaluator(args)
    kw: dict[str, Any] = dict(overrides)
    if args.cache_dir:
        kw["cache_dir"] = args.cache_dir
    if args.image_size:
        kw["size"] = args.image_size
    if args.ray is not None:
        kw.update(executor="ray", ray_address=None if args.ray == "local" else args.ray, workers=args.workers)
    if args.intrinsics:
        kw["known_intrinsics"] = match_image_names(load_intrinsics_file(args.intrinsics), paths, args.intrinsics)
    if args.poses:
        poses = load_ground_truth(args.poses)
        kw["known_poses"] = match_image_names({k: v["cam2w"] for k, v in poses.items()}, paths, args.poses)
    t0 = time.perf_counter()
    if args.extend:
        kw["extend"] = args.extend
    result = reconstruct(
        paths, str(ckpt), scene_graph=graph, components=True, retrieval=args.retrieval, storage=args.storage, **kw
    )
    t = {"reconstruct": time.perf_counter() - t0}
    summary = options.write(
        args,
        result,
        "reconstruct",
        t,
        image_paths=paths,
        evaluate=evaluate,
        extra={"inputs": paths, "checkpoint": str(ckpt), "scene_graph": graph, "storage": args.storage},
    )
    return options.finish(args, summary)
