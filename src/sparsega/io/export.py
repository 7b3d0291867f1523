"""Writers that turn a :class:`~sparsega.scene.Scene` into files other tools open.

Each writer is usable alone and takes the Scene plus a destination:

- :func:`write_glb`: coloured dense points + camera frusta (trimesh), for Blender / web viewers;
- :func:`write_ply`: dense points with colours and confidence (plyfile), for MeshLab / CloudCompare;
- :func:`write_colmap`: a COLMAP sparse model (pycolmap): PINHOLE cameras and poses in ORIGINAL image pixels,
  3D points with their 2D observations;
- :func:`write_nerfstudio`: ``transforms.json`` (nerfstudio / gsplat);
- :func:`write_cameras_json`: a plain, documented JSON of cameras;
- :func:`write_depths`: per-image ``.npy`` depth maps plus a colourised ``.png``.

:func:`export_all` writes several of them into a folder atomically (a staging folder renamed into place), so a
failed run never leaves a half-written output.

Pixel conventions. The Scene works in network pixels with pixel CENTRES at integer coordinates (OpenCV).
``scene.net_to_orig`` maps them to original-image pixels in the same convention. COLMAP and nerfstudio put the
origin at the top-left CORNER of the top-left pixel (centre of pixel (0, 0) at (0.5, 0.5)), so their principal
points and keypoints are the OpenCV values + 0.5.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from ..scene import Scene

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

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
DEFAULT_MIN_CONF = 1.5

# OpenCV camera axes (x right, y down, z forward) -> OpenGL (x right, y up, z backward)
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])

# anchor colours of the depth colour map (near = dark blue ... far = dark red), interpolated linearly
_CMAP_ANCHORS = np.array([
    (48, 18, 59), (70, 107, 227), (41, 187, 236), (49, 242, 153),
    (163, 253, 61), (237, 208, 58), (251, 128, 34), (122, 4, 3),
], dtype=np.float64)


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


def colorize_depth(depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8 colours (near blue, far red), robust range (2nd-98th percentile);
    invalid pixels (non-finite, <= 0 or ``valid`` False) are black."""
    d = np.asarray(depth, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0)
    if valid is not None:
        ok &= valid
    out = np.zeros((*d.shape, 3), np.uint8)
    if not ok.any():
        return out
    lo, hi = np.percentile(d[ok], [2.0, 98.0])
    t = np.where(ok, np.clip((d - lo) / max(hi - lo, 1e-12), 0.0, 1.0), 0.0)
    pos = t * (len(_CMAP_ANCHORS) - 1)
    k = np.minimum(pos.astype(np.int64), len(_CMAP_ANCHORS) - 2)
    frac = (pos - k)[..., None]
    rgb = _CMAP_ANCHORS[k] * (1 - frac) + _CMAP_ANCHORS[k + 1] * frac
    out[ok] = np.round(rgb[ok]).astype(np.uint8)
    return out


def _image_size_from_file(path: str) -> tuple[int, int] | None:
    """(W, H) of an image file after EXIF orientation, read from its header only; None when unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            orient = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any unreadable file just means "unknown"
        return None
    return (h, w) if orient in (5, 6, 7, 8) else (w, h)


def original_sizes(scene: Scene) -> np.ndarray:
    """(N, 2) int64 original image sizes (W0, H0).

    Taken from ``scene.info["original_sizes"]`` when present, else from the image file header when the path
    exists, else estimated from ``net_to_orig`` assuming the network image is a CENTRED crop of the resized image
    (what :mod:`sparsega.frontend.images` does; exact for identity maps, otherwise within one resized pixel).
    """
    n = scene.n_images
    given = scene.info.get("original_sizes") if isinstance(scene.info, dict) else None
    if given is not None and len(given) == n:
        return np.asarray(given, dtype=np.int64).reshape(n, 2)
    out = np.zeros((n, 2), np.int64)
    A = np.asarray(scene.net_to_orig, dtype=np.float64)
    for k, (h, w) in enumerate(scene.shapes):
        size = _image_size_from_file(scene.image_paths[k]) if os.path.isfile(scene.image_paths[k]) else None
        if size is None:
            est = []
            for axis, n_net in ((0, w), (1, h)):
                a, b = A[k, axis, axis], A[k, axis, 2]
                left = (b + 0.5) / a - 0.5
                est.append(int(round(a * (n_net + 2 * left))))
            size = (est[0], est[1])
        out[k] = size
    return out


def original_intrinsics(scene: Scene) -> np.ndarray:
    """(N, 3, 3) float64 intrinsics in original pixels (OpenCV pixel-centre convention): ``net_to_orig @ K``."""
    return np.asarray(scene.net_to_orig, np.float64) @ scene.intrinsics.astype(np.float64)


def _check_scene(scene: Scene) -> None:
    if not isinstance(scene, Scene):
        raise InputError(f"expected a Scene, got {type(scene).__name__}")
    if scene.n_images == 0:
        raise InputError("the scene has no image")
    if not (np.isfinite(scene.cam2w).all() and np.isfinite(scene.intrinsics).all()):
        raise InputError("the scene has non-finite camera poses or intrinsics")


def image_names(scene: Scene) -> list[str]:
    """Unique, tool-friendly names: the file names when they are unique, else paths relative to their common
    folder (``/`` separators)."""
    paths = [str(p) for p in scene.image_paths]
    base = [os.path.basename(p) or f"view_{k:03d}" for k, p in enumerate(paths)]
    if len(set(base)) == len(base):
        return base
    absp = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absp]) if len(absp) > 1 else os.path.dirname(absp[0])
    rel = [os.path.relpath(p, root).replace(os.sep, "/") for p in absp]
    if len(set(rel)) == len(rel):
        return rel
    return [f"{k:04d}_{b}" for k, b in enumerate(base)]


def _subsample(n: int, max_points: int | None, seed: int = 0) -> np.ndarray | slice:
    if max_points is None or n <= max_points:
        return slice(None)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _camera_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours along a hue ramp (first camera red ... last magenta)."""
    h = np.linspace(0.0, 0.83, max(n, 1))[:n] * 6.0
    x = 1 - np.abs(h % 2 - 1)
    z = np.zeros_like(h)
    sector = np.floor(h).astype(int) % 6
    rgb = np.select(
        [sector[:, None] == s for s in range(6)],
        [np.stack(c, -1) for c in ((1 + z, x, z), (x, 1 + z, z), (z, 1 + z, x), (z, x, 1 + z),
                                    (x, z, 1 + z), (1 + z, z, x))],
    )
    return np.round(rgb * 230).astype(np.uint8)


