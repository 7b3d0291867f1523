"""Tiny exact scenes for the export / CLI tests: cameras looking at the textured plane z = 5 (world), with exact
depth maps, so every exported quantity has a known value."""

from __future__ import annotations

import numpy as np

from sparsega.scene import Scene


def _rot(axis: str, ang: float) -> np.ndarray:
    c, s = np.cos(ang), np.sin(ang)
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def plane_scene(
    n: int = 4, h: int = 48, w: int = 64, net_to_orig: np.ndarray | None = None, paths: list[str] | None = None
) -> Scene:
    """``n`` cameras (distinct focals, small rotations, shifted centres) viewing the plane z = 5; depth exact,
    checkerboard colours, sparse points on an 8-pixel grid, confidence 3 everywhere."""
    cam2w = np.tile(np.eye(4), (n, 1, 1))
    Ks, depths, imgs, confs, sxy = [], [], [], [], []
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    for k in range(n):
        R = _rot("y", 0.1 * (k - n / 2)) @ _rot("x", 0.05 * k)
        cam2w[k, :3, :3] = R
        cam2w[k, :3, 3] = (0.4 * k, 0.1 * k, 0.0)
        K = np.array([[60.0 + 3 * k, 0, w / 2], [0, 61.0 + 3 * k, h / 2], [0, 0, 1]])
        d = np.stack(((x - K[0, 2]) / K[0, 0], (y - K[1, 2]) / K[1, 1], np.ones((h, w))), -1) @ R.T
        t = (5.0 - cam2w[k, 2, 3]) / d[..., 2]
        P = cam2w[k, :3, 3] + d * t[..., None]
        chk = ((np.floor(P[..., 0] * 2) + np.floor(P[..., 1] * 2)) % 2).astype(np.int64)
        imgs.append(np.stack((200 * chk + 30, 100 + 50 * chk, 255 - 200 * chk), -1).astype(np.uint8))
        Ks.append(K)
        depths.append(t.astype(np.float32))
        confs.append(np.full((h, w), 3.0, np.float32))
        ys, xs = np.mgrid[4:h:8, 4:w:8]
        sxy.append(np.stack((xs.ravel(), ys.ravel()), -1).astype(np.int64))
    return Scene(
        cam2w=cam2w.astype(np.float32),
        intrinsics=np.array(Ks, np.float32),
        depthmaps=depths,
        confidences=confs,
        images=imgs,
        image_paths=paths or [f"img_{k}.png" for k in range(n)],
        sparse_xy=sxy,
        net_to_orig=net_to_orig,
    )


def scale_crop_map(n: int, scale: float = 2.0, left: int = 8, top: int = 4) -> np.ndarray:
    """(n, 3, 3) network -> original map of an image resized by 1/``scale`` then cropped at (left, top) (pixel
    centres at integer coordinates, as :mod:`sparsega.frontend.images`)."""
    A = np.array([[scale, 0, (left + 0.5) * scale - 0.5], [0, scale, (top + 0.5) * scale - 0.5], [0, 0, 1.0]])
    return np.tile(A, (n, 1, 1))
