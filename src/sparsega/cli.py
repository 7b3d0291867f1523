"""The ``sparsega`` command line: a thin layer over the library.

Commands: ``demo`` (synthetic scene, no weights), ``reconstruct`` (photos + checkpoint), ``align-cache`` (a naver
MASt3R cache folder), ``export`` (re-export a saved output), ``eval`` (compare to ground-truth cameras), ``view``
(browser viewer, optional ``viser``).

Exit codes: 0 success; 2 bad input or option (one line ``sparsega: error: ...`` on stderr); 1 unexpected internal
error (short message; ``--debug`` shows the traceback). Logs go to stderr; ``--json`` prints one summary object on
stdout; ``--quiet`` silences progress bars and info logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError, InputError, SparsegaError
from .types import CANONICAL_MODES, DTYPES, KINEMATIC_MODES, LOSS_BACKENDS, POSE_INITS, AlignConfig

log = logging.getLogger("sparsega")

PROG = "sparsega"
DEMO_DEFAULTS = {"kind": "orbit", "n_views": 8, "height": 192, "width": 256, "seed": 0, "scene_graph": "complete"}
# AlignConfig fields exposed as flags: dest -> type (None = store_true)
ALIGN_FLAGS: dict[str, Any] = {
    "subsample": int, "matching_conf_thr": float, "canonical_mode": str, "kinematic_mode": str,
    "niter1": int, "niter2": int, "lr1": float, "lr2": float, "shared_intrinsics": None,
    "device": str, "dtype": str, "fix_intrinsics": None, "fix_poses": None,
    "pose_init": str, "lr1_procrustes": float, "loss_backend": str, "threads": int,
}


class UsageError(Exception):
    """An argparse error, turned into exit code 2 by :func:`main`."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(message)


# --------------------------------------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output and logging")
    g.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    g.add_argument("--json", action="store_true", help="print one machine-readable summary object on stdout")
    g.add_argument("--debug", action="store_true", help="debug logs and full tracebacks")


def _output(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-o", "--output", required=required, metavar="OUT", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--min-conf", type=float, default=None, metavar="X",
                   help="confidence threshold of the exported points (default 1.5)")
    p.add_argument("--gt", metavar="FILE", help="ground-truth cameras (COLMAP model folder or JSON) for metrics")


def _align(p: argparse.ArgumentParser, scene_graph: bool = True) -> None:
    g = p.add_argument_group("alignment (defaults: the reference's)")
    if scene_graph:
        g.add_argument("--scene-graph", metavar="NAME", default=None,
                       help="complete, swin[-k][-noncyclic], logwin[-k][-noncyclic], oneref[-i]")
    g.add_argument("--subsample", type=int, metavar="N", help="match/anchor grid step in pixels (8)")
    g.add_argument("--matching-conf-thr", type=float, metavar="X", help="pair trusted above this match conf (5.0)")
    g.add_argument("--canonical-mode", choices=CANONICAL_MODES, help="canonical pointmap fusion (avg-angle)")
    g.add_argument("--kinematic-mode", choices=KINEMATIC_MODES, help="spanning tree of the poses (hclust-ward)")
    g.add_argument("--niter1", type=int, metavar="N", help="stage-1 iterations (300)")
    g.add_argument("--niter2", type=int, metavar="N", help="stage-2 iterations (300)")
    g.add_argument("--lr1", type=float, metavar="X", help="stage-1 learning rate (0.07)")
    g.add_argument("--lr2", type=float, metavar="X", help="stage-2 learning rate (0.01)")
    g.add_argument("--pose-init", choices=POSE_INITS,
                   help="stage-1 start: chained pairwise Procrustes poses (procrustes) or the reference's identity")
    g.add_argument("--lr1-procrustes", type=float, metavar="X",
                   help="stage-1 learning rate when starting from the Procrustes poses (default: --lr1)")
    g.add_argument("--loss-backend", choices=LOSS_BACKENDS,
                   help="loss implementation: compiled kernels on CPU (auto), or the plain autograd twin")
    g.add_argument("--threads", type=int, metavar="N",
                   help="threads of the compiled alignment kernels (1; 0 = torch's count); results do not depend "
                        "on it")
    g.add_argument("--shared-intrinsics", action="store_true", default=None, help="one camera for all images")
    g.add_argument("--device", metavar="DEV", help="cpu or cuda[:k] (cpu)")
    g.add_argument("--dtype", choices=DTYPES, help="optimisation precision (float32)")


