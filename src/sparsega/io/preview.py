"""A one-picture summary of a reconstruction, drawn with numpy + Pillow only.

Layout (``preview.png``): top row, the point cloud seen from above and from the side (orthographic, nearest point
wins per pixel) with every camera frustum drawn in its colour and numbered; below, a strip of (up to
``max_views``) input images with their colourised depth maps under them.

"Up" is estimated from the cameras (the mean of their -y axes, OpenCV convention), the horizontal axes from the
spread of the camera centres, so the views are meaningful whatever frame the alignment chose.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..scene import Scene
from .common import DEFAULT_MIN_CONF, camera_colors, colorize_depth, frustum_points

log = logging.getLogger(__name__)

BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)


def view_axes(scene: Scene) -> np.ndarray:
    """(3, 3) float64 rows ``(e1, e2, up)``: an orthonormal, right-handed frame with ``up`` the mean camera up
    direction and ``e1`` the main horizontal spread of the camera centres."""
    c2w = scene.cam2w.astype(np.float64)
    up = -c2w[:, :3, 1].mean(0)
    if np.linalg.norm(up) < 1e-6:
        up = np.array([0.0, -1.0, 0.0])
    up /= np.linalg.norm(up)
    centres = c2w[:, :3, 3]
    flat = (centres - centres.mean(0)) - np.outer((centres - centres.mean(0)) @ up, up)
    e1 = None
    if len(centres) > 1 and np.abs(flat).max() > 1e-9:
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        e1 = vt[0] - (vt[0] @ up) * up
    if e1 is None or np.linalg.norm(e1) < 1e-6:
        e1 = c2w[0, :3, 0] - (c2w[0, :3, 0] @ up) * up
        if np.linalg.norm(e1) < 1e-6:
            e1 = np.cross(up, [0.0, 0.0, 1.0]) if abs(up[2]) < 0.9 else np.cross(up, [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    return np.stack((e1, e2, up))


def _panel(
    points: np.ndarray,
    colors: np.ndarray,
    frusta: np.ndarray,
    axes: tuple[np.ndarray, np.ndarray],
    depth_axis: np.ndarray,
    size: tuple[int, int],
    title: str,
    cam_colors: np.ndarray,
) -> Image.Image:
    """Orthographic render: screen x along ``axes[0]``, screen up along ``axes[1]``; points farther along
    ``depth_axis`` are hidden by nearer ones (nearer = smaller coordinate along ``depth_axis``)."""
    w, h = size
    canvas = np.empty((h, w, 3), np.uint8)
    canvas[:] = BACKGROUND
    sx, sy = points @ axes[0], points @ axes[1]
    fx, fy = frusta @ axes[0], frusta @ axes[1]
    if len(points):
        lo_x, hi_x = np.percentile(sx, [1, 99])
        lo_y, hi_y = np.percentile(sy, [1, 99])
    else:
        lo_x = hi_x = float(fx.mean())
        lo_y = hi_y = float(fy.mean())
    lo_x, hi_x = min(lo_x, fx.min()), max(hi_x, fx.max())
    lo_y, hi_y = min(lo_y, fy.min()), max(hi_y, fy.max())
    margin, top = 12, 22
    span = max((hi_x - lo_x) / (w - 2 * margin), (hi_y - lo_y) / (h - margin - top), 1e-12)
    cx, cy = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2

    def to_px(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (w / 2 + (x - cx) / span), (top + (h - top - margin) / 2 - (y - cy) / span)

    if len(points):
        u, v = to_px(sx, sy)
        u, v = np.round(u).astype(np.int64), np.round(v).astype(np.int64)
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        order = np.argsort(-(points[inside] @ depth_axis), kind="stable")  # far first, near last (wins)
        ui, vi, ci = u[inside][order], v[inside][order], colors[inside][order]
        canvas[vi, ui] = ci
        if len(points) < 20000:  # sparse clouds: 2x2 dots so they stay visible
            canvas[np.clip(vi + 1, 0, h - 1), ui] = ci
            canvas[vi, np.clip(ui + 1, 0, w - 1)] = ci
            canvas[np.clip(vi + 1, 0, h - 1), np.clip(ui + 1, 0, w - 1)] = ci
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    edges = ((0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1))
    pu, pv = to_px(fx, fy)
    for k in range(len(frusta)):
        col = tuple(int(c) for c in cam_colors[k])
        for a, b in edges:
            draw.line([(pu[k, a], pv[k, a]), (pu[k, b], pv[k, b])], fill=col, width=2)
        draw.text((pu[k, 0] + 3, pv[k, 0] + 3), str(k), fill=col, font=font)
    draw.text((8, 4), title, fill=TEXT, font=font)
    draw.rectangle([0, 0, w - 1, h - 1], outline=(70, 70, 80))
    return img


def _strip(scene: Scene, width: int, max_views: int, cam_colors: np.ndarray) -> Image.Image:
    """Images (top) and their colourised depth maps (bottom) for up to ``max_views`` evenly chosen views."""
    n = scene.n_images
    pick = np.unique(np.round(np.linspace(0, n - 1, min(n, max_views))).astype(int))
    cell_w = width // len(pick)
    ratios = [scene.shapes[k][0] / scene.shapes[k][1] for k in pick]
    cell_h = int(min(cell_w * max(ratios), 1.2 * cell_w))
    label = 14
    out = Image.new("RGB", (width, 2 * cell_h + label), BACKGROUND)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for col, k in enumerate(pick):
        h, w = scene.shapes[k]
        scale = min((cell_w - 4) / w, (cell_h - 4) / h)
        tw, th = max(1, int(w * scale)), max(1, int(h * scale))
        x0 = col * cell_w + (cell_w - tw) // 2
        rgb = Image.fromarray(np.ascontiguousarray(scene.images[k])).resize((tw, th), Image.BILINEAR)
        dep = Image.fromarray(colorize_depth(scene.depthmaps[k])).resize((tw, th), Image.NEAREST)
        out.paste(rgb, (x0, label))
        out.paste(dep, (x0, label + cell_h))
        name = os.path.basename(str(scene.image_paths[k]))[:24]
        draw.text((col * cell_w + 4, 1), f"{k}: {name}", fill=tuple(int(c) for c in cam_colors[k]), font=font)
    return out


def render_preview(
    scene: Scene,
    path: str | os.PathLike | None = None,
    width: int = 1200,
    min_conf: float = DEFAULT_MIN_CONF,
    max_points: int = 400_000,
    max_views: int = 8,
) -> Image.Image:
    """Render the summary picture (see module doc) and save it as PNG at ``path`` when given."""
    pts, cols, _ = scene.point_cloud(min_conf=min_conf, dense=True)
    if len(pts) == 0:
        pts, cols, _ = scene.point_cloud(min_conf=-np.inf, dense=True)
    if len(pts) > max_points:
        sel = np.random.default_rng(0).choice(len(pts), size=max_points, replace=False)
        pts, cols = pts[sel], cols[sel]
    pts = pts.astype(np.float64)
    ok = np.isfinite(pts).all(1)
    pts, cols = pts[ok], cols[ok]
    e1, e2, up = view_axes(scene)
    fr = frustum_points(scene)
    cam_cols = camera_colors(scene.n_images)
    half = width // 2
    ph = int(half * 0.75)
    top = _panel(pts, cols, fr, (e1, e2), -up, (half, ph), "from above", cam_cols)
    # side view: screen x along the mean horizontal viewing direction, so depth is visible
    look = scene.cam2w[:, :3, 2].astype(np.float64).mean(0)
    look -= (look @ up) * up
    sx = look / np.linalg.norm(look) if np.linalg.norm(look) > 0.2 else e1
    side = _panel(pts, cols, fr, (sx, up), np.cross(up, sx), (width - half, ph), "from the side", cam_cols)
    strip = _strip(scene, width, max_views, cam_cols)
    title_h = 20
    img = Image.new("RGB", (width, title_h + ph + strip.height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text(
        (8, 4),
        f"sparsega: {scene.n_images} views, {len(pts):,} points shown (conf > {min_conf:g})",
        fill=TEXT,
        font=ImageFont.load_default(),
    )
    img.paste(top, (0, title_h))
    img.paste(side, (half, title_h))
    img.paste(strip, (0, title_h + ph))
    if path is not None:
        img.save(Path(path), format="PNG")
    return img


__all__ = ["render_preview", "view_axes"]
