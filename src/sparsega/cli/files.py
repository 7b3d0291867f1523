"""Commands on a saved output folder: ``export`` (re-export), ``eval`` (metrics against ground truth) and ``view``
(the browser viewer)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from ..evaluate import evaluate_scene
from ..io.camera_files import load_ground_truth
from ..io.export import export_all, parse_formats
from ..io.output import write_json
from ..scene import Scene
from . import options


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="(re-)export a saved output folder")
    p.add_argument("folder", metavar="OUT", help="an output folder holding scene/")
    p.add_argument(
        "--format",
        default="all",
        metavar="LIST",
        help="comma list of glb, ply, colmap, nerfstudio, cameras, depth, preview, scene, or all",
    )
    p.add_argument("-o", "--output", metavar="DEST", help="write into a new folder DEST instead of OUT")
    p.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    p.add_argument("--min-conf", type=float, default=None, metavar="X")
    options.add_common(p)
    p.set_defaults(func=run_export)

    p = sub.add_parser("eval", help="camera metrics of an output folder against ground truth")
    p.add_argument("folder", metavar="OUT")
    p.add_argument(
        "--gt",
        required=True,
        metavar="FILE",
        help="COLMAP model folder, cameras.json, transforms.json or JSON {name: cam2w 4x4}",
    )
    p.add_argument("--no-save", action="store_true", help="do not store the metrics in OUT/report.json")
    options.add_common(p)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("view", help="interactive 3D viewer in the browser (needs sparsega[viewer])")
    p.add_argument("folder", metavar="OUT")
    p.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--min-conf", type=float, default=None, metavar="X")
    options.add_common(p)
    p.set_defaults(func=run_view)


def _load_output(folder: str) -> Scene:
    f = Path(folder)
    if not f.is_dir():
        raise InputError(f"{f}: no such output folder")
    return Scene.load(f / "scene")


def run_export(args: argparse.Namespace) -> int:
    """Re-export a saved scene, in place or into a new folder."""
    fmts = parse_formats(args.format)
    min_conf = options.min_conf(args)
    scene = _load_output(args.folder)
    if args.output:
        dest = Path(args.output)
        timings = export_all(
            scene, dest, fmts, overwrite=args.overwrite, min_conf=min_conf, progress=options.progress(args)
        )
    else:
        dest = Path(args.folder)
        timings = export_all(
            scene,
            dest,
            [f for f in fmts if f != "scene"],
            merge=True,
            min_conf=min_conf,
            progress=options.progress(args),
        )
    options.emit(args, {"command": "export", "output": str(dest), "formats": list(timings), "timings_s": timings})
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Camera metrics of a saved output against ground truth; stored in report.json unless --no-save."""
    scene = _load_output(args.folder)
    metrics = evaluate_scene(scene, load_ground_truth(args.gt))
    if not args.no_save:
        rp = Path(args.folder) / "report.json"
        report = json.loads(rp.read_text()) if rp.is_file() else {}
        write_json(rp, {**report, "metrics": metrics, "metrics_gt": str(args.gt)})
    if not args.json:
        print(options.metrics_table(metrics))
    options.emit(args, {"command": "eval", "output": str(args.folder), "gt": str(args.gt), "metrics": metrics})
    return 0


def run_view(args: argparse.Namespace) -> int:
    """Serve the scene in the browser with viser."""
    from ..io.viewer import serve, viser_available

    if not viser_available():
        raise InputError("the viewer needs the optional package viser: pip install 'sparsega[viewer]'")
    scene = _load_output(args.folder)
    serve(scene, host=args.host, port=args.port, min_conf=options.min_conf(args))
    return 0
