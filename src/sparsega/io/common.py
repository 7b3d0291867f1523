"""What every writer, the preview and the viewer share: the scene's cameras in original-image pixels, unique
image names, camera colours and frusta, and the depth colour map.

Pixel conventions. The Scene works in network pixels with pixel CENTRES at integer coordinates (OpenCV).
``scene.net_to_orig`` maps them to original-image pixels in the same convention.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from ..scene import Scene

DEFAULT_MIN_CONF = 1.5

# OpenCV camera axes (x right, y down, z forward) -> OpenGL (x right, y up, z backward)
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])

_CMAP_ANCHORS = np.array(
    [
        (48, 18, 59),
        (70, 107, 227),
        (41, 187, 236),
        (49, 242, 153),
        (163, 253, 61),
        (237, 208, 58),
        (251, 128, 34),
        (122, 4, 3),
    ],
    dtype=np.float64,
)


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

    Taken from ``scene.original_sizes`` when known, else from the image file header when the path
    exists, else estimated from ``net_to_orig`` assuming the network image is a CENTRED crop of the resized image
    (what :mod:`sparsega.frontend.images` does; exact for identity maps, otherwise within one resized pixel).
    """
    n = scene.n_images
    if scene.original_sizes is not None:
        return np.asarray(scene.original_sizes, dtype=np.int64).reshape(n, 2)
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


def check_scene(scene: Scene) -> None:
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


def camera_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours along a hue ramp (first camera red ... last magenta)."""
    h = np.linspace(0.0, 0.83, max(n, 1))[:n] * 6.0
    x = 1 - np.abs(h % 2 - 1)
    z = np.zeros_like(h)
    sector = np.floor(h).astype(int) % 6
    rgb = np.select(
        [sector[:, None] == s for s in range(6)],
        [
            np.stack(c, -1)
            for c in ((1 + z, x, z), (x, 1 + z, z), (z, 1 + z, x), (z, x, 1 + z), (x, z, 1 + z), (1 + z, z, x))
        ],
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
