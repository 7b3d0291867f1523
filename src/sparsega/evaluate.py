"""A :class:`~sparsega.scene.Scene` against ground-truth cameras: matched by image name (camera files read by
:mod:`sparsega.io.camera_files`) or by input index (synthetic scenes). Metrics are :mod:`sparsega.metrics`'s,
returned as plain JSON-safe floats (NaN/inf as None)."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from . import metrics
from .errors import InputError
from .io.common import image_names, original_intrinsics
from .scene import Scene

log = logging.getLogger(__name__)


def clean_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Plain-float metrics with NaN/inf replaced by None (valid JSON)."""
    out: dict[str, Any] = {}
    for k, v in dict(metrics).items():
        v = v.item() if isinstance(v, np.generic) else v
        out[k] = None if isinstance(v, float) and not np.isfinite(v) else v
    return out


def evaluate_scene(scene: Scene, gt: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Camera metrics of ``scene`` against ground truth matched by image name (full path, export name or file
    name). Focals compared in original pixels."""
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


def evaluate_by_index(scene: Scene, gt_cam2w: np.ndarray, gt_focals: np.ndarray, extent: float) -> dict[str, Any]:
    """Camera metrics of ``scene`` against ground truth given per input image (``gt_cam2w (M, 4, 4)``,
    ``gt_focals (M,)`` in the scene's network pixels): view k is compared to input ``scene.image_index[k]``, so
    one component of a split graph is evaluated against its own images."""
    idx = np.asarray(scene.image_index, dtype=np.int64)
    res = metrics.camera_metrics(
        scene.cam2w.astype(np.float64),
        np.asarray(gt_cam2w, np.float64)[idx],
        scene.focals.astype(np.float64),
        np.asarray(gt_focals, np.float64)[idx],
        float(extent),
    )
    return clean_metrics(res)


__all__ = ["clean_metrics", "evaluate_scene", "evaluate_by_index"]