def _known(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("known cameras (names in the files are matched to image paths or file names)")
    g.add_argument("--intrinsics", metavar="FILE",
                   help="a COLMAP model folder, or a JSON {name: 3x3 K} in ORIGINAL pixels (pixel centres at "
                        "integer coordinates)")
    g.add_argument("--poses", metavar="FILE",
                   help="known cam2w (OpenCV) for some or all images: a COLMAP model folder, cameras.json, "
                        "transforms.json or a JSON {name: 4x4}")
    g.add_argument("--fix-intrinsics", action=argparse.BooleanOptionalAction, default=None,
                   help="keep given intrinsics fixed (default) or use them as initial values only")
    g.add_argument("--fix-poses", action=argparse.BooleanOptionalAction, default=None,
                   help="keep given poses fixed (default) or use them as soft priors")


def load_intrinsics_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Known intrinsics keyed by image name: ``{name: K (3, 3)}`` in original pixels, pixel centres at integer
    coordinates. Reads a COLMAP model folder (whose principal points put the origin at the image corner, hence
    the -0.5) or a JSON ``{name: K}`` / ``{name: {"K": K}}`` / our ``cameras.json``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such intrinsics file or folder")
    out: dict[str, np.ndarray] = {}
    if p.is_dir():
        import pycolmap

        for cand in (p, p / "sparse" / "0", p / "sparse", p / "colmap" / "sparse" / "0"):
            if (cand / "cameras.bin").is_file() or (cand / "cameras.txt").is_file():
                break
        else:
            raise InputError(f"{p}: not a COLMAP model folder (no cameras.bin / cameras.txt)")
        try:
            rec = pycolmap.Reconstruction(str(cand))
        except Exception as e:  # noqa: BLE001 - pycolmap raises various types
            raise InputError(f"{cand}: cannot read COLMAP model ({_one_line(e)})") from None
        for img in rec.images.values():
            K = np.asarray(rec.cameras[img.camera_id].calibration_matrix(), np.float64).copy()
            K[:2, 2] -= 0.5
            out[img.name] = K
        return out
    try:
        data = json.loads(p.read_text())
        items = ([(it["name"], it["K"]) for it in data["images"]] if isinstance(data, dict)
                 and isinstance(data.get("images"), list) else
                 [(k, v["K"] if isinstance(v, dict) else v) for k, v in data.items()])
        for name, K in items:
            out[str(name)] = np.asarray(K, np.float64)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{p}: malformed intrinsics file ({type(e).__name__}: {e})") from None
    return out


def _by_image(table: dict[str, Any], paths: Sequence[str], what: str) -> dict[str, Any]:
    """Re-key a {name: value} table by the image paths it refers to (exact path, file name or path suffix)."""
    out: dict[str, Any] = {}
    for name, value in table.items():
        if name.startswith("__"):
            continue
        hits = [q for q in paths if q == name or Path(q).name == name or q.endswith("/" + name.lstrip("/"))]
        if not hits:
            raise InputError(f"{what}: unknown image name {name!r} (not among the inputs)")
        if len(hits) > 1:
            raise InputError(f"{what}: image name {name!r} matches several inputs")
        out[hits[0]] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``sparsega`` argument parser (subcommands, shared flags)."""
    from . import __version__

    parser = _Parser(prog=PROG, description="MASt3R sparse global alignment: photos -> cameras, depth, points.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("demo", help="synthetic scene -> simulated predictions -> alignment -> accuracy table "
                                    "(no weights needed)")
    p.add_argument("--kind", choices=("orbit", "walk", "hemisphere"), default=DEMO_DEFAULTS["kind"])
    p.add_argument("--n-views", type=int, default=DEMO_DEFAULTS["n_views"], metavar="N")
    p.add_argument("--seed", type=int, default=DEMO_DEFAULTS["seed"])
    p.add_argument("--height", type=int, default=DEMO_DEFAULTS["height"], metavar="H")
    p.add_argument("--width", type=int, default=DEMO_DEFAULTS["width"], metavar="W")
    _output(p)
    _align(p)
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("reconstruct", help="photos + MASt3R checkpoint -> output folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-c", "--checkpoint", required=True, metavar="PATH", help="MASt3R checkpoint (.pth)")
    p.add_argument("--cache-dir", metavar="DIR", help="cache network predictions here")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="network image size (long side; default: the checkpoint's, 512)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the pair inference on Ray workers: a local cluster, or the cluster at ADDRESS "
                        "(host:port; then --cache-dir must be on a file system all nodes share); needs "
                        "pip install 'sparsega[ray]'")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="Ray workers (with --ray; default 2)")
    _output(p)
    _align(p)
    _known(p)
    _common(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("align-cache", help="align the predictions of a naver MASt3R cache folder")
    p.add_argument("cache_dir", metavar="CACHE_DIR")
    p.add_argument("--images", nargs="+", required=True, metavar="IMAGE",
                   help="the image paths EXACTLY as given to naver's tools (their md5 names the cache files); "
                        "a single folder is expanded")
    p.add_argument("--image-size", type=int, default=512, metavar="S", help="network image size (512)")
    _output(p)
    _align(p, scene_graph=False)
    _common(p)
    p.set_defaults(func=cmd_align_cache)

    p = sub.add_parser("export", help="(re-)export a saved output folder")
    p.add_argument("folder", metavar="OUT", help="an output folder holding scene/")
    p.add_argument("--format", default="all", metavar="LIST",
                   help="comma list of glb, ply, colmap, nerfstudio, cameras, depth, preview, scene, or all")
    p.add_argument("-o", "--output", metavar="DEST", help="write into a new folder DEST instead of OUT")
    p.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    p.add_argument("--min-conf", type=float, default=None, metavar="X")
    _common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="camera metrics of an output folder against ground truth")
    p.add_argument("folder", metavar="OUT")
    p.add_argument("--gt", required=True, metavar="FILE",
                   help="COLMAP model folder, cameras.json, transforms.json or JSON {name: cam2w 4x4}")
    p.add_argument("--no-save", action="store_true", help="do not store the metrics in OUT/report.json")
    _common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("view", help="interactive 3D viewer in the browser (needs sparsega[viewer])")
    p.add_argument("folder", metavar="OUT")
    p.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--min-conf", type=float, default=None, metavar="X")
    _common(p)
    p.set_defaults(func=cmd_view)
    return parser


# --------------------------------------------------------------------------------------------------- helpers
def _setup_logging(args: argparse.Namespace) -> Callable[[], None]:
    """Route the package's logs to stderr for this command; returns a function restoring the previous state
    (``main`` may be called in-process, e.g. by tests)."""
    level = logging.DEBUG if args.debug else logging.WARNING if (args.quiet or args.json) else logging.INFO
    root = logging.getLogger("sparsega")
    saved = (list(root.handlers), root.level, root.propagate)
    for h in list(root.handlers):
        if getattr(h, "_sparsega_cli", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if args.debug
                                           else "sparsega: %(message)s"))
    handler._sparsega_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False

    def restore() -> None:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]

    return restore


def align_config(args: argparse.Namespace) -> tuple[AlignConfig, dict[str, Any]]:
    """AlignConfig from the flags the user gave (validated now, before any work) and those overrides by name."""
    overrides = {k: getattr(args, k) for k in ALIGN_FLAGS if getattr(args, k, None) is not None}
    overrides["progress"] = not (args.quiet or args.json)
    return AlignConfig().replace(**overrides), overrides


def _check_output(args: argparse.Namespace) -> Path:
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.exists() and not args.overwrite:
        raise InputError(f"{out}: output folder exists (use --overwrite to replace it)")
    base = out.absolute().parent  # the output is staged next to OUT: its first existing ancestor must be writable
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise InputError(f"{out}: cannot create the output folder ({base} is not a folder)")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{out}: cannot create the output folder ({base} is not writable)")
    return out


def _min_conf(args: argparse.Namespace) -> float:
    from .io.export import DEFAULT_MIN_CONF

    v = getattr(args, "min_conf", None)
    if v is None:
        return DEFAULT_MIN_CONF
    if not np.isfinite(v):
        raise ConfigError(f"--min-conf={v}: must be finite")
    return float(v)


def _counts(scene: Any, min_conf: float) -> dict[str, Any]:
    stats = scene.info.get("stats", {}) if isinstance(scene.info, dict) else {}
    return {
        "n_images": scene.n_images,
        "n_pairs": stats.get("n_pairs"),
        "n_matches": stats.get("n_matches"),
        "n_points_dense": int(sum(int(m.sum()) for m in scene.masks(min_conf))),
        "n_points_sparse": int(sum(len(xy) for xy in scene.sparse_xy)),
    }


def _json_default(o: Any) -> Any:
    """The scene's JSON conversions (numpy, paths), anything else as its string (reports must never fail)."""
    from .scene import json_default

    try:
        return json_default(o)
    except TypeError:
        return str(o)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _emit(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(summary, default=_json_default) + "\n")
        sys.stdout.flush()


def metrics_table(metrics: dict[str, Any]) -> str:
    """A small human-readable table of the main camera metrics."""
    rows = [
        ("RRA@5 (%)", "rra5", 100.0), ("RTA@5 (%)", "rta5", 100.0), ("median rotation error (deg)", "rot_err_med", 1.0),
        ("ATE (% of extent)", "ate_rel", 100.0), ("median focal error (%)", "focal_err_med", 100.0),
        ("mAA@30 (%)", "maa30", 100.0),
    ]
    lines = [f"{'metric':<30}{'value':>10}", "-" * 40]
    for label, key, scale in rows:
        v = metrics.get(key)
        if v is not None and np.isfinite(v):
            lines.append(f"{label:<30}{float(v) * scale:>10.3f}")
    return "\n".join(lines)


def clean_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Plain-float metrics with NaN/inf replaced by None (valid JSON)."""
    out: dict[str, Any] = {}
    for k, v in dict(metrics).items():
        v = v.item() if isinstance(v, np.generic) else v
        out[k] = None if isinstance(v, float) and not np.isfinite(v) else v
    return out


# ---------------------------------------------------------------------------------------- ground truth / eval
def load_ground_truth(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Ground-truth cameras keyed by image name: ``{name: {"cam2w": (4,4), "focal": float | None}}`` (+ an
    ``"__extent__"`` entry when the file gives one). Reads a COLMAP model folder (binary or text), our
    ``cameras.json``, a nerfstudio ``transforms.json`` or a JSON ``{name: 4x4}`` / ``{name: {"cam2w": ...}}``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such ground-truth file or folder")
    out: dict[str, dict[str, Any]] = {}
    if p.is_dir():
        import pycolmap

        model = p
        for cand in (p, p / "sparse" / "0", p / "sparse", p / "colmap" / "sparse" / "0"):
            if (cand / "images.bin").is_file() or (cand / "images.txt").is_file():
                model = cand
                break
        else:
            raise InputError(f"{p}: not a COLMAP model folder (no images.bin / images.txt)")
        try:
            rec = pycolmap.Reconstruction(str(model))
        except Exception as e:  # noqa: BLE001 - pycolmap raises various types
            raise InputError(f"{model}: cannot read COLMAP model ({str(e).splitlines()[0] if str(e) else e})") from None
        for img in rec.images.values():
            if not img.has_pose:
                continue
            m = np.eye(4)
            m[:3, :4] = img.cam_from_world().matrix()
            cam = rec.cameras[img.camera_id]
            out[img.name] = {"cam2w": np.linalg.inv(m), "focal": float(cam.focal_length_x)}
        return out
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: not a readable JSON file ({e})") from None
    try:
        if isinstance(data, dict) and isinstance(data.get("images"), list):  # our cameras.json
            for item in data["images"]:
                K = item.get("K")
                out[str(item["name"])] = {"cam2w": np.asarray(item["cam2w"], np.float64),
                                          "focal": float(np.asarray(K)[0, 0]) if K is not None else None}
                if item.get("path"):
                    out[str(item["name"])]["path"] = str(item["path"])
        elif isinstance(data, dict) and isinstance(data.get("frames"), list):  # nerfstudio
            from .io.export import CV_TO_GL

            for fr in data["frames"]:
                c2w = np.asarray(fr["transform_matrix"], np.float64) @ CV_TO_GL
                f = fr.get("fl_x", data.get("fl_x"))
                out[str(fr["file_path"])] = {"cam2w": c2w, "focal": float(f) if f is not None else None}
        elif isinstance(data, dict):
            for name, v in data.items():
                if name == "extent":
                    continue
                if isinstance(v, dict):
                    focal = v.get("focal")
                    if focal is None and v.get("K") is not None:
                        focal = np.asarray(v["K"])[0, 0]
                    out[str(name)] = {"cam2w": np.asarray(v["cam2w"], np.float64),
                                      "focal": float(focal) if focal is not None else None}
                else:
                    out[str(name)] = {"cam2w": np.asarray(v, np.float64), "focal": None}
        else:
            raise InputError(f"{p}: expected a JSON object of cameras")
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{p}: malformed ground-truth cameras ({type(e).__name__}: {e})") from None
    for name, v in out.items():
        if v["cam2w"].shape != (4, 4) or not np.isfinite(v["cam2w"]).all():
            raise InputError(f"{p}: camera {name!r} is not a finite 4x4 matrix")
    if isinstance(data, dict) and isinstance(data.get("extent"), (int, float)):
        out["__extent__"] = {"extent": float(data["extent"])}
    return out


def evaluate_scene(scene: Any, gt: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Camera metrics of ``scene`` against ground truth matched by image name (full path, export name or file
    name). Focals compared in original pixels."""
    from . import metrics
    from .io.export import image_names, original_intrinsics

    extent = gt.get("__extent__", {}).get("extent")
    cams = {k: v for k, v in gt.items() if k != "__extent__"}
    by_base: dict[str, str] = {}
    for k, v in cams.items():
        for key in (k, os.path.basename(k), os.path.basename(v.get("path", "")) if v.get("path") else None):
            if key:
                by_base.setdefault(key, k)
    names = image_names(scene)
    idx, keys = [], []
    for i, (path, name) in enumerate(zip(scene.image_paths, names)):
        for cand in (str(path), name, os.path.basename(str(path))):
            if cand in cams or cand in by_base:
                idx.append(i)
                keys.append(cand if cand in cams else by_base[cand])
                break
    if len(idx) < 2:
        raise InputError(f"ground truth matches {len(idx)} of the {scene.n_images} images by name (need >= 2)")
    if len(idx) < scene.n_images:
        log.warning("ground truth covers %d of %d images; evaluating those", len(idx), scene.n_images)
    gt_c2w = np.stack([cams[k]["cam2w"] for k in keys])
    est_c2w = scene.cam2w[idx].astype(np.float64)
    est_f = original_intrinsics(scene)[idx, 0, 0]
    gt_f_list = [cams[k]["focal"] for k in keys]
    has_f = all(f is not None for f in gt_f_list)
    gt_f = np.asarray(gt_f_list, np.float64) if has_f else est_f.copy()
    if extent is None:
        centres = gt_c2w[:, :3, 3]
        extent = float(np.linalg.norm(centres.max(0) - centres.min(0))) or 1.0
    res = dict(metrics.camera_metrics(est_c2w, gt_c2w, est_f, gt_f, extent))
    if not has_f:
        res = {k: v for k, v in res.items() if "focal" not in k}
    res["n_evaluated"] = len(idx)
    return clean_metrics(res)


# ----------------------------------------------------------------------------------------------- the writer
def write_output(scene: Any, args: argparse.Namespace, command: str, timings: dict[str, float],
                 metrics: dict[str, Any] | None, extra: dict[str, Any] | None = None,
                 extra_files: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every export, ``report.json`` (and ``extra_files``: name -> callable(folder)) into ``args.output``
    atomically; return the summary."""
    from . import __version__
    from .io.export import export_to, staged_dir

    out = Path(args.output)
    min_conf = _min_conf(args)
    t0 = time.perf_counter()
    with staged_dir(out, overwrite=args.overwrite) as tmp:
        for _name, fn in (extra_files or {}).items():
            fn(tmp)
        export_t = export_to(scene, tmp, "all", min_conf=min_conf, base_dir=out.resolve(),
                             progress=not (args.quiet or args.json))
        timings = {**timings, "export": time.perf_counter() - t0, "export_per_format": export_t}
        info = scene.info if isinstance(scene.info, dict) else {}
        report = {
            "sparsega_version": __version__,
            "command": command,
            "argv": list(getattr(args, "_argv", [])),
            "output": str(out),
            "config": info.get("config"),
            "timings_s": {**timings, "align": info.get("timings_s")},
            "counts": _counts(scene, min_conf),
            "losses": info.get("stages"),
            "metrics": metrics,
            "min_conf": min_conf,
            **(extra or {}),
        }
        _write_json(tmp / "report.json", report)
    return {"command": command, "output": str(out), "report": str(out / "report.json"),
            "counts": report["counts"], "timings_s": report["timings_s"], "metrics": metrics}



def align_or_split(preds: Sequence[Any], cfg: AlignConfig, **kw: Any) -> tuple[Any, Any]:
    """``(scene, None)`` when the match graph is connected, else ``(None, ComponentResult)`` with one Scene per
    component of >= 2 views (see :mod:`sparsega.alignment.components`: pairs without any match do not link)."""
    from .alignment.api import align
    from .alignment.components import align_components, split_components

    if split_components(preds, kw.get("n_images")).connected:
        return align(preds, cfg, **kw), None
    return None, align_components(list(preds), cfg, **kw)


def write_components(result: Any, args: argparse.Namespace, command: str, timings: dict[str, float],
                     image_paths: Sequence[str], metrics_fn: Any = None, extra: dict[str, Any] | None = None,
                     extra_files: dict[str, Any] | None = None) -> dict[str, Any]:
    """The match graph split: write component k into ``OUT/component_k/`` (every export + its report.json) and a
    top-level ``report.json`` saying which images went where (and which are unregistered), atomically.
    ``metrics_fn(scene) -> dict | None`` evaluates one component."""
    from . import __version__
    from .io.export import export_to, staged_dir

    out = Path(args.output)
    min_conf = _min_conf(args)
    t0 = time.perf_counter()
    comps: list[dict[str, Any]] = []
    unregistered = [str(image_paths[i]) for i in result.unregistered]
    with staged_dir(out, overwrite=args.overwrite) as tmp:
        for _name, fn in (extra_files or {}).items():
            fn(tmp)
        for k, scene in enumerate(result.scenes):
            name = f"component_{k}"
            idx = [int(i) for i in scene.info["component_images"]]
            metrics = metrics_fn(scene) if metrics_fn is not None and scene.n_images >= 2 else None
            (tmp / name).mkdir()
            export_t = export_to(scene, tmp / name, "all", min_conf=min_conf, base_dir=(out / name).resolve(),
                                 progress=not (args.quiet or args.json))
            entry = {"folder": name, "images": [str(image_paths[i]) for i in idx], "image_indices": idx,
                     "counts": _counts(scene, min_conf), "metrics": metrics}
            _write_json(tmp / name / "report.json", {
                "sparsega_version": __version__, "command": command, "component": k, **entry,
                "config": scene.info.get("config"), "losses": scene.info.get("stages"),
                "timings_s": {"align": scene.info.get("timings_s"), "export_per_format": export_t},
                "min_conf": min_conf})
            comps.append(entry)
        timings = {**timings, "export": time.perf_counter() - t0}
        _write_json(tmp / "report.json", {
            "sparsega_version": __version__, "command": command, "argv": list(getattr(args, "_argv", [])),
            "output": str(out), "timings_s": timings, "components": comps, "unregistered": unregistered,
            "min_conf": min_conf, **(extra or {})})
    log.warning("the images split into %d reconstruction(s), written to %s; %d unregistered image(s)%s",
                len(comps), ", ".join(str(out / c["folder"]) for c in comps), len(unregistered),
                f": {', '.join(unregistered)}" if unregistered else "")
    return {"command": command, "output": str(out), "report": str(out / "report.json"),
            "components": [{k: c[k] for k in ("folder", "images", "counts", "metrics")} for c in comps],
            "unregistered": unregistered, "timings_s": timings}


# ------------------------------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic scene -> simulated predictions -> alignment -> metrics table -> output folder."""
    from PIL import Image

    from .frontend.pairs import make_pairs, parse_scene_graph

    cfg, _ = align_config(args)
    graph = args.scene_graph or DEMO_DEFAULTS["scene_graph"]
    parse_scene_graph(graph)
    if args.n_views < 2:
        raise ConfigError(f"--n-views={args.n_views}: need at least 2 views")
    if args.height < 32 or args.width < 32:
        raise ConfigError(f"--height/--width {args.height}x{args.width}: must be >= 32")
    out = _check_output(args)
    from . import metrics as metrics_mod
    from . import sim

    t = {}
    t0 = time.perf_counter()
    gt = sim.make_scene(args.kind, n_views=args.n_views, height=args.height, width=args.width, seed=args.seed)
    t["synthetic_scene"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    preds = sim.simulate_predictions(gt, make_pairs(args.n_views, graph), seed=args.seed)
    t["simulate_predictions"] = time.perf_counter() - t1
    names = [f"view_{k:03d}.png" for k in range(args.n_views)]
    final = out.resolve()
    paths = [str(final / "images" / n) for n in names]
    t2 = time.perf_counter()
    scene, split = align_or_split(preds, cfg, images=gt.images, image_paths=paths)
    t["align"] = time.perf_counter() - t2

    def write_images(folder: Path) -> None:
        (folder / "images").mkdir()
        for n, im in zip(names, gt.images):
            Image.fromarray(np.asarray(im, np.uint8)).save(folder / "images" / n)
        gt_doc = {"extent": float(gt.extent), "images": [
            {"name": n, "cam2w": np.asarray(c, np.float64).tolist(), "K": np.asarray(K, np.float64).tolist()}
            for n, c, K in zip(names, gt.cam2w, gt.intrinsics)]}
        _write_json(folder / "ground_truth.json", gt_doc)

    def scene_metrics(sc: Any, idx: Any = slice(None)) -> dict[str, Any]:
        return clean_metrics(metrics_mod.camera_metrics(
            sc.cam2w.astype(np.float64), np.asarray(gt.cam2w, np.float64)[idx], sc.focals.astype(np.float64),
            np.asarray(gt.intrinsics)[idx, 0, 0], float(gt.extent)))

    demo_info = {"demo": {"kind": args.kind, "n_views": args.n_views, "seed": args.seed, "height": args.height,
                          "width": args.width, "scene_graph": graph, "extent": float(gt.extent)}}
    if split is not None:
        summary = write_components(split, args, "demo", t, paths,
                                   metrics_fn=lambda sc: scene_metrics(sc, sc.info["component_images"]),
                                   extra=demo_info, extra_files={"images": write_images})
        _emit(args, summary)
        return 0
    metrics = scene_metrics(scene)
    summary = write_output(scene, args, "demo", t, metrics, extra=demo_info, extra_files={"images": write_images})
    if not args.json:
        print(f"sparsega demo: {args.kind}, {args.n_views} views {args.width}x{args.height}, seed {args.seed}, "
              f"scene graph {graph}")
        print(metrics_table(metrics))
        print(f"output: {out}")
    _emit(args, summary)
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """Photos + checkpoint -> output folder."""
    from .frontend.images import collect_image_paths
    from .frontend.pairs import parse_scene_graph

    cfg, overrides = align_config(args)
    graph = args.scene_graph or "swin-5"
    parse_scene_graph(graph)
    paths = collect_image_paths(args.inputs)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise InputError(f"{ckpt}: checkpoint file not found")
    _check_output(args)
    gt = load_ground_truth(args.gt) if args.gt else None
    from .pipeline import reconstruct

    kw: dict[str, Any] = dict(overrides)
    if args.cache_dir:
        kw["cache_dir"] = args.cache_dir
    if args.image_size:
        kw["size"] = args.image_size
    if args.ray is not None:
        kw.update(executor="ray", ray_address=None if args.ray == "local" else args.ray, workers=args.workers)
    if args.intrinsics:
        kw["known_intrinsics"] = _by_image(load_intrinsics_file(args.intrinsics), paths, args.intrinsics)
    if args.poses:
        gt_poses = load_ground_truth(args.poses)
        kw["known_poses"] = _by_image({k: v["cam2w"] for k, v in gt_poses.items()}, paths, args.poses)
    t0 = time.perf_counter()
    scene = reconstruct(paths, str(ckpt), scene_graph=graph, **kw)
    t = {"reconstruct": time.perf_counter() - t0}
    metrics = evaluate_scene(scene, gt) if gt is not None else None
    summary = write_output(scene, args, "reconstruct", t, metrics,
                           extra={"inputs": paths, "checkpoint": str(ckpt), "scene_graph": graph})
    if metrics and not args.json:
        print(metrics_table(metrics))
    _emit(args, summary)
    return 0


def cmd_align_cache(args: argparse.Namespace) -> int:
    """naver MASt3R cache folder + the images -> output folder."""
    cfg, _ = align_config(args)
    cache = Path(args.cache_dir)
    if not cache.is_dir():
        raise InputError(f"{cache}: cache folder not found")
    from .frontend.images import collect_image_paths, load_images
    from .interop import read_mast3r_cache

    paths = list(args.images)
    if len(paths) == 1 and os.path.isdir(paths[0]):
        paths = collect_image_paths(paths)
    _check_output(args)
    gt = load_ground_truth(args.gt) if args.gt else None
    t0 = time.perf_counter()
    loaded = load_images(paths, size=args.image_size)
    t = {"load_images": time.perf_counter() - t0}
    t1 = time.perf_counter()
    preds = read_mast3r_cache(cache, paths, subsample=cfg.subsample)
    t["read_cache"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    scene, split = align_or_split(preds, cfg, images=[li.rgb for li in loaded], image_paths=paths,
                                  n_images=len(paths))
    t["align"] = time.perf_counter() - t2
    net_to_orig = np.stack([li.intrinsics_to_original(np.eye(3)) for li in loaded])
    if split is not None:
        for sc in split.scenes:
            idx = sc.info["component_images"]
            sc.net_to_orig = net_to_orig[idx]
            sc.info["original_sizes"] = [list(loaded[i].original_size) for i in idx]
        summary = write_components(split, args, "align-cache", t, paths,
                                   metrics_fn=(lambda sc: evaluate_scene(sc, gt)) if gt is not None else None,
                                   extra={"cache_dir": str(cache), "images": paths})
        _emit(args, summary)
        return 0
    scene.net_to_orig = net_to_orig
    scene.info["original_sizes"] = [list(li.original_size) for li in loaded]
    metrics = evaluate_scene(scene, gt) if gt is not None else None
    summary = write_output(scene, args, "align-cache", t, metrics, extra={"cache_dir": str(cache),
                                                                          "images": paths})
    if metrics and not args.json:
        print(metrics_table(metrics))
    _emit(args, summary)
    return 0


def _load_output(folder: str) -> Any:
    from .scene import Scene

    f = Path(folder)
    if not f.is_dir():
        raise InputError(f"{f}: no such output folder")
    return Scene.load(f / "scene")


def cmd_export(args: argparse.Namespace) -> int:
    """Re-export a saved scene, in place or into a new folder."""
    from .io.export import export_all, parse_formats

    fmts = parse_formats(args.format)
    min_conf = _min_conf(args)
    scene = _load_output(args.folder)
    if args.output:
        dest = Path(args.output)
        timings = export_all(scene, dest, fmts, overwrite=args.overwrite, min_conf=min_conf,
                             progress=not (args.quiet or args.json))
    else:
        dest = Path(args.folder)
        timings = export_all(scene, dest, [f for f in fmts if f != "scene"], merge=True, min_conf=min_conf,
                             progress=not (args.quiet or args.json))
    log.info("exported %s to %s", ", ".join(timings), dest)
    _emit(args, {"command": "export", "output": str(dest), "formats": list(timings), "timings_s": timings})
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Camera metrics of a saved output against ground truth; stored in report.json unless --no-save."""
    scene = _load_output(args.folder)
    gt = load_ground_truth(args.gt)
    metrics = evaluate_scene(scene, gt)
    if not args.no_save:
        rp = Path(args.folder) / "report.json"
        report = json.loads(rp.read_text()) if rp.is_file() else {}
        report["metrics"] = metrics
        report["metrics_gt"] = str(args.gt)
        _write_json(rp, report)
    if not args.json:
        print(metrics_table(metrics))
    _emit(args, {"command": "eval", "output": str(args.folder), "gt": str(args.gt), "metrics": metrics})
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """Serve the scene in the browser with viser."""
    from .io.viewer import serve, viser_available

    if not viser_available():
        raise InputError("the viewer needs the optional package viser: pip install 'sparsega[viewer]'")
    scene = _load_output(args.folder)
    serve(scene, host=args.host, port=args.port, min_conf=_min_conf(args))
    return 0


# ----------------------------------------------------------------------------------------------------- main
def _one_line(msg: object) -> str:
    return " ".join(str(msg).split()) or "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsega`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        sys.stderr.write(f"{PROG}: error: {_one_line(e)}\n")
        return 2
    except SystemExit as e:  # --help / --version
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else 2
    args._argv = argv
    restore_logging = _setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except SparsegaError as e:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{PROG}: error: {_one_line(e)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{PROG}: internal error: {type(e).__name__}: {_one_line(e)}"
                         f"{'' if debug else ' (run again with --debug for the traceback)'}\n")
        return 1
    finally:
        restore_logging()


if __name__ == "__main__":
    sys.exit(main())
