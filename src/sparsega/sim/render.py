"""Analytic ray-caster of the synthetic world: every pixel's first hit (depth, world point, shaded colour),
vectorised over 16x16-pixel tiles of several views at once, with objects culled per tile."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .world import Geometry, SceneSpec, SyntheticScene

_EPS_T = 1e-9
_CHUNK_PIXELS = 1 << 18  # rays ray-cast together; bounds the temporaries to a few tens of MB
_TILE = 16  # rays are cast in 16x16-pixel tiles; objects are culled per tile


def _tile_rays(cam2w: np.ndarray, k: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
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
    bounds = np.stack(
        [
            (tx * _TILE - 0.5 - k[0, 2]) / k[0, 0],
            (tx * _TILE + _TILE - 0.5 - k[0, 2]) / k[0, 0],
            (ty * _TILE - 0.5 - k[1, 2]) / k[1, 1],
            (ty * _TILE + _TILE - 0.5 - k[1, 2]) / k[1, 1],
        ],
        axis=1,
    )
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
        raise InputError(
            f"render_scene: cam2w {cam2w.shape}, intrinsics {intrinsics.shape} and {len(shapes)} shapes disagree"
        )
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
    return SyntheticScene(
        kind=kind,
        cam2w=cam2w,
        intrinsics=intrinsics,
        depthmaps=depthmaps,
        images=images,
        extent=extent,
        geometry=geometry,
        spec=spec,
    )
