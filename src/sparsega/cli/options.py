"""Option groups and helpers shared by the commands: argument parsing that never exits, the alignment flags as
:class:`~sparsega.types.AlignConfig` overrides, output-folder checks, logging to stderr and the JSON summary."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..devices import DEVICE_HELP
from ..errors import ConfigError, InputError
from ..evaluate import evaluate_scene
from ..io.camera_files import load_ground_truth
from ..io.common import DEFAULT_MIN_CONF
from ..io.output import to_json, write_result
from ..types import CANONICAL_MODES, DTYPES, KINEMATIC_MODES, LOSS_BACKENDS, POSE_INITS, AlignConfig

ALIGN_FLAGS: dict[str, Any] = {
    "subsample": int,
    "matching_conf_thr": float,
    "canonical_mode": str,
    "kinematic_mode": str,
    "niter1": int,
    "niter2": int,
    "lr1": float,
    "lr2": float,
    "shared_intrinsics": None,
    "device": str,
    "dtype": str,
    "fix_intrinsics": None,
    "fix_poses": None,
    "pose_init": str,
    "stage1_check": None,
    "lr1_procrustes": float,
    "loss_backend": str,
    "threads": int,
}


class UsageError(Exception):
    """An argparse error, turned into exit code 2 by :func:`main`."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(message)


def add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output and logging")
    g.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    g.add_argument("--json", action="store_true", help="print one machine-readable summary object on stdout")
    g.add_argument("--debug", action="store_true", help="debug logs and full tracebacks")


def add_output(p: argparse.ArgumentParser, gt: bool = True) -> None:
    """``-o OUT``, ``--overwrite``, ``--min-conf`` and (unless the command has its own truth) ``--gt``."""
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--min-conf",
        type=float,
        default=None,
        metavar="X",
        help="confidence threshold of the exported points (default 1.5)",
    )
    if gt:
        p.add_argument("--gt", metavar="FILE", help="ground-truth cameras (COLMAP model folder or JSON) for metrics")


def add_align(p: argparse.ArgumentParser, scene_graph: bool = True) -> None:
    g = p.add_argument_group("alignment (defaults: the reference's, except those the README lists)")
    if scene_graph:
        g.add_argument(
            "--scene-graph",
            metavar="NAME",
            default=None,
            help="complete, swin[-k][-noncyclic], logwin[-k][-noncyclic], oneref[-i], retrieval[-Na]-k, A+B",
        )
    g.add_argument("--subsample", type=int, metavar="N", help="match/anchor grid step in pixels (8)")
    g.add_argument("--matching-conf-thr", type=float, metavar="X", help="pair trusted above this match conf (5.0)")
    g.add_argument("--canonical-mode", choices=CANONICAL_MODES, help="canonical pointmap fusion (avg-angle)")
    g.add_argument("--kinematic-mode", choices=KINEMATIC_MODES, help="spanning tree of the poses (hclust-ward)")
    g.add_argument("--niter1", type=int, metavar="N", help="stage-1 iterations (300)")
    g.add_argument("--niter2", type=int, metavar="N", help="stage-2 iterations (300)")
    g.add_argument("--lr1", type=float, metavar="X", help="stage-1 learning rate (0.07)")
    g.add_argument("--lr2", type=float, metavar="X", help="stage-2 learning rate (0.01)")
    g.add_argument(
        "--pose-init",
        choices=POSE_INITS,
        help="stage-1 start: pairwise Procrustes poses averaged over all trusted pairs (global, default), "
        "chained along the tree (procrustes) or the reference's identity",
    )
    g.add_argument(
        "--lr1-procrustes",
        type=float,
        metavar="X",
        help="stage-1 learning rate when starting from the Procrustes poses (default: --lr1)",
    )
    g.add_argument(
        "--loss-backend",
        choices=LOSS_BACKENDS,
        help="loss implementation: compiled kernels on CPU (auto), or the plain autograd twin",
    )
    g.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads of the compiled alignment kernel (default 0: 1 below 4 M matches, every core from there); "
        "results do not depend on it",
    )
    g.add_argument("--shared-intrinsics", action="store_true", default=None, help="one camera for all images")
    g.add_argument(
        "--stage1-check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run stage 2 without stage 1 and keep that run when its final loss is clearly lower (default on)",
    )
    g.add_argument("--device", metavar="DEV", help=DEVICE_HELP + " (auto)")
    g.add_argument("--dtype", choices=DTYPES, help="optimisation precision (float32)")


