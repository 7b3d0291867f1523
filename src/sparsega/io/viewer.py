"""Interactive browser viewer (viser, optional extra ``sparsega[viewer]``).

Shows the dense point cloud, one frustum per camera with its image as thumbnail, and a confidence slider that
re-filters the points. Bound to 127.0.0.1 unless told otherwise: the scene is served to whoever can reach the port.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..errors import InputError
from ..scene import Scene
from .common import DEFAULT_MIN_CONF, frustum_points

log = logging.getLogger(__name__)


def viser_available() -> bool:
    """True when the optional ``viser`` package can be imported."""
    try:
        import viser  # noqa: F401
    except ImportError:
        return False
    return True


def _thumbnail(img: np.ndarray, max_side: int = 160) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = min(1.0, max_side / max(h, w))
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((max(1, int(w * s)), max(1, int(h * s)))))


def serve(
    scene: Scene,
    host: str = "127.0.0.1",
    port: int = 8080,
    min_conf: float = DEFAULT_MIN_CONF,
    max_points: int = 1_000_000,
    block: bool = True,
) -> object:
    """Start a viser server showing ``scene``; block until Ctrl-C when ``block`` (returns the server otherwise)."""
    try:
        import viser
        import viser.transforms as vtf
    except ImportError:
        raise InputError("the viewer needs viser: pip install 'sparsega[viewer]'") from None

    pts, cols, confs = scene.point_cloud(min_conf=-np.inf, dense=True)
    if len(pts) > max_points:
        sel = np.random.default_rng(0).choice(len(pts), size=max_points, replace=False)
        pts, cols, confs = pts[sel], cols[sel], confs[sel]
    server = viser.ViserServer(host=host, port=port)
    server.scene.set_up_direction("-y")

    cloud = {"handle": None}

    def show(thr: float) -> None:
        keep = confs > thr
        cloud["handle"] = server.scene.add_point_cloud(
            "/points", points=pts[keep].astype(np.float32), colors=cols[keep], point_size=0.003 * _scale(scene)
        )

    show(min_conf)
    hi = float(np.percentile(confs, 99)) if len(confs) else 10.0
    slider = server.gui.add_slider(
        "min confidence", min=0.0, max=max(hi, min_conf + 1e-3), step=0.05, initial_value=min_conf
    )

    @slider.on_update
    def _(_: object) -> None:
        show(float(slider.value))

    fr = frustum_points(scene)
    for k in range(scene.n_images):
        h, w = scene.shapes[k]
        fy = float(scene.intrinsics[k, 1, 1])
        R = scene.cam2w[k, :3, :3].astype(np.float64)
        server.scene.add_camera_frustum(
            f"/cameras/{k:04d}",
            fov=float(2 * np.arctan2(h / 2, fy)),
            aspect=w / h,
            scale=float(np.linalg.norm(fr[k, 1] - fr[k, 0])) * 0.8,
            image=_thumbnail(scene.images[k]),
            wxyz=vtf.SO3.from_matrix(R).wxyz,
            position=scene.cam2w[k, :3, 3].astype(np.float64),
        )
    log.info("viewer running at http://%s:%d (Ctrl-C to stop)", host, port)
    if not block:
        return server
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    return server


def _scale(scene: Scene) -> float:
    c = scene.cam2w[:, :3, 3].astype(np.float64)
    spread = float(np.linalg.norm(c.max(0) - c.min(0))) if len(c) > 1 else 0.0
    if spread <= 0:
        spread = float(np.nanmedian(scene.depthmaps[0]))
    return spread if np.isfinite(spread) and spread > 0 else 1.0


__all__ = ["serve", "viser_available"]
