"""Ground-truth synthetic scenes and a MASt3R-like prediction simulator.

Two halves:

- :func:`make_scene` builds a seeded scene (a closed room holding a few spheres and yaw-rotated boxes), places
  cameras in one of three layouts and ray-casts every pixel analytically (numpy, vectorised over all pixels of a
  chunk of views). Every pixel hits geometry because the cameras sit inside the room. Depth maps, textured images
  and per-pixel world points are exact up to float32 storage.
- :func:`simulate_predictions` turns that truth into :class:`~sparsega.types.PairPrediction` values that look like
  MASt3R's output: per-pass unknown scale, a smooth multiplicative depth distortion, a small focal error, additive
  noise, confidences that drop where the injected error grows, and grid matches with pixel noise and outliers.

Conventions (the package's): OpenCV cameras (x right, y down, z forward), ``cam2w`` (4, 4), pixel ``(x, y)`` =
(column, row) with pixel centres at integer coordinates; pixel ``(x, y)`` of view ``i`` looks along
``K_i^-1 [x, y, 1]``. Intrinsics have ``fx = fy`` and the principal point at ``(W/2, H/2)``, the value the
alignment initialises it to (and the one the reference's focal estimator assumes), so a perfect reconstruction
needs no principal-point change. The world is z-up (the floor is ``z = 0``); that only matters to the layouts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, InputError
from ..types import PairPrediction

log = logging.getLogger(__name__)

KINDS = ("orbit", "walk", "hemisphere")
_EPS_T = 1e-9
_CHUNK_PIXELS = 1 << 18  # rays ray-cast together; bounds the temporaries to a few tens of MB


def base_focal(height: int, width: int) -> float:
    """Focal (pixels) of a 60 degree field of view on the long side: ``max(H, W) / (2 tan 30deg)``."""
    return max(height, width) / (2.0 * math.tan(math.radians(30.0)))


# ----------------------------------------------------------------------------------------------------------------
# Specs and geometry
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneSpec:
    """What :func:`make_scene` builds.

    Attributes:
        kind: camera layout, ``"orbit"`` (circle around an object cluster, looking at it), ``"walk"`` (forward
            walk along a corridor lined with objects) or ``"hemisphere"`` (random positions on an upper
            hemisphere, looking at the centre).
        n_views: number of cameras (>= 1).
        height, width: landscape image size in pixels, multiples of 16.
        seed: everything random (objects, cameras, focals, textures) derives from it.
        portrait_every: if ``p > 0``, views ``p-1, 2p-1, ...`` are portrait (``width x height`` swapped).
        focal_range: per-view focal factor drawn uniformly in this range, times :func:`base_focal`.
        n_objects: objects in the central cluster (orbit, hemisphere).
        radius: camera distance to the centre (orbit, hemisphere), metres.
        step: distance between consecutive walk cameras (shrunk so the walk is at most ``max_walk`` long).
        max_walk: longest walk, metres.
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
            raise ConfigError(f"radius={self.radius!r}: must be in [2.2, 6] (cameras between the objects and the walls)")


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

    def project(self, j: int, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (..., 3) into view ``j``: pixel (x, y) (..., 2) and z-depth (...,) float64."""
        w2c = np.linalg.inv(self.cam2w[j])
        pc = np.asarray(world, np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[..., 2]
        k = self.intrinsics[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([k[0, 0] * pc[..., 0] / z + k[0, 2], k[1, 1] * pc[..., 1] / z + k[1, 2]], axis=-1)
        return uv, z


# ----------------------------------------------------------------------------------------------------------------
# Ray casting
# ----------------------------------------------------------------------------------------------------------------

_TILE = 16  # rays are cast in 16x16-pixel tiles; objects are culled per tile


def _tile_rays(
    cam2w: np.ndarray, k: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """World ray directions of one view in tile order, and each tile's normalised image bounds.

    Returns:
        dirs (3, T, TILE*TILE) float64 unnormalised world directions ``R K^-1 [x, y, 1]`` (camera z component 1,
        so the ray parameter is the z-depth), tiles row-major over the image padded to whole tiles;
        bounds (T, 4) float64 ``(x_lo, x_hi, y_lo, y_hi)`` of ``(x - cx) / f`` and ``(y - cy) / f`` over the
        tile's pixel footprints.
    """
    h, w = shape
    th, tw = -(-h // _TILE), -(-w // _TILE)
    ty, tx = np.divmod(np.arange(th * tw), tw)
    iy, ix = np.divmod(np.arange(_TILE * _TILE), _TILE)
    xs = (tx[:, None] * _TILE + ix[None, :] - k[0, 2]) / k[0, 0]
    ys = (ty[:, None] * _TILE + iy[None, :] - k[1, 2]) / k[1, 1]
    rot = cam2w[:3, :3]
    dirs = rot[:, 0, None, None] * xs + rot[:, 1, None, None] * ys + rot[:, 2, None, None]
    bounds = np.stack([
        (tx * _TILE - 0.5 - k[0, 2]) / k[0, 0], (tx * _TILE + _TILE - 0.5 - k[0, 2]) / k[0, 0],
        (ty * _TILE - 0.5 - k[1, 2]) / k[1, 1], (ty * _TILE + _TILE - 0.5 - k[1, 2]) / k[1, 1],
    ], axis=1)
    return dirs, bounds


def _cull_tiles(geom: Geometry, w2c_rows: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """(R, S+B) bool: may object k be seen through tile r? Conservative test of the object's bounding sphere
    against the tile's four side planes (all through the camera centre) and the camera plane.

    Args:
        w2c_rows: (R, 4, 4) world-to-camera of each tile's view. bounds: (R, 4) from :func:`_tile_rays`.
    """
    centres, radii = geom.bounding_spheres()
    pc = np.matmul(w2c_rows[:, None, :3, :3], centres[None, :, :, None])[..., 0] + w2c_rows[:, None, :3, 3]
    x, y, z = pc[..., 0], pc[..., 1], pc[..., 2]
    r = radii[None, :] * (1 + 1e-9) + 1e-9
    ok = z > -r
    for col, sign, comp in ((1, 1.0, x), (0, -1.0, x), (3, 1.0, y), (2, -1.0, y)):
        b = bounds[:, col, None]
        ok &= sign * (comp - b * z) <= r * np.sqrt(1 + b * b)
    return ok


def _raycast(
    geom: Geometry, orig: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, visible: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays ``orig[r] + t d[r, p]`` (d unnormalised, float64).

    Args:
        orig: (R, 3) one origin per row of rays. dx, dy, dz: (R, P) direction components.
        visible: (R, S+B) objects worth testing per row (see :func:`_cull_tiles`).
    Returns:
        t (R, P) float64 ray parameter of the first hit and hit id (R, P) int16: 0..5 room face
        (-x, +x, -y, +y, -z, +z), 6 + k object k (spheres first, then boxes).
    """
    # room: the rays start inside, so the hit is where they leave it (the nearest of the three axis exits)
    t = np.full(dx.shape, np.inf)
    hit = np.zeros(dx.shape, np.int16)
    with np.errstate(divide="ignore", invalid="ignore"):
        for a, d in enumerate((dx, dy, dz)):
            inv = 1.0 / d
            ta = np.maximum((geom.room_lo[a] - orig[:, a, None]) * inv, (geom.room_hi[a] - orig[:, a, None]) * inv)
            closer = ta < t
            t = np.where(closer, ta, t)
            hit = np.where(closer, np.where(d > 0, 2 * a + 1, 2 * a).astype(np.int16), hit)
    n_sph = len(geom.spheres)
    for k in range(visible.shape[1]):
        rows = np.flatnonzero(visible[:, k])
        if len(rows) == 0:
            continue
        sx, sy, sz, o = dx[rows], dy[rows], dz[rows], orig[rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            if k < n_sph:
                c, r = geom.spheres[k, :3], geom.spheres[k, 3]
                oc = o - c
                a2 = sx * sx + sy * sy + sz * sz
                b = sx * oc[:, 0, None] + sy * oc[:, 1, None] + sz * oc[:, 2, None]
                cc = (np.einsum("ra,ra->r", oc, oc) - r * r)[:, None]
                disc = b * b - a2 * cc
                q = -b + np.sqrt(disc)  # numerically stable roots: t_near = cc / q, t_far = q / a
                tk = np.where(cc > 0, cc / q, q / a2)
                ok = (disc >= 0) & (q > 0) & (tk > _EPS_T)
            else:
                bx = geom.boxes[k - n_sph]
                cos, sin = math.cos(bx[6]), math.sin(bx[6])
                oc = o - bx[:3]
                ol = (oc[:, 0] * cos + oc[:, 1] * sin, -oc[:, 0] * sin + oc[:, 1] * cos, oc[:, 2])
                dl = (sx * cos + sy * sin, -sx * sin + sy * cos, sz)
                tn = tf = None
                for a in range(3):
                    inv = 1.0 / dl[a]
                    t1 = (-bx[3 + a] - ol[a])[:, None] * inv
                    t2 = (bx[3 + a] - ol[a])[:, None] * inv
                    lo, hi = np.fmin(t1, t2), np.fmax(t1, t2)  # fmin/fmax drop the NaN of 0 * inf
                    tn = lo if tn is None else np.fmax(tn, lo)
                    tf = hi if tf is None else np.fmin(tf, hi)
                tk = np.where(tn > _EPS_T, tn, tf)
                ok = (tn <= tf) & (tf > _EPS_T)
        tr = t[rows]
        closer = ok & (tk < tr)
        t[rows] = np.where(closer, tk, tr)
        hit[rows] = np.where(closer, np.int16(6 + k), hit[rows])
    return t, hit


def _shade(geom: Geometry, px: np.ndarray, py: np.ndarray, pz: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """(n, 3) uint8 colours of surface points (px, py, pz) (n,) hit on primitive ``hit`` (n,) int16: base colour
    x checker x waves x Lambert shading (light from above). Works on the points sorted by primitive so each
    primitive is a contiguous slice."""
    n_sph = len(geom.spheres)
    order = np.argsort(hit, kind="stable")
    ids, starts = np.unique(hit[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    p = np.stack([px, py, pz])[:, order]
    normal = np.zeros((3, len(order)))
    inv_cell = np.empty(len(order))
    base = np.empty((len(order), 3), np.float32)
    for pid, s, e in zip(ids.tolist(), starts.tolist(), ends.tolist()):
        base[s:e] = geom.colors[pid]
        inv_cell[s:e] = 2.0 if pid < 6 else 1 / 0.15
        if pid < 6:  # room face: inward normal
            normal[pid // 2, s:e] = -1.0 if pid % 2 else 1.0
        elif pid - 6 < n_sph:
            c, r = geom.spheres[pid - 6, :3], geom.spheres[pid - 6, 3]
            normal[:, s:e] = (p[:, s:e] - c[:, None]) / r
        else:
            bx = geom.boxes[pid - 6 - n_sph]
            cos, sin = math.cos(bx[6]), math.sin(bx[6])
            q = p[:, s:e] - bx[:3, None]
            local = np.stack([q[0] * cos + q[1] * sin, -q[0] * sin + q[1] * cos, q[2]])
            axis = np.argmax(np.abs(local) / bx[3:6, None], axis=0)
            cols = np.arange(e - s)
            nl = np.zeros_like(local)
            nl[axis, cols] = np.sign(local[axis, cols])
            normal[0, s:e] = nl[0] * cos - nl[1] * sin
            normal[1, s:e] = nl[0] * sin + nl[1] * cos
            normal[2, s:e] = nl[2]
    light = np.array([0.35, 0.25, 0.9])
    light /= np.linalg.norm(light)
    shade = 0.4 + 0.6 * np.clip(light @ normal, 0.0, 1.0)
    cells = np.floor(p * inv_cell + 0.37).astype(np.int64)
    check = (cells[0] + cells[1] + cells[2]) & 1
    waves = np.sin(geom.waves[:, :3] @ p + geom.waves[:, 3:]).mean(axis=0)
    gain = (shade * (0.55 + 0.45 * check) * (0.8 + 0.2 * waves)).astype(np.float32)
    rgb = np.clip(np.rint(base * (255.0 * gain)[:, None]), 0, 255).astype(np.uint8)
    out = np.empty_like(rgb)
    out[order] = rgb
    return out

def render_scene(
    geometry: Geometry,
    cam2w: np.ndarray,
    intrinsics: np.ndarray,
    shapes: Sequence[tuple[int, int]],
    kind: str = "custom",
    spec: SceneSpec | None = None,
) -> SyntheticScene:
    """Ray-cast ``geometry`` from the given cameras.

    Args:
        cam2w: (N, 4, 4) camera-to-world (OpenCV), every centre inside the room.
        intrinsics: (N, 3, 3) pinhole matrices with zero skew.
        shapes: N (H, W) image sizes.
    Returns:
        the :class:`SyntheticScene`; ``depthmaps[i][y, x]`` is the z-depth of the first surface along
        ``K_i^-1 [x, y, 1]``.
    """
    cam2w = np.asarray(cam2w, np.float64)
    intrinsics = np.asarray(intrinsics, np.float64)
    n = len(cam2w)
    shapes = [(int(h), int(w)) for h, w in shapes]
    if cam2w.shape != (n, 4, 4) or intrinsics.shape != (n, 3, 3) or len(shapes) != n:
        raise InputError(f"render_scene: cam2w {cam2w.shape}, intrinsics {intrinsics.shape} and {len(shapes)} "
                         "shapes disagree")
    if np.abs(intrinsics[:, 0, 1]).max(initial=0) > 0:
        raise InputError("render_scene: intrinsics must have zero skew")
    centres = cam2w[:, :3, 3]
    if ((centres <= geometry.room_lo) | (centres >= geometry.room_hi)).any():
        raise InputError("render_scene: every camera centre must lie inside the room")
    w2c = np.linalg.inv(cam2w)
    n_tiles = [-(-h // _TILE) * -(-w // _TILE) for h, w in shapes]
    depthmaps: list[np.ndarray] = [np.empty(0, np.float32)] * n
    images: list[np.ndarray] = [np.empty(0, np.uint8)] * n
    start = 0
    while start < n:  # chunks of consecutive views, about _CHUNK_PIXELS rays each
        stop, total = start + 1, n_tiles[start]
        while stop < n and (total + n_tiles[stop]) * _TILE * _TILE <= _CHUNK_PIXELS:
            total += n_tiles[stop]
            stop += 1
        views = list(range(start, stop))
        parts = [_tile_rays(cam2w[v], intrinsics[v], shapes[v]) for v in views]
        dirs = np.concatenate([d for d, _ in parts], axis=1)
        bounds = np.concatenate([b for _, b in parts], axis=0)
        view_of_row = np.repeat(views, [n_tiles[v] for v in views])
        orig = centres[view_of_row]
        visible = _cull_tiles(geometry, w2c[view_of_row], bounds)
        t, hit = _raycast(geometry, orig, dirs[0], dirs[1], dirs[2], visible)
        pts = orig.T[:, :, None] + t[None] * dirs
        rgb = _shade(geometry, pts[0].ravel(), pts[1].ravel(), pts[2].ravel(), hit.ravel()).reshape(*t.shape, 3)
        row = 0
        for v in views:
            h, w = shapes[v]
            th, tw = -(-h // _TILE), -(-w // _TILE)
            sl = slice(row, row + th * tw)
            row += th * tw
            depth = t[sl].reshape(th, tw, _TILE, _TILE).transpose(0, 2, 1, 3).reshape(th * _TILE, tw * _TILE)
            depthmaps[v] = np.ascontiguousarray(depth[:h, :w], dtype=np.float32)
            img = rgb[sl].reshape(th, tw, _TILE, _TILE, 3).transpose(0, 2, 1, 3, 4).reshape(th * _TILE, tw * _TILE, 3)
            images[v] = np.ascontiguousarray(img[:h, :w])
        start = stop
    spread = centres.max(axis=0) - centres.min(axis=0)
    extent = float(np.linalg.norm(spread))
    if extent < 1e-9:
        extent = float(np.linalg.norm(geometry.room_hi - geometry.room_lo))
    return SyntheticScene(kind=kind, cam2w=cam2w, intrinsics=intrinsics, depthmaps=depthmaps, images=images,
                          extent=extent, geometry=geometry, spec=spec)

# ----------------------------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------------------------


def look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """(4, 4) OpenCV cam2w at ``eye`` looking at ``target`` with world z up (image y points down), rolled by
    ``roll`` radians about the optical axis."""
    eye = np.asarray(eye, np.float64)
    fwd = np.asarray(target, np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:
        right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    rot = np.stack([right, down, fwd], axis=1)
    if roll:
        c, s = math.cos(roll), math.sin(roll)
        rot = rot @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = eye
    return out


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) saturated random colours in [0.25, 1]."""
    hue = rng.uniform(0, 1, n)
    rgb = 0.5 + 0.5 * np.cos(2 * np.pi * (hue[:, None] + np.array([0.0, 1 / 3, 2 / 3])))
    return 0.25 + 0.75 * rgb


def _cluster(rng: np.random.Generator, n_objects: int) -> tuple[list[list[float]], list[list[float]]]:
    """Spheres and boxes of the central cluster (within 1.5 m of the z axis)."""
    spheres: list[list[float]] = []
    boxes: list[list[float]] = [[0.0, 0.0, 0.2, 0.6, 0.6, 0.2, rng.uniform(0, np.pi / 2)]]  # pedestal
    for k in range(n_objects):
        ang, rad = rng.uniform(0, 2 * np.pi), 1.3 * math.sqrt(rng.uniform(0, 1))
        x, y = rad * math.cos(ang), rad * math.sin(ang)
        if k % 2 == 0:
            r = rng.uniform(0.15, 0.4)
            z = r if rng.uniform() < 0.6 else rng.uniform(r, 1.2)
            spheres.append([x, y, z, r])
        else:
            hx, hy, hz = rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.3), rng.uniform(0.15, 0.6)
            boxes.append([x, y, hz, hx, hy, hz, rng.uniform(0, np.pi / 2)])
    return spheres, boxes


def _wall_boxes(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, n: int) -> list[list[float]]:
    """Boxes standing against the walls of a room (background structure)."""
    out = []
    for _ in range(n):
        wall = rng.integers(4)
        hx, hy, hz = rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.4), rng.uniform(0.3, 1.5)
        if wall < 2:
            x = lo[0] + hy if wall == 0 else hi[0] - hy
            y = rng.uniform(lo[1] + 1, hi[1] - 1)
            out.append([x, y, hz, hy, hx, hz, 0.0])
        else:
            y = lo[1] + hy if wall == 2 else hi[1] - hy
            x = rng.uniform(lo[0] + 1, hi[0] - 1)
            out.append([x, y, hz, hx, hy, hz, 0.0])
    return out


def _geometry(rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float], spheres: list[list[float]],
              boxes: list[list[float]]) -> Geometry:
    sph = np.asarray(spheres, np.float64).reshape(-1, 4)
    bxs = np.asarray(boxes, np.float64).reshape(-1, 7)
    colors = np.concatenate([0.55 + 0.4 * _palette(rng, 6) * 0.6, _palette(rng, len(sph) + len(bxs))])
    dirs = rng.normal(size=(3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = np.concatenate([dirs * rng.uniform(5, 14, (3, 1)), rng.uniform(0, 2 * np.pi, (3, 1))], axis=1)
    return Geometry(room_lo=np.asarray(lo, np.float64), room_hi=np.asarray(hi, np.float64), spheres=sph,
                    boxes=bxs, colors=colors, waves=waves)


def _layout(spec: SceneSpec, rng: np.random.Generator) -> tuple[Geometry, np.ndarray]:
    """Geometry and (N, 4, 4) cameras for ``spec.kind``."""
    n = spec.n_views
    cams = np.empty((n, 4, 4))
    if spec.kind in ("orbit", "hemisphere"):
        half, height = (6.0, 5.0) if spec.kind == "orbit" else (8.0, 7.0)
        lo, hi = np.array([-half, -half, 0.0]), np.array([half, half, height])
        spheres, boxes = _cluster(rng, spec.n_objects)
        boxes += _wall_boxes(rng, lo, hi, 8)
        geom = _geometry(rng, lo, hi, spheres, boxes)
        if spec.kind == "orbit":
            phase = rng.uniform(0, 2 * np.pi)
            ang = phase + 2 * np.pi * np.arange(n) / n + rng.normal(0, 0.12 * 2 * np.pi / max(n, 1), n)
            rad = spec.radius * rng.uniform(0.92, 1.08, n)
            z = 1.5 + rng.uniform(-0.3, 0.3, n)
            eyes = np.stack([rad * np.cos(ang), rad * np.sin(ang), z], axis=1)
            centre = np.array([0.0, 0.0, 0.5])
        else:
            az = rng.uniform(0, 2 * np.pi, n)
            sin_el = rng.uniform(math.sin(math.radians(12)), math.sin(math.radians(70)), n)
            cos_el = np.sqrt(1 - sin_el**2)
            rad = spec.radius * rng.uniform(0.9, 1.15, n)
            centre = np.array([0.0, 0.0, 0.4])
            eyes = centre + rad[:, None] * np.stack([cos_el * np.cos(az), cos_el * np.sin(az), sin_el], axis=1)
        targets = centre + rng.normal(0, 0.15, (n, 3))
        rolls = rng.normal(0, math.radians(2.0), n)
        for k in range(n):
            cams[k] = look_at(eyes[k], targets[k], rolls[k])
        return geom, cams
    # walk: a corridor along +x, objects on both sides, the middle kept clear for the cameras
    step = min(spec.step, spec.max_walk / max(n - 1, 1))
    length = step * (n - 1)
    lo, hi = np.array([-3.0, -2.5, 0.0]), np.array([length + 6.0, 2.5, 3.2])
    spheres, boxes = [], []
    for side in (-1.0, 1.0):
        x = -2.0 + rng.uniform(0, 1)
        while x < length + 5.0:
            kind = rng.integers(3)
            if kind == 0:  # box against the wall
                hx, hy, hz = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5), rng.uniform(0.3, 1.2)
                y = side * (2.5 - hy - rng.uniform(0, 0.3))
                boxes.append([x, y, hz, hx, hy, hz, rng.uniform(-0.25, 0.25)])
            elif kind == 1:  # pillar
                boxes.append([x, side * rng.uniform(1.3, 2.0), 1.6, 0.15, 0.15, 1.6, rng.uniform(0, np.pi / 2)])
            else:  # ball on the floor or hanging
                r = rng.uniform(0.2, 0.4)
                z = r if rng.uniform() < 0.5 else rng.uniform(1.0, 2.6)
                spheres.append([x, side * rng.uniform(1.3, 2.5 - r), z, r])
            x += rng.uniform(0.8, 1.8)
    geom = _geometry(rng, lo, hi, spheres, boxes)
    s = np.arange(n) * step
    freqs, phases = rng.uniform(0.15, 0.6, 3), rng.uniform(0, 2 * np.pi, (2, 3))
    smooth_y = np.sin(np.outer(s, freqs) + phases[0]).sum(axis=1) / 3
    smooth_yaw = np.sin(np.outer(s, freqs[::-1]) + phases[1]).sum(axis=1) / 3
    xs = s + rng.normal(0, 0.08 * step, n)
    ys = 0.3 * smooth_y + rng.normal(0, 0.03, n)
    zs = 1.6 + rng.normal(0, 0.03, n)
    yaw = math.radians(15.0) * smooth_yaw + rng.normal(0, math.radians(2.0), n)
    pitch = rng.normal(math.radians(-4.0), math.radians(2.0), n)
    rolls = rng.normal(0, math.radians(1.5), n)
    for k in range(n):
        fwd = np.array([math.cos(yaw[k]) * math.cos(pitch[k]), math.sin(yaw[k]) * math.cos(pitch[k]),
                        math.sin(pitch[k])])
        eye = np.array([xs[k], ys[k], zs[k]])
        cams[k] = look_at(eye, eye + fwd, rolls[k])
    return geom, cams


def make_scene(kind: str = "orbit", n_views: int = 8, height: int = 192, width: int = 256, seed: int = 0,
               **kw: Any) -> SyntheticScene:
    """Build and render a seeded ground-truth scene (see :class:`SceneSpec` for the options).

    Deterministic in its arguments. Focals vary per view (``focal_range`` x :func:`base_focal`), principal
    points sit at ``(W/2, H/2)``; with ``portrait_every=p`` every p-th view is ``width x height``.
    """
    names = {f.name for f in dataclasses.fields(SceneSpec)}
    unknown = sorted(set(kw) - names)
    if unknown:
        raise ConfigError(f"make_scene: unknown option(s): {', '.join(unknown)}")
    spec = SceneSpec(kind=kind, n_views=n_views, height=height, width=width, seed=seed, **kw)
    return scene_from_spec(spec)


def scene_from_spec(spec: SceneSpec) -> SyntheticScene:
    """Render the scene described by ``spec``."""
    rng = np.random.default_rng([int(spec.seed), KINDS.index(spec.kind)])
    geom, cams = _layout(spec, rng)
    n = spec.n_views
    shapes = []
    for k in range(n):
        portrait = spec.portrait_every > 0 and (k + 1) % spec.portrait_every == 0
        shapes.append((spec.width, spec.height) if portrait else (spec.height, spec.width))
    f0 = base_focal(spec.height, spec.width)
    focals = f0 * rng.uniform(spec.focal_range[0], spec.focal_range[1], n)
    intr = np.zeros((n, 3, 3))
    intr[:, 0, 0] = intr[:, 1, 1] = focals
    intr[:, 0, 2] = [w / 2 for h, w in shapes]
    intr[:, 1, 2] = [h / 2 for h, w in shapes]
    intr[:, 2, 2] = 1.0
    return render_scene(geom, cams, intr, shapes, kind=spec.kind, spec=spec)


# ----------------------------------------------------------------------------------------------------------------
# MASt3R-like prediction simulator
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """How :func:`simulate_predictions` corrupts the truth. Defaults resemble a good MASt3R prediction.

    Pointmaps (per decoding pass (a, b), both maps of the pass share the scale and the focal error):

    - ``scale_range``: the pass's unknown scale, log-uniform in this range.
    - ``depth_distortion``: amplitude (max |.|) of a smooth multiplicative radial distortion, a random cubic
      polynomial field over the image, drawn per pointmap (amplitude uniform in [0.5, 1] x this).
    - ``focal_error``: std of the pass's relative error of the implied focal (x, y scaled by ``1 + e``).
    - ``point_noise``: std of additive Gaussian noise per coordinate, relative to the distance to the camera.
    - ``hidden_noise``: noise multiplier for the pixels of the other image that the reference camera cannot see
      (MASt3R guesses those).
    - ``noise_scale``: multiplies the four corruption knobs above and ``match_px_noise`` (0 = exact).
    - confidences: ``1 + conf_max * exp(-err / conf_sigma)``, err = relative 3D error actually injected.

    Matches (both directions, like the reference's reciprocal matching on the ``subsample`` grid):

    - seeds at pixels ``(s/2 + s a, s/2 + s b)`` of one image, kept when the true point is visible in the other
      image (inside it, in front, depth within ``occlusion_tol`` relative of the other view's depth), then kept
      with probability ``match_keep``; the other end is the true projection plus Gaussian noise of std
      ``match_px_noise`` px, rounded and clipped to the image.
    - inlier confidences log-normal around ``inlier_conf`` (sigma ``conf_spread``), clipped to [1, 30].
    - ``outlier_rate``: fraction of all matches that are outliers (a random pixel at the other end), log-normal
      confidences around ``outlier_conf``, clipped to [1, 30].
    - pairs with fewer than ``min_matches`` true matches are "non-overlapping": they get ``poor_matches`` random
      matches with confidences uniform in [1, ``poor_conf_max``] (<= 5, below the matching threshold).
    """

    scale_range: tuple[float, float] = (0.5, 2.0)
    depth_distortion: float = 0.025
    focal_error: float = 0.01
    point_noise: float = 0.005
    hidden_noise: float = 3.0
    noise_scale: float = 1.0
    conf_max: float = 20.0
    conf_sigma: float = 0.03
    subsample: int = 8
    occlusion_tol: float = 0.02
    match_keep: float = 0.85
    match_px_noise: float = 0.7
    inlier_conf: float = 9.0
    outlier_conf: float = 2.5
    conf_spread: float = 0.5
    outlier_rate: float = 0.1
    min_matches: int = 8
    poor_matches: tuple[int, int] = (3, 10)
    poor_conf_max: float = 4.5

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        lo, hi = self.scale_range
        if not (0 < lo <= hi and np.isfinite(hi)):
            raise bad("scale_range", "need 0 < low <= high")
        for name in ("depth_distortion", "focal_error", "point_noise", "hidden_noise", "noise_scale", "conf_max",
                     "match_px_noise", "conf_spread", "occlusion_tol"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise bad(name, "must be a finite number >= 0")
        for name in ("conf_sigma", "inlier_conf", "outlier_conf"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise bad(name, "must be a finite number > 0")
        if not 0 <= self.outlier_rate < 1:
            raise bad("outlier_rate", "must be in [0, 1)")
        if not 0 < self.match_keep <= 1:
            raise bad("match_keep", "must be in (0, 1]")
        if not isinstance(self.subsample, (int, np.integer)) or self.subsample < 1:
            raise bad("subsample", "must be an integer >= 1")
        if self.min_matches < 0:
            raise bad("min_matches", "must be >= 0")
        if not 0 <= self.poor_matches[0] <= self.poor_matches[1]:
            raise bad("poor_matches", "need 0 <= low <= high")
        if not 1 <= self.poor_conf_max <= 5:
            raise bad("poor_conf_max", "must be in [1, 5]")

    def replace(self, **overrides: Any) -> "SimConfig":
        """A copy with some fields changed; unknown names raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown simulator option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides)


@dataclass
class _ViewCache:
    """Per-view truth reused by every pair: camera-frame points, depth, grid seeds, distortion basis."""

    pts: np.ndarray  # (3, H, W) float32 camera-frame points, channel first
    dist: np.ndarray  # (H, W) float32 distance to the camera centre
    depth: np.ndarray  # (H, W) float32
    basis: np.ndarray  # (9, H*W) float32 cubic monomials of normalised pixel coordinates
    seeds: np.ndarray  # (S,) int64 flat indices of the grid seeds


def _norm3(p: np.ndarray) -> np.ndarray:
    """Euclidean norm over the first axis of a (3, ...) array."""
    return np.sqrt(p[0] * p[0] + p[1] * p[1] + p[2] * p[2])


def _view_cache(scene: SyntheticScene, i: int, subsample: int) -> _ViewCache:
    pts = np.ascontiguousarray(scene.points_cam(i).transpose(2, 0, 1), dtype=np.float32)
    h, w = scene.depthmaps[i].shape
    half = max(h, w) / 2.0
    u = ((np.arange(w) - w / 2.0) / half).astype(np.float32)
    v = ((np.arange(h) - h / 2.0) / half).astype(np.float32)
    uu, vv = np.broadcast_to(u[None, :], (h, w)).ravel(), np.broadcast_to(v[:, None], (h, w)).ravel()
    basis = np.stack([uu, vv, uu * uu, uu * vv, vv * vv, uu**3, uu * uu * vv, uu * vv * vv, vv**3], axis=0)
    s = subsample
    gy, gx = np.meshgrid(np.arange(s // 2, h, s), np.arange(s // 2, w, s), indexing="ij")
    return _ViewCache(pts=pts, dist=_norm3(pts), depth=scene.depthmaps[i], basis=basis, seeds=(gy * w + gx).ravel())


def _transfer(src: _ViewCache, dst: _ViewCache, a2b: np.ndarray, k_dst: np.ndarray, tol: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Express the points of view a in camera b and project them.

    Returns:
        pts (3, Ha, Wa) float32 in frame b; u, v (Ha, Wa) float32 pixel coordinates in b; visible (Ha, Wa) bool
        (in front, inside b's image and not occluded in b's depth map).
    """
    rot = a2b[:3, :3].astype(np.float32)
    shift = a2b[:3, 3].astype(np.float32)
    p = src.pts
    pts = np.stack([rot[r, 0] * p[0] + rot[r, 1] * p[1] + rot[r, 2] * p[2] + shift[r] for r in range(3)])
    z = pts[2]
    hb, wb = dst.depth.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_z = np.float32(1.0) / z
        u = np.float32(k_dst[0, 0]) * pts[0] * inv_z + np.float32(k_dst[0, 2])
        v = np.float32(k_dst[1, 1]) * pts[1] * inv_z + np.float32(k_dst[1, 2])
    inside = (z > 1e-6) & (u > -0.5) & (u < wb - 0.5) & (v > -0.5) & (v < hb - 0.5)
    ui = np.rint(np.where(inside, u, 0)).astype(np.intp)
    vi = np.rint(np.where(inside, v, 0)).astype(np.intp)
    np.clip(ui, 0, wb - 1, out=ui)
    np.clip(vi, 0, hb - 1, out=vi)
    visible = inside & (np.abs(dst.depth[vi, ui] - z) <= tol * z)
    return pts, u, v, visible


class _NoiseBank:
    """A large block of i.i.d. standard normal float32 samples; each pointmap's noise is a window at a random
    offset with a random sign. Drawing fresh normals costs ~15 ns a sample and dominated the simulation; within
    one pointmap the window is still i.i.d. Gaussian, and two windows only share samples at one arbitrary flat
    shift, which nothing downstream can notice."""

    def __init__(self, seed: int, min_size: int) -> None:
        size = max(1 << 22, 4 * min_size)
        self.samples = np.random.default_rng([int(seed), 0x6E6F6973]).standard_normal(size, dtype=np.float32)

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        start = int(rng.integers(0, len(self.samples) - n + 1))
        out = self.samples[start:start + n].reshape(shape)
        return -out if rng.integers(2) else out.copy()


def _corrupt(truth: np.ndarray, dist: np.ndarray, basis: np.ndarray, rng: np.random.Generator, sim: SimConfig,
             scale: float, focal_err: float, noise_rel: np.ndarray | float, bank: _NoiseBank
             ) -> tuple[np.ndarray, np.ndarray]:
    """One predicted pointmap and its confidence from the true (3, H, W) float32 points in the reference frame.

    ``dist`` (H, W) is the truth's distance to the reference camera; ``noise_rel`` the noise std relative to it.
    Returns the (H, W, 3) float32 scaled pointmap and its (H, W) float32 confidence >= 1.
    """
    h, w = truth.shape[1:]
    amp = sim.depth_distortion * sim.noise_scale
    factor = np.ones((h, w), np.float32)
    if amp > 0:
        field = rng.standard_normal(basis.shape[0]).astype(np.float32) @ basis
        peak = float(np.abs(field).max())
        if peak > 0:
            factor += (field * np.float32(amp * rng.uniform(0.5, 1.0) / peak)).reshape(h, w)
    fxy = factor * np.float32(1.0 + focal_err)
    pred = [truth[0] * fxy, truth[1] * fxy, truth[2] * factor]
    sigma = (np.asarray(noise_rel, np.float32) * np.float32(sim.noise_scale)) * dist
    if np.any(sigma > 0):
        noise = bank.draw(rng, (3, h, w))
        noise *= sigma
        for c in range(3):
            pred[c] += noise[c]
    diff = [pred[c] - truth[c] for c in range(3)]
    err = np.sqrt(diff[0] * diff[0] + diff[1] * diff[1] + diff[2] * diff[2]) / dist
    conf = np.exp(err * np.float32(-1.0 / sim.conf_sigma))
    conf *= np.float32(sim.conf_max)
    conf += np.float32(1.0)
    out = np.stack(pred, axis=-1)
    out *= np.float32(scale)
    return out, conf


def _lognormal_conf(rng: np.random.Generator, centre: float, spread: float, n: int) -> np.ndarray:
    return np.clip(centre * np.exp(spread * rng.standard_normal(n)), 1.0, 30.0)


def _simulate_pair(scene: SyntheticScene, cache: dict[int, _ViewCache], i: int, j: int, sim: SimConfig,
                   seed: int, bank: _NoiseBank) -> PairPrediction:
    rng = np.random.default_rng([int(seed), i, j])
    ci, cj = cache[i], cache[j]
    w2c = np.linalg.inv(scene.cam2w[[i, j]])
    i2j = w2c[1] @ scene.cam2w[i]
    j2i = w2c[0] @ scene.cam2w[j]
    pts_i_in_j, u_ij, v_ij, vis_ij = _transfer(ci, cj, i2j, scene.intrinsics[j], sim.occlusion_tol)
    pts_j_in_i, u_ji, v_ji, vis_ji = _transfer(cj, ci, j2i, scene.intrinsics[i], sim.occlusion_tol)

    log_lo, log_hi = np.log(sim.scale_range)
    scales = np.exp(rng.uniform(log_lo, log_hi, 2))
    ferr = rng.standard_normal(2) * sim.focal_error * sim.noise_scale
    hidden_ji = np.where(vis_ji, 1.0, sim.hidden_noise).astype(np.float32) * sim.point_noise
    hidden_ij = np.where(vis_ij, 1.0, sim.hidden_noise).astype(np.float32) * sim.point_noise
    dist_ji = _norm3(pts_j_in_i)
    dist_ij = _norm3(pts_i_in_j)
    pts11, conf11 = _corrupt(ci.pts, ci.dist, ci.basis, rng, sim, scales[0], ferr[0], sim.point_noise, bank)
    pts21, conf21 = _corrupt(pts_j_in_i, dist_ji, cj.basis, rng, sim, scales[0], ferr[0], hidden_ji, bank)
    pts22, conf22 = _corrupt(cj.pts, cj.dist, cj.basis, rng, sim, scales[1], ferr[1], sim.point_noise, bank)
    pts12, conf12 = _corrupt(pts_i_in_j, dist_ij, ci.basis, rng, sim, scales[1], ferr[1], hidden_ij, bank)

    (hi_, wi), (hj, wj) = ci.depth.shape, cj.depth.shape
    px_noise = sim.match_px_noise * sim.noise_scale

    def seeded(seeds: np.ndarray, vis: np.ndarray, u: np.ndarray, v: np.ndarray, h: int, w: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Grid seeds of one image that are visible in the other, and their noisy rounded partners."""
        s = seeds[vis.ravel()[seeds]]
        s = s[rng.uniform(size=len(s)) < sim.match_keep]
        src = np.stack([s % vis.shape[1], s // vis.shape[1]], axis=1)
        tx = u.ravel()[s] + px_noise * rng.standard_normal(len(s))
        ty = v.ravel()[s] + px_noise * rng.standard_normal(len(s))
        dst = np.stack([np.clip(np.rint(tx), 0, w - 1), np.clip(np.rint(ty), 0, h - 1)], axis=1)
        return src.astype(np.int64), dst.astype(np.int64)

    a1, a2 = seeded(ci.seeds, vis_ij, u_ij, v_ij, hj, wj)  # seeds in i -> pixels in j
    b2, b1 = seeded(cj.seeds, vis_ji, u_ji, v_ji, hi_, wi)  # seeds in j -> pixels in i
    xy1, xy2 = np.concatenate([a1, b1]), np.concatenate([a2, b2])
    n_in = len(xy1)
    if n_in < max(sim.min_matches, 1):
        n_poor = int(rng.integers(sim.poor_matches[0], sim.poor_matches[1] + 1))
        xy1 = np.stack([rng.integers(0, wi, n_poor), rng.integers(0, hi_, n_poor)], axis=1)
        xy2 = np.stack([rng.integers(0, wj, n_poor), rng.integers(0, hj, n_poor)], axis=1)
        conf = rng.uniform(1.0, sim.poor_conf_max, n_poor)
    else:
        conf = _lognormal_conf(rng, sim.inlier_conf, sim.conf_spread, n_in)
        n_out = int(round(n_in * sim.outlier_rate / (1.0 - sim.outlier_rate)))
        if n_out:
            n_a = n_out // 2  # half seeded in i (random pixel in j), half seeded in j
            o1a = np.stack(np.divmod(rng.choice(ci.seeds, n_a), wi)[::-1], axis=1)
            o2a = np.stack([rng.integers(0, wj, n_a), rng.integers(0, hj, n_a)], axis=1)
            o2b = np.stack(np.divmod(rng.choice(cj.seeds, n_out - n_a), wj)[::-1], axis=1)
            o1b = np.stack([rng.integers(0, wi, n_out - n_a), rng.integers(0, hi_, n_out - n_a)], axis=1)
            xy1 = np.concatenate([xy1, o1a, o1b])
            xy2 = np.concatenate([xy2, o2a, o2b])
            conf = np.concatenate([conf, _lognormal_conf(rng, sim.outlier_conf, sim.conf_spread, n_out)])
    # reference order: sorted by (flat index in i, flat index in j), duplicates dropped keeping the first
    key1 = xy1[:, 1] * wi + xy1[:, 0]
    key2 = xy2[:, 1] * wj + xy2[:, 0]
    _, first = np.unique(key1 * (hj * wj) + key2, return_index=True)
    first = np.sort(first)
    order = first[np.lexsort((key2[first], key1[first]))]
    xy1, xy2 = xy1[order].astype(np.int64), xy2[order].astype(np.int64)
    conf = conf[order].astype(np.float32)
    mean_conf = [float(c.mean()) for c in (conf11, conf21, conf22, conf12)]
    score = (float(np.prod(mean_conf) ** 0.25), float(conf.sum()), int(len(conf)))
    return PairPrediction(i=i, j=j, pts11=pts11, conf11=conf11, pts21=pts21, conf21=conf21, pts22=pts22,
                          conf22=conf22, pts12=pts12, conf12=conf12, xy1=xy1, xy2=xy2, match_conf=conf,
                          score=score)


def simulate_predictions(scene: SyntheticScene, pairs: np.ndarray | Sequence[Sequence[int]],
                         sim: SimConfig | None = None, seed: int = 0) -> list[PairPrediction]:
    """MASt3R-like predictions for the given image pairs of a ground-truth scene.

    Args:
        scene: from :func:`make_scene` / :func:`render_scene`.
        pairs: (P, 2) image indices; each unordered pair is simulated once, in the orientation of its first
            occurrence (so a symmetrised scene-graph list gives one prediction per edge).
        sim: corruption model (default :class:`SimConfig()`).
        seed: each pair draws from its own generator seeded by ``(seed, i, j)``, so a pair's prediction does not
            depend on the other pairs requested.
    Returns:
        one :class:`PairPrediction` per unordered pair: ``pts11`` / ``pts21`` (images i / j in i's frame) share
        the pass scale s_ij, ``pts22`` / ``pts12`` (frame j) share s_ji; without noise ``pts21 = s_ij *
        (points of j in camera i)`` exactly (float32).
    """
    sim = sim if sim is not None else SimConfig()
    arr = np.asarray(pairs)
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"pairs: expected an integer (P, 2) array, got shape {arr.shape} dtype {arr.dtype}")
    n = scene.n_views
    if arr.min() < 0 or arr.max() >= n:
        raise InputError(f"pairs: image index out of range 0..{n - 1}")
    seen: set[tuple[int, int]] = set()
    todo: list[tuple[int, int]] = []
    for a, b in arr.tolist():
        key = (min(a, b), max(a, b))
        if key not in seen:
            seen.add(key)
            todo.append((a, b))
    cache = {v: _view_cache(scene, v, sim.subsample) for v in sorted({v for p in todo for v in p})}
    log.debug("simulating %d pairs over %d views", len(todo), len(cache))
    bank = _NoiseBank(seed, 3 * max(h * w for h, w in scene.shapes))
    return [_simulate_pair(scene, cache, a, b, sim, seed, bank) for a, b in todo]


class LazyPredictions(Sequence[PairPrediction]):
    """The predictions of :func:`simulate_predictions`, computed on access instead of all held in memory.

    Identical values (each pair has its own generator); used to benchmark alignment that streams its input,
    as it would from an on-disk cache. Per-view helper data is computed once and kept (small next to the
    pointmaps).
    """

    def __init__(self, scene: SyntheticScene, pairs: np.ndarray | Sequence[Sequence[int]],
                 sim: SimConfig | None = None, seed: int = 0) -> None:
        self.scene, self.sim, self.seed = scene, (sim if sim is not None else SimConfig()), seed
        seen: set[tuple[int, int]] = set()
        self.pairs: list[tuple[int, int]] = []
        for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
            if not (0 <= a < scene.n_views and 0 <= b < scene.n_views):
                raise InputError(f"pairs: image index out of range 0..{scene.n_views - 1}")
            key = (min(a, b), max(a, b))
            if key not in seen:
                seen.add(key)
                self.pairs.append((a, b))
        self._views: dict[int, Any] = {}
        self._bank = _NoiseBank(seed, 3 * max(h * w for h, w in scene.shapes))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> PairPrediction:  # type: ignore[override]
        a, b = self.pairs[k]
        for v in (a, b):
            if v not in self._views:
                self._views[v] = _view_cache(self.scene, v, self.sim.subsample)
        return _simulate_pair(self.scene, self._views, a, b, self.sim, self.seed, self._bank)


__all__ = [
    "LazyPredictions",
    "KINDS", "SceneSpec", "Geometry", "SyntheticScene", "SimConfig", "base_focal", "look_at", "make_scene",
    "scene_from_spec", "render_scene", "simulate_predictions",
]