def frustum_points(scene: Scene, scale: float | None = None) -> np.ndarray:
    """(N, 5, 3) float64 world points of each camera's frustum: centre, then the 4 image corners (top-left,
    top-right, bottom-right, bottom-left) at depth ``scale`` (default: 15 % of the median camera spacing, or of
    the median depth for a single camera)."""
    c2w = scene.cam2w.astype(np.float64)
    if scale is None:
        centres = c2w[:, :3, 3]
        if len(centres) > 1:
            d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
            d[d == 0] = np.inf
            spacing = float(np.median(d.min(1)))
        else:
            spacing = float(np.median(scene.depthmaps[0][np.isfinite(scene.depthmaps[0])]))
        scale = 0.5 * spacing if np.isfinite(spacing) and spacing > 0 else 0.1
    out = np.zeros((scene.n_images, 5, 3))
    for k, (h, w) in enumerate(scene.shapes):
        K = scene.intrinsics[k].astype(np.float64)
        px = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
        rays = np.stack(((px[:, 0] - K[0, 2]) / K[0, 0], (px[:, 1] - K[1, 2]) / K[1, 1], np.ones(4)), -1)
        cam = np.concatenate((np.zeros((1, 3)), rays * scale))
        out[k] = cam @ c2w[k, :3, :3].T + c2w[k, :3, 3]
    return out


# ------------------------------------------------------------------------------------------------ writers
def write_glb(scene: Scene, path: PathLike, min_conf: float = DEFAULT_MIN_CONF, max_points: int | None = 2_000_000,
              frustum_scale: float | None = None, gl_axes: bool = True) -> Path:
    """Write a binary glTF: the dense point cloud (pixels with confidence > ``min_conf``, at most ``max_points``,
    a fixed random subset beyond) with colours, and one coloured line frustum per camera.

    With ``gl_axes`` the world is turned by 180 degrees about x (y up, as glTF viewers expect); vertex =
    ``diag(1, -1, -1) @ world point``.
    """
    import trimesh

    _check_scene(scene)
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
    cam_cols = _camera_colors(scene.n_images)
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

    _check_scene(scene)
    pts, cols, confs = scene.point_cloud(min_conf=min_conf, dense=dense)
    if len(pts) == 0:
        log.warning("PLY: no point above min_conf=%g", min_conf)
    vert = np.empty(len(pts), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                                     ("blue", "u1"), ("confidence", "f4")])
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

    _check_scene(scene)
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
            camera_id=k + 1, model="PINHOLE", width=int(sizes[k, 0]), height=int(sizes[k, 1]),
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


