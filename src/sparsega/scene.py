"""The result of an alignment: cameras, intrinsics, dense depth maps, points, colours, confidences.

A :class:`Scene` holds plain numpy arrays (float32) in the network's pixel frame; ``net_to_orig`` maps those pixel
coordinates back to the original photos for exports. It is frozen: variants are made with
:func:`dataclasses.replace`. ``save``/``load`` round-trip exactly through an ``.npz`` without pickle and a JSON
side file, written atomically (the previous folder is replaced only once the new one is complete).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .fsutil import replace_dir

SCENE_FORMAT = 1


def unproject_depth(depth: np.ndarray, K: np.ndarray, cam2w: np.ndarray) -> np.ndarray:
    """World points of every pixel. ``depth (H, W)``, ``K (3, 3)``, ``cam2w (4, 4)`` -> ``(H, W, 3)`` float32."""
    h, w = depth.shape
    x, y = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    cam = np.stack(((x - K[0, 2]) / K[0, 0], (y - K[1, 2]) / K[1, 1], np.ones_like(x)), -1) * depth[..., None]
    return (cam @ cam2w[:3, :3].T.astype(np.float64) + cam2w[:3, 3]).astype(np.float32)


@dataclass(frozen=True)
class Scene:
    """An aligned multi-view reconstruction.

    Attributes:
        cam2w: (N, 4, 4) float32 camera-to-world (OpenCV).
        intrinsics: (N, 3, 3) float32 pinhole matrices in network pixels.
        depthmaps: N arrays (H_i, W_i) float32, z-depth per pixel.
        confidences: N arrays (H_i, W_i) float32 (canonical confidence, cleaned: 0 = rejected).
        images: N arrays (H_i, W_i, 3) uint8 network-sized colours (grey when unknown).
        image_paths: N strings (may be synthetic names like ``view_000``).
        sparse_xy: N arrays (M_i, 2) int64 matched pixels (x, y) used by the optimiser.
        net_to_orig: (N, 3, 3) float64 affine map from network pixels to original image pixels (identity when
            the predictions came without photos).
        original_sizes: (N, 2) int64 original image sizes (W, H), or None when unknown.
        image_index: (N,) int64 position of each view in the input image list: ``0..N-1`` for a whole
            reconstruction, the component's images for one component of a split graph.
        info: JSON-serialisable run record (config, timings, losses, counts); never camera data.
    """

    cam2w: np.ndarray
    intrinsics: np.ndarray
    depthmaps: list[np.ndarray]
    confidences: list[np.ndarray]
    images: list[np.ndarray]
    image_paths: list[str]
    sparse_xy: list[np.ndarray] = field(default_factory=list)
    # None is replaced in __post_init__ (identity maps, 0..N-1): after construction both are arrays
    net_to_orig: np.ndarray = None  # type: ignore[assignment]
    original_sizes: np.ndarray | None = None
    image_index: np.ndarray = None  # type: ignore[assignment]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.cam2w)
        if self.net_to_orig is None:
            object.__setattr__(self, "net_to_orig", np.tile(np.eye(3), (n, 1, 1)))
        if not self.sparse_xy:
            object.__setattr__(self, "sparse_xy", [np.zeros((0, 2), np.int64) for _ in range(n)])
        if self.image_index is None:
            object.__setattr__(self, "image_index", np.arange(n, dtype=np.int64))
        if self.original_sizes is not None:
            sizes = np.asarray(self.original_sizes, dtype=np.int64).reshape(-1, 2)
            if len(sizes) != n:
                raise InputError(f"original_sizes has {len(sizes)} rows for {n} views")
            object.__setattr__(self, "original_sizes", sizes)

    # -- views ------------------------------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return int(len(self.cam2w))

    @property
    def focals(self) -> np.ndarray:
        """(N,) focal lengths in network pixels."""
        return self.intrinsics[:, 0, 0].copy()

    @property
    def principal_points(self) -> np.ndarray:
        """(N, 2) principal points in network pixels."""
        return self.intrinsics[:, :2, 2].copy()

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(H, W) of each view."""
        return [(int(d.shape[0]), int(d.shape[1])) for d in self.depthmaps]

    def pts3d(self, dense: bool = True) -> list[np.ndarray]:
        """World points: dense ``(H, W, 3)`` per view, or sparse ``(M_i, 3)`` at ``sparse_xy``."""
        out = []
        for i in range(self.n_images):
            pts = unproject_depth(self.depthmaps[i], self.intrinsics[i], self.cam2w[i])
            if not dense:
                xy = self.sparse_xy[i]
                pts = pts[xy[:, 1], xy[:, 0]]
            out.append(pts)
        return out

    def colors(self, dense: bool = True) -> list[np.ndarray]:
        """Colours matching :meth:`pts3d`: ``(H, W, 3)`` or ``(M_i, 3)`` uint8."""
        if dense:
            return [im for im in self.images]
        return [im[xy[:, 1], xy[:, 0]] for im, xy in zip(self.images, self.sparse_xy)]

    def masks(self, min_conf: float = 1.0) -> list[np.ndarray]:
        """Per-view boolean masks of trusted pixels (confidence > min_conf and finite depth)."""
        return [(c > min_conf) & np.isfinite(d) & (d > 0) for c, d in zip(self.confidences, self.depthmaps)]

    def point_cloud(self, min_conf: float = 1.0, dense: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flattened ``(points (P,3) float32, colours (P,3) uint8, confidences (P,) float32)``."""
        pts, cols, confs = [], [], []
        if dense:
            for p, c, cf, m in zip(self.pts3d(True), self.colors(True), self.confidences, self.masks(min_conf)):
                pts.append(p[m])
                cols.append(c[m])
                confs.append(cf[m])
        else:
            for p, c, cf, xy in zip(self.pts3d(False), self.colors(False), self.confidences, self.sparse_xy):
                pts.append(p)
                cols.append(c)
                confs.append(cf[xy[:, 1], xy[:, 0]])
        if not pts:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32)
        return np.concatenate(pts), np.concatenate(cols), np.concatenate(confs)

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/scene.npz`` + ``path/scene.json`` atomically (a temp folder renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            arrays: dict[str, np.ndarray] = {
                "cam2w": self.cam2w,
                "intrinsics": self.intrinsics,
                "net_to_orig": np.asarray(self.net_to_orig),
                "image_index": np.asarray(self.image_index),
            }
            if self.original_sizes is not None:
                arrays["original_sizes"] = self.original_sizes
            for i in range(self.n_images):
                arrays[f"depth_{i}"] = self.depthmaps[i]
                arrays[f"conf_{i}"] = self.confidences[i]
                arrays[f"image_{i}"] = self.images[i]
                arrays[f"sparse_xy_{i}"] = self.sparse_xy[i]
            np.savez(tmp / "scene.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
            meta = {
                "format": SCENE_FORMAT,
                "n_images": self.n_images,
                "image_paths": list(self.image_paths),
                "info": self.info,
            }
            (tmp / "scene.json").write_text(json.dumps(meta, indent=1, default=json_default))
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scene:
        """Read a folder written by :meth:`save`."""
        path = Path(path)
        try:
            meta = json.loads((path / "scene.json").read_text())
            data = np.load(path / "scene.npz", allow_pickle=False)
        except FileNotFoundError as e:
            raise InputError(f"{path}: not a saved scene (missing {Path(e.filename).name})") from None
        except (ValueError, OSError) as e:
            raise InputError(f"{path}: corrupt saved scene ({e})") from None
        if meta.get("format") != SCENE_FORMAT:
            raise InputError(f"{path}: unsupported scene format {meta.get('format')!r}")
        try:
            n = int(meta["n_images"])
            with data:
                return cls(
                    cam2w=data["cam2w"],
                    intrinsics=data["intrinsics"],
                    depthmaps=[data[f"depth_{i}"] for i in range(n)],
                    confidences=[data[f"conf_{i}"] for i in range(n)],
                    images=[data[f"image_{i}"] for i in range(n)],
                    image_paths=list(meta["image_paths"]),
                    sparse_xy=[data[f"sparse_xy_{i}"] for i in range(n)],
                    net_to_orig=data["net_to_orig"],
                    original_sizes=data["original_sizes"] if "original_sizes" in data.files else None,
                    image_index=data["image_index"] if "image_index" in data.files else np.arange(n),
                    info=meta.get("info", {}),
                )
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"{path}: corrupt saved scene ({type(e).__name__}: {e})") from None


def json_default(o: Any) -> Any:
    """``json.dumps`` hook for numpy scalars/arrays and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
