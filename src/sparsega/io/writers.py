"""Writers that turn a :class:`~sparsega.scene.Scene` into files other tools open, each usable alone:

- :func:`write_glb`: coloured dense points + camera frusta (trimesh), for Blender / web viewers;
- :func:`write_ply`: dense points with colours and confidence (plyfile), for MeshLab / CloudCompare;
- :func:`write_colmap`: a COLMAP sparse model (pycolmap): PINHOLE cameras and poses in ORIGINAL image pixels,
  3D points with their 2D observations;
- :func:`write_nerfstudio`: ``transforms.json`` (nerfstudio / gsplat);
- :func:`write_cameras_json`: a plain, documented JSON of cameras;
- :func:`write_depths`: per-image ``.npy`` depth maps plus a colourised ``.png``.

COLMAP and nerfstudio put the origin at the top-left CORNER of the top-left pixel (centre of pixel (0, 0) at
(0.5, 0.5)), so their principal points and keypoints are the OpenCV values + 0.5.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import PathLike
from ..scene import Scene
from .common import (
    CV_TO_GL,
    DEFAULT_MIN_CONF,
    _subsample,
    camera_colors,
    check_scene,
    colorize_depth,
    frustum_points,
    image_names,
    original_intrinsics,
    original_sizes,
)

log = logging.getLogger(__name__)


def write_glb(
    scene: Scene,
    path: PathLike,
    min_conf: float = DEFAULT_MIN_CONF,
    max_points: int | None = 2_000_000,
    frustum_scale: float | None = None,
    gl_axes: bool = True,
) -> Path:
    """Write a binary glTF: the dense point cloud (pixels with confidence > ``min_conf``, at most ``max_points``,
    a fixed random subset beyond) with colours, and one coloured line frustum per camera.

    With ``gl_axes`` the world is turned by 180 degrees about x (y up, as glTF viewers expect); vertex =
    ``diag(1, -1, -1) @ world point``.
    """
    import trimesh

    check_scene(scene)
    path = Path(path)
    pts, cols, _ = scene.point_cloud(min_conf=min_conf, dense=True)
    if len(pts) == 0:
        log.warning("GLB: no point above min_conf=%g; writing cameras only", min_conf)
    sel = _subsample(len(pts), max_points)
    pts, cols = pts[sel].astype(np.float64), cols[sel]
    fr = frustum_points(scene, frustum_scale)
    if gl_axes:
        flip = CV_TO_GL[:3, :3]
        pts = pts @ flip
        fr = fr @ flip
    tscene = trimesh.Scene()
    if len(pts):
        rgba = np.concatenate((cols, np.full((len(cols), 1), 255, np.uint8)), 1)
        tscene.add_geometry(trimesh.PointCloud(pts, colors=rgba), node_name="points", geom_name="points")
    # frustum edges: centre -> 4 corners, then the image rectangle
    edges = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1]])
    cam_cols = camera_colors(scene.n_images)
    for k in range(scene.n_images):
        path3d = trimesh.load_path(fr[k][edges])
        path3d.colors = np.tile(np.append(cam_cols[k], 255), (len(path3d.entities), 1))
        tscene.add_geometry(path3d, node_name=f"camera_{k:04d}", geom_name=f"camera_{k:04d}")
    data = tscene.export(file_type="glb")
    path.write_bytes(data)
    return path


def write_ply(scene: Scene, path: PathLike, min_conf: float = DEFAULT_MIN_CONF, dense: bool = True) -> Path:
    """Write a binary PLY with ``x, y, z`` (float32, world, OpenCV axes), ``red, green, blue`` (uint8) and
    ``confidence`` (float32) for every pixel with confidence > ``min_conf`` (``dense``) or every sparse point."""
    from plyfile import PlyData, PlyElement

    check_scene(scene)
    pts, cols, confs = scene.point_cloud(min_conf=min_conf, dense=dense)
    if len(pts) == 0:
        log.warning("PLY: no point above min_conf=%g", min_conf)
    vert = np.empty(
        len(pts),
        dtype=[
            ("x", "f4"),
            ("y", "f4"),
            ("z", "f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
            ("confidence", "f4"),
        ],
    )
    vert["x"], vert["y"], vert["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    vert["red"], vert["green"], vert["blue"] = cols[:, 0], cols[:, 1], cols[:, 2]
    vert["confidence"] = confs
    path = Path(path)
    PlyData([PlyElement.describe(vert, "vertex")], text=False).write(str(path))
    return path


def colmap_tracks(scene: Scene, depth_tol: float = 0.01) -> tuple[list[np.ndarray], list[tuple[np.ndarray, ...]]]:
    """2D observations of the sparse points, in network pixels.

    Every sparse pixel of image i (``scene.sparse_xy[i]``) is one 3D point (its depth-map point). It is observed in
    image i at that pixel, and in every other image j where it projects inside the image, in front of the camera,
    onto a trusted pixel (confidence > 0) whose depth agrees within ``depth_tol`` (relative): there at the projected,
    sub-pixel position.

    Returns:
        keypoints: per image (K_j, 2) float64 network pixel coordinates; the image's own sparse pixels come first.
        tracks: per 3D point source image i, ``(point_index, image_index, keypoint_index)`` int64 arrays, one row per
            observation (``point_index`` counts within image i's sparse points).
    """
    n = scene.n_images
    w2c = np.linalg.inv(scene.cam2w.astype(np.float64))
    world = [p.astype(np.float64) for p in scene.pts3d(dense=False)]
    keypoints: list[list[np.ndarray]] = [[scene.sparse_xy[j].astype(np.float64)] for j in range(n)]
    counts = np.array([len(scene.sparse_xy[j]) for j in range(n)], dtype=np.int64)
    obs: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
    for i in range(n):
        m = len(world[i])
        idx = np.arange(m)
        obs[i].append((idx, np.full(m, i), idx.copy()))
    for i in range(n):
        if not len(world[i]):
            continue
        for j in range(n):
            if i == j:
                continue
            cam = world[i] @ w2c[j, :3, :3].T + w2c[j, :3, 3]
            z = cam[:, 2]
            K = scene.intrinsics[j].astype(np.float64)
            h, w = scene.depthmaps[j].shape
            with np.errstate(divide="ignore", invalid="ignore"):
                u = cam[:, 0] / z * K[0, 0] + K[0, 2]
                v = cam[:, 1] / z * K[1, 1] + K[1, 2]
            ok = (z > 0) & (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
            sel = np.flatnonzero(ok)
            if not len(sel):
                continue
            ui = np.clip(np.round(u[sel]).astype(np.int64), 0, w - 1)
            vi = np.clip(np.round(v[sel]).astype(np.int64), 0, h - 1)
            dj = scene.depthmaps[j][vi, ui].astype(np.float64)
            good = (np.abs(z[sel] - dj) <= depth_tol * dj) & (scene.confidences[j][vi, ui] > 0)
            sel = sel[good]
            if not len(sel):
                continue
            keypoints[j].append(np.stack((u[sel], v[sel]), -1))
            obs[i].append((sel, np.full(len(sel), j), counts[j] + np.arange(len(sel))))
            counts[j] += len(sel)
    kps = [np.concatenate(k) if k else np.zeros((0, 2)) for k in keypoints]
    tracks = [tuple(np.concatenate([o[c] for o in obs[i]]).astype(np.int64) for c in range(3)) for i in range(n)]
    return kps, tracks


def write_colmap(scene: Scene, folder: PathLike, depth_tol: float = 0.01, tracks: bool = True) -> Path:
    """Write a COLMAP sparse model (``cameras.bin``, ``images.bin``, ``points3D.bin``, plus rigs/frames when the
    installed COLMAP writes them) into ``folder`` (created; normally ``OUT/colmap/sparse/0``).

    One PINHOLE camera per image, in ORIGINAL image pixels: ``K0 = net_to_orig @ K`` with ``cx, cy`` + 0.5 (COLMAP
    pixel convention); width/height from :func:`original_sizes`. Image poses are world-to-camera (inverse of
    ``cam2w``). 3D points are the sparse points with their observations (:func:`colmap_tracks`), mapped to
    original pixels; colour from the network image.
    """
    import pycolmap

    check_scene(scene)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = scene.n_images
    K0 = original_intrinsics(scene)
    sizes = original_sizes(scene)
    A = np.asarray(scene.net_to_orig, np.float64)
    names = image_names(scene)
    if tracks:
        kps, trk = colmap_tracks(scene, depth_tol)
    else:
        kps = [xy.astype(np.float64) for xy in scene.sparse_xy]
        trk = [(np.arange(len(xy)), np.full(len(xy), i), np.arange(len(xy))) for i, xy in enumerate(scene.sparse_xy)]
    rec = pycolmap.Reconstruction()
    w2c = np.linalg.inv(scene.cam2w.astype(np.float64))
    for k in range(n):
        cam = pycolmap.Camera(
            camera_id=k + 1,
            model="PINHOLE",
            width=int(sizes[k, 0]),
            height=int(sizes[k, 1]),
            params=[K0[k, 0, 0], K0[k, 1, 1], K0[k, 0, 2] + 0.5, K0[k, 1, 2] + 0.5],
        )
        rec.add_camera_with_trivial_rig(cam)
        xy0 = kps[k] @ A[k, :2, :2].T + A[k, :2, 2] + 0.5
        img = pycolmap.Image(name=names[k], keypoints=xy0, camera_id=k + 1, image_id=k + 1)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(w2c[k, :3, :4]))
    world = scene.pts3d(dense=False)
    colors = scene.colors(dense=False)
    for i in range(n):
        p_idx, img_idx, kp_idx = trk[i]
        if not len(p_idx):
            continue
        order = np.argsort(p_idx, kind="stable")
        p_idx, img_idx, kp_idx = p_idx[order], img_idx[order], kp_idx[order]
        starts = np.searchsorted(p_idx, np.arange(len(world[i]) + 1))
        for m in range(len(world[i])):
            a, b = starts[m], starts[m + 1]
            elements = [pycolmap.TrackElement(int(img_idx[e]) + 1, int(kp_idx[e])) for e in range(a, b)]
            rec.add_point3D(world[i][m].astype(np.float64), pycolmap.Track(elements), colors[i][m].astype(np.uint8))
    with contextlib.suppress(Exception):  # reprojection errors are informative only
        rec.update_point_3d_errors()
    rec.write_binary(str(folder))
    return folder


def write_nerfstudio(
    scene: Scene, path: PathLike, base_dir: PathLike | None = None, ply_file_path: str | None = None
) -> Path:
    """Write a nerfstudio ``transforms.json``: OpenGL camera axes (``transform_matrix = cam2w @ diag(1,-1,-1,1)``),
    per-frame ``fl_x, fl_y, cx, cy, w, h`` in original pixels (corner-origin convention, as COLMAP), zero
    distortion, ``file_path`` relative to ``base_dir`` (the folder the file will live in; default: its parent)
    when the image lies under it, else absolute."""
    check_scene(scene)
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else path.parent
    K0 = original_intrinsics(scene)
    sizes = original_sizes(scene)
    frames = []
    for k in range(scene.n_images):
        img = os.path.abspath(scene.image_paths[k])
        try:
            rel = os.path.relpath(img, os.path.abspath(base))
            file_path = rel if not rel.startswith("..") else img
        except ValueError:  # other drive on Windows
            file_path = img
        frames.append(
            {
                "file_path": file_path.replace(os.sep, "/"),
                "transform_matrix": (scene.cam2w[k].astype(np.float64) @ CV_TO_GL).tolist(),
                "fl_x": float(K0[k, 0, 0]),
                "fl_y": float(K0[k, 1, 1]),
                "cx": float(K0[k, 0, 2] + 0.5),
                "cy": float(K0[k, 1, 2] + 0.5),
                "w": int(sizes[k, 0]),
                "h": int(sizes[k, 1]),
                "k1": 0.0,
                "k2": 0.0,
                "p1": 0.0,
                "p2": 0.0,
            }
        )
    meta: dict[str, Any] = {"camera_model": "OPENCV", "frames": frames}
    if ply_file_path:
        meta["ply_file_path"] = ply_file_path
    path.write_text(json.dumps(meta, indent=1))
    return path


def write_cameras_json(scene: Scene, path: PathLike) -> Path:
    """Write a plain cameras JSON: per image its name, path, original size, ``cam2w`` (OpenCV axes), ``K`` in
    original pixels and ``K_network`` in network pixels (both with pixel centres at integer coordinates)."""
    check_scene(scene)
    K0 = original_intrinsics(scene)
    sizes = original_sizes(scene)
    names = image_names(scene)
    images = []
    for k in range(scene.n_images):
        h, w = scene.shapes[k]
        images.append(
            {
                "name": names[k],
                "path": str(scene.image_paths[k]),
                "width": int(sizes[k, 0]),
                "height": int(sizes[k, 1]),
                "cam2w": scene.cam2w[k].astype(np.float64).tolist(),
                "K": K0[k].tolist(),
                "K_network": scene.intrinsics[k].astype(np.float64).tolist(),
                "network_size": [int(w), int(h)],
                "net_to_orig": np.asarray(scene.net_to_orig[k], np.float64).tolist(),
            }
        )
    doc = {
        "convention": "cam2w: camera-to-world, OpenCV camera axes (x right, y down, z forward); K: pinhole "
        "intrinsics in original image pixels, pixel centres at integer coordinates",
        "images": images,
    }
    path = Path(path)
    path.write_text(json.dumps(doc, indent=1))
    return path


def write_depths(scene: Scene, folder: PathLike) -> Path:
    """Write ``folder/<k>_<stem>.npy`` ((H, W) float32 z-depth, network pixels) and a colourised ``.png`` per image
    (near blue ... far red, per-image 2-98 percentile range; invalid depth black)."""
    from PIL import Image

    check_scene(scene)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(scene.n_images):
        stem = f"{k:04d}_{Path(str(scene.image_paths[k])).stem}"
        depth = np.asarray(scene.depthmaps[k], np.float32)
        np.save(folder / f"{stem}.npy", depth)
        Image.fromarray(colorize_depth(depth)).save(folder / f"{stem}.png")
    return folder
