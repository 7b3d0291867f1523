"""Export a :class:`~sparsega.scene.Scene` in several formats at once (:func:`export_all`), into a folder written
atomically: a staging folder renamed into place, so a failed run never leaves a half-written output. The
individual writers live in :mod:`.writers` and are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from ..fsutil import PathLike, staged_dir
from ..scene import Scene
from .common import (
    CV_TO_GL,
    DEFAULT_MIN_CONF,
    check_scene,
    colorize_depth,
    frustum_points,
    image_names,
    original_intrinsics,
    original_sizes,
)
from .writers import (
    colmap_tracks,
    write_cameras_json,
    write_colmap,
    write_depths,
    write_glb,
    write_nerfstudio,
    write_ply,
)

log = logging.getLogger(__name__)

#: every format :func:`export_all` knows, in writing order, with the file or folder each one produces
FORMATS: dict[str, str] = {
    "scene": "scene",
    "glb": "scene.glb",
    "ply": "points.ply",
    "colmap": "colmap",
    "nerfstudio": "transforms.json",
    "cameras": "cameras.json",
    "depth": "depth",
    "preview": "preview.png",
}


# ------------------------------------------------------------------------------------------------ helpers
def parse_formats(spec: str | Sequence[str]) -> list[str]:
    """``"glb,ply"`` or ``["glb", "ply"]`` (or ``"all"``) -> validated format names in writing order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip().lower() for s in items if s.strip()]
    if "all" in names:
        return list(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {', '.join(unknown)} (known: {', '.join(FORMATS)}, all)")
    if not names:
        raise ConfigError("no export format given")
    return [f for f in FORMATS if f in names]


# ------------------------------------------------------------------------------------------------ writers
# ------------------------------------------------------------------------------------------------ folders
def export_to(
    scene: Scene,
    folder: PathLike,
    formats: str | Sequence[str] = "all",
    *,
    min_conf: float = DEFAULT_MIN_CONF,
    base_dir: PathLike | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Write ``formats`` into an existing ``folder`` directly (no staging). ``base_dir``: where the folder will
    finally live (for relative image paths in transforms.json). Returns seconds per format."""
    import time

    from tqdm.auto import tqdm

    fmts = parse_formats(formats)
    folder = Path(folder)
    timings: dict[str, float] = {}
    for fmt in tqdm(fmts, desc="export", disable=not progress, leave=False):
        t0 = time.perf_counter()
        dest = folder / FORMATS[fmt]
        if fmt == "scene":
            scene.save(dest)
        elif fmt == "glb":
            write_glb(scene, dest, min_conf=min_conf)
        elif fmt == "ply":
            write_ply(scene, dest, min_conf=min_conf)
        elif fmt == "colmap":
            write_colmap(scene, dest / "sparse" / "0")
        elif fmt == "nerfstudio":
            write_nerfstudio(
                scene, dest, base_dir=base_dir or folder, ply_file_path=FORMATS["ply"] if "ply" in fmts else None
            )
        elif fmt == "cameras":
            write_cameras_json(scene, dest)
        elif fmt == "depth":
            write_depths(scene, dest)
        elif fmt == "preview":
            from .preview import render_preview

            render_preview(scene, dest, min_conf=min_conf)
        timings[fmt] = time.perf_counter() - t0
        log.debug("wrote %s in %.2fs", dest, timings[fmt])
    return timings


def export_all(
    scene: Scene,
    out_dir: PathLike,
    formats: str | Sequence[str] = "all",
    *,
    overwrite: bool = False,
    merge: bool = False,
    min_conf: float = DEFAULT_MIN_CONF,
    progress: bool = False,
) -> dict[str, float]:
    """Write ``formats`` (default all of :data:`FORMATS`) into ``out_dir`` atomically (see :func:`staged_dir`).
    Returns seconds per format."""
    check_scene(scene)
    fmts = parse_formats(formats)
    with staged_dir(out_dir, overwrite=overwrite, merge=merge) as tmp:
        return export_to(scene, tmp, fmts, min_conf=min_conf, base_dir=Path(out_dir).resolve(), progress=progress)


__all__ = [
    "CV_TO_GL",
    "DEFAULT_MIN_CONF",
    "FORMATS",
    "parse_formats",
    "colorize_depth",
    "original_sizes",
    "original_intrinsics",
    "image_names",
    "frustum_points",
    "colmap_tracks",
    "write_glb",
    "write_ply",
    "write_colmap",
    "write_nerfstudio",
    "write_cameras_json",
    "write_depths",
    "staged_dir",
    "export_to",
    "export_all",
]