def add_known(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("known cameras (names in the files are matched to image paths or file names)")
    g.add_argument(
        "--intrinsics",
        metavar="FILE",
        help="a COLMAP model folder, or a JSON {name: 3x3 K} in ORIGINAL pixels (pixel centres at integer coordinates)",
    )
    g.add_argument(
        "--poses",
        metavar="FILE",
        help="known cam2w (OpenCV) for some or all images: a COLMAP model folder, cameras.json, "
        "transforms.json or a JSON {name: 4x4}",
    )
    g.add_argument(
        "--fix-intrinsics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep given intrinsics fixed (default) or use them as initial values only",
    )
    g.add_argument(
        "--fix-poses",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep given poses fixed (default) or use them as soft priors",
    )


def setup_logging(args: argparse.Namespace) -> Callable[[], None]:
    """Route the package's logs to stderr for this command; returns a function restoring the previous state
    (``main`` may be called in-process, e.g. by tests)."""
    level = logging.DEBUG if args.debug else logging.WARNING if (args.quiet or args.json) else logging.INFO
    root = logging.getLogger("sparsega")
    saved = (list(root.handlers), root.level, root.propagate)
    for h in list(root.handlers):
        if getattr(h, "_sparsega_cli", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s: %(message)s" if args.debug else "sparsega: %(message)s")
    )
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


def check_output(args: argparse.Namespace) -> Path:
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


def min_conf(args: argparse.Namespace) -> float:
    v = getattr(args, "min_conf", None)
    if v is None:
        return DEFAULT_MIN_CONF
    if not math.isfinite(v):
        raise ConfigError(f"--min-conf={v}: must be finite")
    return float(v)


def emit(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if args.json:
        sys.stdout.write(to_json(summary) + "\n")
        sys.stdout.flush()


def metrics_table(metrics: dict[str, Any]) -> str:
    """A small human-readable table of the main camera metrics."""
    rows = [
        ("RRA@5 (%)", "rra5", 100.0),
        ("RTA@5 (%)", "rta5", 100.0),
        ("median rotation error (deg)", "rot_err_med", 1.0),
        ("ATE (% of extent)", "ate_rel", 100.0),
        ("median focal error (%)", "focal_err_med", 100.0),
        ("mAA@30 (%)", "maa30", 100.0),
    ]
    lines = [f"{'metric':<30}{'value':>10}", "-" * 40]
    for label, key, scale in rows:
        v = metrics.get(key)
        if v is not None and math.isfinite(v):
            lines.append(f"{label:<30}{float(v) * scale:>10.3f}")
    return "\n".join(lines)


def progress(args: argparse.Namespace) -> bool:
    """Progress bars unless ``--quiet`` or ``--json``."""
    return not (args.quiet or args.json)


def write(args: argparse.Namespace, result: Any, command: str, timings: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """:func:`sparsega.io.output.write_result` with the output flags of ``args``."""
    return write_result(
        result,
        args.output,
        command=command,
        overwrite=args.overwrite,
        min_conf=min_conf(args),
        progress=progress(args),
        argv=getattr(args, "_argv", []),
        timings=timings,
        **kw,
    )


def gt_evaluator(args: argparse.Namespace) -> Callable[[Any], dict[str, Any]] | None:
    """``scene -> metrics`` against ``--gt`` (read now, before any work), or None without ``--gt``."""
    if not getattr(args, "gt", None):
        return None
    gt = load_ground_truth(args.gt)
    return lambda scene: evaluate_scene(scene, gt)


def finish(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    """Print the metrics table (unless ``--json``), emit the JSON summary; the exit code."""
    if summary.get("metrics") and not args.json:
        print(metrics_table(summary["metrics"]))
    emit(args, summary)
    return 0
