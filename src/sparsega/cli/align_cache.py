"""``sparsega align-cache``: a cache folder written by naver's MASt3R + its images -> output folder."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from ..alignment.api import align
from ..alignment.components import ComponentResult
from ..errors import InputError
from ..frontend.images import collect_image_paths, load_images, photo_frames
from ..interop import read_mast3r_cache
from . import options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align-cache", help="align the predictions of a naver MASt3R cache folder")
    p.add_argument("cache_dir", metavar="CACHE_DIR")
    p.add_argument(
        "--images",
        nargs="+",
        required=True,
        metavar="IMAGE",
        help="the image paths EXACTLY as given to naver's tools (their md5 names the cache files); "
        "a single folder is expanded",
    )
    p.add_argument("--image-size", type=int, default=512, metavar="S", help="network image size (512)")
    options.add_output(p)
    options.add_align(p, scene_graph=False)
    options.add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg, _ = options.align_config(args)
    cache = Path(args.cache_dir)
    if not cache.is_dir():
        raise InputError(f"{cache}: cache folder not found")
    paths = list(args.images)
    if len(paths) == 1 and os.path.isdir(paths[0]):
        paths = collect_image_paths(paths)
    options.check_output(args)
    evaluate = options.gt_evaluator(args)
    t0 = time.perf_counter()
    loaded = load_images(paths, size=args.image_size)
    t = {"load_images": time.perf_counter() - t0}
    t0 = time.perf_counter()
    preds = read_mast3r_cache(cache, paths, subsample=cfg.subsample)
    t["read_cache"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = align(
        preds, cfg, images=[li.rgb for li in loaded], image_paths=paths, n_images=len(paths), components=True
    )
    t["align"] = time.perf_counter() - t0
    scenes = []
    for sc in result.scenes:
        net_to_orig, sizes = photo_frames([loaded[i] for i in sc.image_index])
        scenes.append(dataclasses.replace(sc, net_to_orig=net_to_orig, original_sizes=sizes))
    result = ComponentResult(scenes, result.unregistered)
    summary = options.write(
        args,
        result,
        "align-cache",
        t,
        image_paths=paths,
        evaluate=evaluate,
        extra={"cache_dir": str(cache), "images": paths},
    )
    return options.finish(args, summary)
