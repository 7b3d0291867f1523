"""The synthetic world's data: scene specs, analytic geometry (a closed room with spheres and yaw-rotated boxes)
and a rendered scene with exact ground truth.

Conventions (the package's): OpenCV cameras (x right, y down, z forward), ``cam2w`` (4, 4), pixel ``(x, y)`` =
(column, row) with pixel centres at integer coordinates; pixel ``(x, y)`` of view ``i`` looks along
``K_i^-1 [x, y, 1]``. Intrinsics have ``fx = fy`` and the principal point at ``(W/2, H/2)``, the value the
alignment initialises it to (and the one the reference's focal estimator assumes), so a perfect reconstruction
needs no principal-point change. The world is z-up (the floor is ``z = 0``); that only matters to the layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

KINDS = ("orbit", "walk", "hemisphere", "loop")


def base_focal(height: int, width: int) -> float:
    """Focal (pixels) of a 60 degree field of view on the long side: ``max(H, W) / (2 tan 30deg)``."""
    return max(height, width) / (2.0 * math.tan(math.radians(30.0)))


@dataclass(frozen=True)
class SceneSpec:
    """What :func:`make_scene` builds.

    Attributes:
        kind: camera layout, ``"orbit"`` (circle around an object cluster, looking at it), ``"walk"`` (forward
            walk along a corridor lined with objects), ``"hemisphere"`` (random positions on an upper
            hemisphere, looking at the centre) or ``"loop"`` (forward walk once around a ring corridor lined with
            objects, ending where it started: a sequence whose last views revisit its first place).
        n_views: number of cameras (>= 1).
        height, width: landscape image size in pixels, multiples of 16.
        seed: everything random (objects, cameras, focals, textures) derives from it.
        portrait_every: if ``p > 0``, views ``p-1, 2p-1, ...`` are portrait (``width x height`` swapped).
        focal_range: per-view focal factor drawn uniformly in this range, times :func:`base_focal`.
        n_objects: objects in the central cluster (orbit, hemisphere).
        radius: camera distance to the centre (orbit, hemisphere), metres.
        step: distance between consecutive walk cameras (shrunk so the walk is at most ``max_walk`` long).
        max_walk: longest walk, metres.
        loop_radius: radius of the loop's path, metres (the corridor spans +-2 m around it).
    """

    kind: str = "orbit"
    n_views: int = 8
    height: int = 192
    width: int = 256
    seed: int = 0
    portrait_every: int = 0
    focal_range: tuple[float, float] = (0.8, 1.2)
    n_objects: int = 7
    radius: float = 3.0
    step: float = 0.35
    max_walk: float = 24.0
    loop_radius: float = 6.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind={self.kind!r}: must be one of {', '.join(KINDS)}")
        for name in ("n_views", "height", "width"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name}={v!r}: must be an integer >= 1")
        for name in ("height", "width"):
            if getattr(self, name) % 16:
                raise ConfigError(f"{name}={getattr(self, name)}: must be a multiple of 16")
        if not isinstance(self.portrait_every, (int, np.integer)) or self.portrait_every < 0:
            raise ConfigError(f"portrait_every={self.portrait_every!r}: must be an integer >= 0")
        lo, hi = self.focal_range
        if not (0 < lo <= hi and np.isfinite(hi)):
            raise ConfigError(f"focal_range={self.focal_range!r}: need 0 < low <= high")
        if self.n_objects < 0:
            raise ConfigError(f"n_objects={self.n_objects!r}: must be >= 0")
        for name in ("radius", "step", "max_walk"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ConfigError(f"{name}={v!r}: must be a finite number > 0")
        if self.radius < 2.2 or self.radius > 6.0:
            raise ConfigError(
                f"radius={self.radius!r}: must be in [2.2, 6] (cameras between the objects and the walls)"
            )


@dataclass(frozen=True, eq=False)
class Geometry:
    """Analytic scene: a closed axis-aligned room, spheres and yaw-rotated boxes (metres, z up).

    Attributes:
        room_lo, room_hi: (3,) opposite corners of the room; cameras must be inside it.
        spheres: (S, 4) centre xyz and radius.
        boxes: (B, 7) centre xyz, half sizes xyz and yaw (rotation about z, radians).
        colors: (6 + S + B, 3) base colours in [0, 1]: the 6 room faces (-x, +x, -y, +y, -z, +z), spheres, boxes.
        waves: (3, 4) texture waves (direction * frequency xyz, phase).
    """

    room_lo: np.ndarray
    room_hi: np.ndarray
    spheres: np.ndarray
    boxes: np.ndarray
    colors: np.ndarray
    waves: np.ndarray

    def bounding_spheres(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres (S+B, 3) and radii (S+B,) enclosing every object, spheres first."""
        centres = np.concatenate([self.spheres[:, :3], self.boxes[:, :3]], axis=0)
        radii = np.concatenate([self.spheres[:, 3], np.linalg.norm(self.boxes[:, 3:6], axis=1)])
        return centres, radii


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A rendered ground-truth scene.

    Attributes:
        kind: layout name (or ``"custom"`` for :func:`render_scene`).
        cam2w: (N, 4, 4) float64 camera-to-world, OpenCV convention.
        intrinsics: (N, 3, 3) float64, ``fx = fy``, principal point ``(W/2, H/2)``.
        depthmaps: N arrays (H_i, W_i) float32, z-depth along the camera axis, all > 0.
        images: N arrays (H_i, W_i, 3) uint8, procedurally textured and shaded.
        extent: scene scale used to normalise ATE: the diagonal of the bounding box of the camera centres, or of
            the room if all centres coincide (single view).
        geometry: the analytic scene.
        spec: the :class:`SceneSpec` it came from (None for custom cameras).
    """

    kind: str
    cam2w: np.ndarray
    intrinsics: np.ndarray
    depthmaps: list[np.ndarray]
    images: list[np.ndarray]
    extent: float
    geometry: Geometry
    spec: SceneSpec | None = None

    @property
    def n_views(self) -> int:
        return len(self.depthmaps)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(H_i, W_i) of every view."""
        return [tuple(d.shape) for d in self.depthmaps]  # type: ignore[misc]

    @property
    def focals(self) -> np.ndarray:
        """(N,) float64 focal lengths in pixels."""
        return self.intrinsics[:, 0, 0].copy()

    def points_cam(self, i: int) -> np.ndarray:
        """(H, W, 3) float64 points of view ``i`` in its own camera frame (depth times the pixel ray)."""
        depth = self.depthmaps[i].astype(np.float64)
        h, w = depth.shape
        k = self.intrinsics[i]
        xs = (np.arange(w) - k[0, 2]) / k[0, 0]
        ys = (np.arange(h) - k[1, 2]) / k[1, 1]
        out = np.empty((h, w, 3))
        out[..., 0] = xs[None, :] * depth
        out[..., 1] = ys[:, None] * depth
        out[..., 2] = depth
        return out

    def points(self, i: int) -> np.ndarray:
        """(H, W, 3) float64 world points seen by every pixel of view ``i``."""
        pc = self.points_cam(i)
        return pc @ self.cam2w[i, :3, :3].T + self.cam2w[i, :3, 3]

    def covisibility(self, step: int = 16, tol: float = 0.02) -> np.ndarray:
        """(N, N) float64 ground-truth overlap: entry (i, j) is the share of view i's pixels (every ``step``-th)
        whose surface point view j sees (inside its image, not hidden: depth within ``tol`` relative); 1 on the
        diagonal. Not symmetric (a close view sees less of a far one's image than the other way round)."""
        n = self.n_views
        out = np.eye(n)
        grids = [self.points(i)[step // 2 :: step, step // 2 :: step].reshape(-1, 3) for i in range(n)]
        for j in range(n):
            h, w = self.depthmaps[j].shape
            for i in range(n):
                if i == j:
                    continue
                uv, z = self.project(j, grids[i])
                u, v = np.rint(uv[:, 0]), np.rint(uv[:, 1])
                inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
                ui, vi = u[inside].astype(np.int64), v[inside].astype(np.int64)
                seen = np.abs(self.depthmaps[j][vi, ui] - z[inside]) <= tol * z[inside]
                out[i, j] = seen.sum() / len(z)
        return out

    def project(self, j: int, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (..., 3) into view ``j``: pixel (x, y) (..., 2) and z-depth (...,) float64."""
        w2c = np.linalg.inv(self.cam2w[j])
        pc = np.asarray(world, np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[..., 2]
        k = self.intrinsics[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([k[0, 0] * pc[..., 0] / z + k[0, 2], k[1, 1] * pc[..., 1] / z + k[1, 2]], axis=-1)
        return uv, z