def write_nerfstudio(scene: Scene, path: PathLike, base_dir: PathLike | None = None,
                     ply_file_path: str | None = None) -> Path:
    """Write a nerfstudio ``transforms.json``: OpenGL camera axes (``transform_matrix = cam2w @ diag(1,-1,-1,1)``),
    per-frame ``fl_x, fl_y, cx, cy, w, h`` in original pixels (corner-origin convention, as COLMAP), zero
    distortion, ``file_path`` relative to ``base_dir`` (the folder the file will live in; default: its parent)
    when the image lies under it, else absolute."""
    _check_scene(scene)
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
        frames.append({
            "file_path": file_path.replace(os.sep, "/"),
            "transform_matrix": (scene.cam2w[k].astype(np.float64) @ CV_TO_GL).tolist(),
            "fl_x": float(K0[k, 0, 0]), "fl_y": float(K0[k, 1, 1]),
            "cx": float(K0[k, 0, 2] + 0.5), "cy": float(K0[k, 1, 2] + 0.5),
            "w": int(sizes[k, 0]), "h": int(sizes[k, 1]),
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        })
    meta: dict[str, Any] = {"camera_model": "OPENCV", "frames": frames}
    if ply_file_path:
        meta["ply_file_path"] = ply_file_path
    path.write_text(json.dumps(meta, indent=1))
    return path


def write_cameras_json(scene: Scene, path: PathLike) -> Path:
    """Write a plain cameras JSON: per image its name, path, original size, ``cam2w`` (OpenCV axes), ``K`` in
    original pixels and ``K_network`` in network pixels (both with pixel centres at integer coordinates)."""
    _check_scene(scene)
    K0 = original_intrinsics(scene)
    sizes = original_sizes(scene)
    names = image_names(scene)
    images = []
    for k in range(scene.n_images):
        h, w = scene.shapes[k]
        images.append({
            "name": names[k], "path": str(scene.image_paths[k]),
            "width": int(sizes[k, 0]), "height": int(sizes[k, 1]),
            "cam2w": scene.cam2w[k].astype(np.float64).tolist(),
            "K": K0[k].tolist(),
            "K_network": scene.intrinsics[k].astype(np.float64).tolist(),
            "network_size": [int(w), int(h)],
            "net_to_orig": np.asarray(scene.net_to_orig[k], np.float64).tolist(),
        })
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

    _check_scene(scene)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(scene.n_images):
        stem = f"{k:04d}_{Path(str(scene.image_paths[k])).stem}"
        depth = np.asarray(scene.depthmaps[k], np.float32)
        np.save(folder / f"{stem}.npy", depth)
        Image.fromarray(colorize_depth(depth)).save(folder / f"{stem}.png")
    return folder


# ------------------------------------------------------------------------------------------------ folders
@contextlib.contextmanager
def staged_dir(out_dir: PathLike, overwrite: bool = False, merge: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder next to ``out_dir``; on success move its content into place, on failure delete
    it (``out_dir`` untouched).

    ``merge=False``: ``out_dir`` is replaced as a whole (refused if it exists, unless ``overwrite``).
    ``merge=True``: each produced entry replaces the same name inside the existing ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.exists() and not merge and not overwrite:
        raise InputError(f"{out}: output folder exists (use --overwrite to replace it)")
    if merge and not out.is_dir():
        raise InputError(f"{out}: no such folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        yield tmp
        if merge:
            for entry in sorted(tmp.iterdir()):
                dest = out / entry.name
                if dest.is_dir() and not dest.is_symlink():
                    old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old.", dir=out))
                    os.replace(dest, old / entry.name)
                    os.replace(entry, dest)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(entry, dest)
            tmp.rmdir()
        else:
            old = None
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
                os.replace(out, old / out.name)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_to(scene: Scene, folder: PathLike, formats: str | Sequence[str] = "all", *,
              min_conf: float = DEFAULT_MIN_CONF, base_dir: PathLike | None = None,
              progress: bool = False) -> dict[str, float]:
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
            write_nerfstudio(scene, dest, base_dir=base_dir or folder,
                             ply_file_path=FORMATS["ply"] if "ply" in fmts else None)
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


def export_all(scene: Scene, out_dir: PathLike, formats: str | Sequence[str] = "all", *, overwrite: bool = False,
               merge: bool = False, min_conf: float = DEFAULT_MIN_CONF, progress: bool = False) -> dict[str, float]:
    """Write ``formats`` (default all of :data:`FORMATS`) into ``out_dir`` atomically (see :func:`staged_dir`).
    Returns seconds per format."""
    _check_scene(scene)
    fmts = parse_formats(formats)
    with staged_dir(out_dir, overwrite=overwrite, merge=merge) as tmp:
        return export_to(scene, tmp, fmts, min_conf=min_conf, base_dir=Path(out_dir).resolve(), progress=progress)


__all__ = [
    "FORMATS", "parse_formats", "colorize_depth", "original_sizes", "original_intrinsics", "image_names",
    "frustum_points", "colmap_tracks", "write_glb", "write_ply", "write_colmap", "write_nerfstudio",
    "write_cameras_json", "write_depths", "staged_dir", "export_to", "export_all",
]
