"""The output folder of a command: every export plus ``report.json``, written atomically, for one scene or for
the components of a split match graph (the policy of :mod:`sparsega.alignment.components`): a connected result
goes to ``OUT/``, a split one to ``OUT/component_k/`` (each with its own report) under a top-level report that
lists which images went where and which are unregistered."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..alignment.components import ComponentResult
from ..fsutil import PathLike, staged_dir
from ..scene import Scene, json_default
from .common import DEFAULT_MIN_CONF
from .export import export_to

log = logging.getLogger(__name__)

Evaluate = Callable[[Scene], "dict[str, Any] | None"]


def _lenient_default(o: Any) -> Any:
    """The scene's JSON conversions (numpy, paths), anything else as its string (reports must never fail)."""
    try:
        return json_default(o)
    except TypeError:
        return str(o)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_lenient_default))
    os.replace(tmp, path)


def to_json(obj: Any) -> str:
    """One-line JSON of a summary (numpy values converted)."""
    return json.dumps(obj, default=_lenient_default)


def scene_counts(scene: Scene, min_conf: float) -> dict[str, Any]:
    """Images, pairs, matches and points of a scene (the report's ``counts``)."""
    stats = scene.info.get("stats", {})
    return {
        "n_images": scene.n_images,
        "n_pairs": stats.get("n_pairs"),
        "n_matches": stats.get("n_matches"),
        "n_points_dense": int(sum(int(m.sum()) for m in scene.masks(min_conf))),
        "n_points_sparse": int(sum(len(xy) for xy in scene.sparse_xy)),
    }


def write_result(
    result: Scene | ComponentResult,
    out: PathLike,
    *,
    command: str,
    overwrite: bool = False,
    min_conf: float = DEFAULT_MIN_CONF,
    progress: bool = False,
    argv: Sequence[str] = (),
    timings: Mapping[str, Any] | None = None,
    evaluate: Evaluate | None = None,
    image_paths: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, Callable[[Path], None]] | None = None,
) -> dict[str, Any]:
    """Write ``result`` into ``out`` atomically (refused if it exists unless ``overwrite``) and return the summary.

    Args:
        result: a Scene, or the :class:`ComponentResult` of ``align(..., components=True)``.
        command: the command name stored in the report.
        evaluate: ``scene -> metrics`` for the report (None: no metrics).
        image_paths: the input image names (to name unregistered images; default ``view_k``).
        extra: more top-level report entries; ``extra_files``: ``name -> writer(folder)`` run in the staging
            folder first (e.g. the demo's images).
    """
    if isinstance(result, ComponentResult) and result.connected:
        result = result.scenes[0]
    out = Path(out)
    t0 = time.perf_counter()
    head = {"sparsega_version": __version__, "command": command, "argv": list(argv), "output": str(out)}
    with staged_dir(out, overwrite=overwrite) as tmp:
        for writer in (extra_files or {}).values():
            writer(tmp)
        if isinstance(result, Scene):
            entry = _write_scene(result, tmp, out, min_conf, progress, evaluate)
            report = {
                **head,
                "config": result.info.get("config"),
                "timings_s": {
                    **(timings or {}),
                    "export": time.perf_counter() - t0,
                    "export_per_format": entry.pop("export_s"),
                    "align": result.info.get("timings_s"),
                },
                "counts": entry["counts"],
                "losses": result.info.get("stages"),
                "metrics": entry["metrics"],
                "min_conf": min_conf,
                **(extra or {}),
            }
            write_json(tmp / "report.json", report)
            return {
                "command": command,
                "output": str(out),
                "report": str(out / "report.json"),
                "counts": report["counts"],
                "timings_s": report["timings_s"],
                "metrics": entry["metrics"],
            }
        names = list(image_paths) if image_paths is not None else None

        def name(k: int) -> str:
            return str(names[k]) if names is not None else f"view_{k:03d}"

        comps = []
        for k, scene in enumerate(result.scenes):
            folder = f"component_{k}"
            (tmp / folder).mkdir()
            entry = _write_scene(scene, tmp / folder, out / folder, min_conf, progress, evaluate)
            idx = [int(i) for i in scene.image_index]
            item = {
                "folder": folder,
                "images": [name(i) for i in idx],
                "image_indices": idx,
                "counts": entry["counts"],
                "metrics": entry["metrics"],
            }
            write_json(
                tmp / folder / "report.json",
                {
                    **head,
                    "component": k,
                    **item,
                    "config": scene.info.get("config"),
                    "losses": scene.info.get("stages"),
                    "min_conf": min_conf,
                    "timings_s": {"align": scene.info.get("timings_s"), "export_per_format": entry["export_s"]},
                },
            )
            comps.append(item)
        unregistered = [name(i) for i in result.unregistered]
        all_t = {**(timings or {}), "export": time.perf_counter() - t0}
        write_json(
            tmp / "report.json",
            {
                **head,
                "timings_s": all_t,
                "components": comps,
                "unregistered": unregistered,
                "min_conf": min_conf,
                **(extra or {}),
            },
        )
    log.warning(
        "the images split into %d reconstruction(s), written to %s; %d unregistered image(s)%s",
        len(comps),
        ", ".join(str(out / c["folder"]) for c in comps),
        len(unregistered),
        f": {', '.join(unregistered)}" if unregistered else "",
    )
    return {
        "command": command,
        "output": str(out),
        "report": str(out / "report.json"),
        "components": [{k: c[k] for k in ("folder", "images", "counts", "metrics")} for c in comps],
        "unregistered": unregistered,
        "timings_s": all_t,
    }


def _write_scene(
    scene: Scene, folder: Path, final: Path, min_conf: float, progress: bool, evaluate: Evaluate | None
) -> dict[str, Any]:
    """Every export of one scene into ``folder`` (``final``: where it will live); counts, metrics, seconds."""
    metrics = evaluate(scene) if evaluate is not None and scene.n_images >= 2 else None
    export_s = export_to(scene, folder, "all", min_conf=min_conf, base_dir=final.resolve(), progress=progress)
    return {"counts": scene_counts(scene, min_conf), "metrics": metrics, "export_s": export_s}


__all__ = ["write_result", "write_json", "to_json", "scene_counts"]
