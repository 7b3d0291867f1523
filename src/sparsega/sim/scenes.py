"""Seeded synthetic scenes: a room's contents and one of three camera layouts (``orbit``, ``walk``,
``hemisphere``), ray-cast by :mod:`.render`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .render import render_scene
from .world import KINDS, Geometry, SceneSpec, SyntheticScene, base_focal


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


def _geometry(
    rng: np.random.Generator,
    lo: Sequence[float],
    hi: Sequence[float],
    spheres: list[list[float]],
    boxes: list[list[float]],
) -> Geometry:
    sph = np.asarray(spheres, np.float64).reshape(-1, 4)
    bxs = np.asarray(boxes, np.float64).reshape(-1, 7)
    colors = np.concatenate([0.55 + 0.4 * _palette(rng, 6) * 0.6, _palette(rng, len(sph) + len(bxs))])
    dirs = rng.normal(size=(3, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = np.concatenate([dirs * rng.uniform(5, 14, (3, 1)), rng.uniform(0, 2 * np.pi, (3, 1))], axis=1)
    return Geometry(
        room_lo=np.asarray(lo, np.float64),
        room_hi=np.asarray(hi, np.float64),
        spheres=sph,
        boxes=bxs,
        colors=colors,
        waves=waves,
    )


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
    if spec.kind == "loop":
        return _loop_layout(spec, rng)
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
        fwd = np.array(
            [math.cos(yaw[k]) * math.cos(pitch[k]), math.sin(yaw[k]) * math.cos(pitch[k]), math.sin(pitch[k])]
        )
        eye = np.array([xs[k], ys[k], zs[k]])
        cams[k] = look_at(eye, eye + fwd, rolls[k])
    return geom, cams


def _loop_layout(spec: SceneSpec, rng: np.random.Generator) -> tuple[Geometry, np.ndarray]:
    """A ring corridor around a central block, objects along both of its walls; the cameras walk once around it,
    looking ahead, so the last views see the first views' place again."""
    n, big_r = spec.n_views, float(spec.loop_radius)
    if big_r < 3.5:
        raise ConfigError(f"loop_radius={big_r!r}: must be >= 3.5 (the corridor is 4 m wide)")
    lo, hi = np.array([-big_r - 3.0, -big_r - 3.0, 0.0]), np.array([big_r + 3.0, big_r + 3.0, 3.2])
    inner = (big_r - 2.0) / math.sqrt(2.0) - 0.1  # the central block's corners stay inside the corridor
    spheres: list[list[float]] = []
    boxes: list[list[float]] = [[0.0, 0.0, 1.6, inner, inner, 1.6, 0.0]]
    for wall_r, sign in ((big_r + 2.0, 1.0), (big_r - 2.0, -1.0)):  # outer wall, inner wall
        theta = rng.uniform(0, 0.2)
        while theta < 2 * np.pi - 0.05:
            kind = rng.integers(3)
            c, s = math.cos(theta), math.sin(theta)
            if kind == 0:  # box against the wall
                hx, hy, hz = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5), rng.uniform(0.3, 1.2)
                r = wall_r - sign * (hy + rng.uniform(0, 0.3))
                boxes.append([r * c, r * s, hz, hx, hy, hz, theta + rng.uniform(-0.25, 0.25)])
            elif kind == 1:  # pillar
                r = wall_r - sign * rng.uniform(0.5, 1.0)
                boxes.append([r * c, r * s, 1.6, 0.15, 0.15, 1.6, rng.uniform(0, np.pi / 2)])
            else:  # ball on the floor or hanging
                rad = rng.uniform(0.2, 0.4)
                z = rad if rng.uniform() < 0.5 else rng.uniform(1.0, 2.6)
                r = wall_r - sign * rng.uniform(0.5 + rad, 1.0 + rad)
                spheres.append([r * c, r * s, z, rad])
            theta += rng.uniform(0.8, 1.8) / wall_r
    geom = _geometry(rng, lo, hi, spheres, boxes)
    theta = 2 * np.pi * np.arange(n) / max(n, 1) + rng.normal(0, 0.08 * 2 * np.pi / max(n, 1), n)
    freqs, phases = rng.uniform(0.15, 0.6, 3), rng.uniform(0, 2 * np.pi, (2, 3))
    # smooth deviations periodic in the loop (whole numbers of periods), so the end meets the start
    periods = np.maximum(np.round(freqs * big_r), 1.0)
    smooth_r = np.sin(np.outer(theta, periods) + phases[0]).sum(axis=1) / 3
    smooth_yaw = np.sin(np.outer(theta, periods[::-1]) + phases[1]).sum(axis=1) / 3
    rs = big_r + 0.3 * smooth_r + rng.normal(0, 0.03, n)
    zs = 1.6 + rng.normal(0, 0.03, n)
    heading = theta + np.pi / 2 + math.radians(15.0) * smooth_yaw + rng.normal(0, math.radians(2.0), n)
    pitch = rng.normal(math.radians(-4.0), math.radians(2.0), n)
    rolls = rng.normal(0, math.radians(1.5), n)
    cams = np.empty((n, 4, 4))
    for k in range(n):
        fwd = np.array(
            [math.cos(heading[k]) * math.cos(pitch[k]), math.sin(heading[k]) * math.cos(pitch[k]), math.sin(pitch[k])]
        )
        eye = np.array([rs[k] * math.cos(theta[k]), rs[k] * math.sin(theta[k]), zs[k]])
        cams[k] = look_at(eye, eye + fwd, rolls[k])
    return geom, cams


def make_scene(
    kind: str = "orbit", n_views: int = 8, height: int = 192, width: int = 256, seed: int = 0, **kw: Any
) -> SyntheticScene:
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


def write_truth(scene: SyntheticScene, folder: str | os.PathLike, names: Sequence[str]) -> None:
    """Write the scene's images as ``folder/images/<name>`` (PNG) and its cameras as ``folder/ground_truth.json``
    (the ``cameras.json`` layout, with the scene extent), readable by
    :func:`sparsega.io.camera_files.load_ground_truth`."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for name, im in zip(names, scene.images):
        Image.fromarray(np.asarray(im, np.uint8)).save(folder / "images" / name)
    doc = {
        "extent": float(scene.extent),
        "images": [
            {"name": n, "cam2w": np.asarray(c, np.float64).tolist(), "K": np.asarray(K, np.float64).tolist()}
            for n, c, K in zip(names, scene.cam2w, scene.intrinsics)
        ],
    }
    (folder / "ground_truth.json").write_text(json.dumps(doc, indent=1))
