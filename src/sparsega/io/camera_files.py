"""Readers of camera files given by the user: known intrinsics and poses for ``reconstruct``, ground truth for
``eval`` and the metrics. Each reads a COLMAP model folder (binary or text), our ``cameras.json``, a nerfstudio
``transforms.json`` (poses) or a plain JSON keyed by image name, and refuses malformed input with an
:class:`~sparsega.errors.InputError` naming the file."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, one_line
from .common import CV_TO_GL


def _read_colmap(folder: Path, needs: str) -> Any:
    """The COLMAP model in ``folder`` (or its ``sparse/0``, ``sparse``, ``colmap/sparse/0``) holding ``needs``
    (``cameras`` or ``images``, .bin or .txt), as a ``pycolmap.Reconstruction``."""
    import pycolmap

    for cand in (folder, folder / "sparse" / "0", folder / "sparse", folder / "colmap" / "sparse" / "0"):
        if (cand / f"{needs}.bin").is_file() or (cand / f"{needs}.txt").is_file():
            break
    else:
        raise InputError(f"{folder}: not a COLMAP model folder (no {needs}.bin / {needs}.txt)")
    try:
        return pycolmap.Reconstruction(str(cand))
    except Exception as e:  # noqa: BLE001 - pycolmap raises various types
        raise InputError(f"{cand}: cannot read COLMAP model ({one_line(e)})") from None


def load_intrinsics_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Known intrinsics keyed by image name: ``{name: K (3, 3)}`` in original pixels, pixel centres at integer
    coordinates. Reads a COLMAP model folder (whose principal points put the origin at the image corner, hence
    the -0.5) or a JSON ``{name: K}`` / ``{name: {"K": K}}`` / our ``cameras.json``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such intrinsics file or folder")
    out: dict[str, np.ndarray] = {}
    if p.is_dir():
        rec = _read_colmap(p, "cameras")
        for img in rec.images.values():
            K = np.asarray(rec.cameras[img.camera_id].calibration_matrix(), np.float64).copy()
            K[:2, 2] -= 0.5
            out[img.name] = K
        return out
    try:
        data = json.loads(p.read_text())
        items = (
            [(it["name"], it["K"]) for it in data["images"]]
            if isinstance(data, dict) and isinstance(data.get("images"), list)
            else [(k, v["K"] if isinstance(v, dict) else v) for k, v in data.items()]
        )
        for name, K in items:
            out[str(name)] = np.asarray(K, np.float64)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{p}: malformed intrinsics file ({type(e).__name__}: {e})") from None
    return out


def match_image_names(table: dict[str, Any], paths: Sequence[str], what: str) -> dict[str, Any]:
    """Re-key a ``{name: value}`` table by the image paths it refers to (exact path, file name or path suffix);
    ``what`` names the table in errors (an unknown or ambiguous name is an error)."""
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


def load_ground_truth(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Ground-truth cameras keyed by image name: ``{name: {"cam2w": (4,4), "focal": float | None}}`` (+ an
    ``"__extent__"`` entry when the file gives one). Reads a COLMAP model folder (binary or text), our
    ``cameras.json``, a nerfstudio ``transforms.json`` or a JSON ``{name: 4x4}`` / ``{name: {"cam2w": ...}}``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such ground-truth file or folder")
    out: dict[str, dict[str, Any]] = {}
    if p.is_dir():
        rec = _read_colmap(p, "images")
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
                out[str(item["name"])] = {
                    "cam2w": np.asarray(item["cam2w"], np.float64),
                    "focal": float(np.asarray(K)[0, 0]) if K is not None else None,
                }
                if item.get("path"):
                    out[str(item["name"])]["path"] = str(item["path"])
        elif isinstance(data, dict) and isinstance(data.get("frames"), list):  # nerfstudio
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
                    out[str(name)] = {
                        "cam2w": np.asarray(v["cam2w"], np.float64),
                        "focal": float(focal) if focal is not None else None,
                    }
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
