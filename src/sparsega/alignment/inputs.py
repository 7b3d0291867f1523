"""The predictions as the alignment reads them: validated, deduplicated and oriented (i <= j) without holding the
pointmaps (a lazy sequence stays lazy), and pointmaps sanitised before fusion (non-finite points masked)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import GraphError, InputError
from ..types import PairPrediction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairMeta:
    """The light part of a prediction, kept for the whole alignment (the pointmaps are re-loaded on demand)."""

    src: int
    flip: bool
    i: int
    j: int
    shape1: tuple[int, int]
    shape2: tuple[int, int]
    xy1: np.ndarray
    xy2: np.ndarray
    match_conf: np.ndarray


class PairView:
    """Deduplicated, oriented (i <= j) view of a prediction sequence that never holds the pointmaps.

    ``predictions`` may be any sequence, including a lazy one that loads each pair from disk (or simulates it) on
    ``__getitem__``: alignment then streams, holding the full-resolution maps of one image's pairs at a time.
    """

    def __init__(self, predictions: Sequence[PairPrediction], n_images: int | None) -> None:
        try:
            count = len(predictions)
        except TypeError:
            raise InputError("predictions must be a sequence of PairPrediction") from None
        if count == 0:
            raise InputError("no pair predictions to align")
        self.src = predictions
        seen: set[tuple[int, int]] = set()
        self.meta: list[PairMeta] = []
        get = getattr(predictions, "pair_header", predictions.__getitem__)  # the header protocol (types.py)
        for k in range(count):
            p = get(k)
            if not isinstance(p, PairPrediction):
                raise InputError(f"expected PairPrediction, got {type(p).__name__}")
            p.validate()
            if p.i < 0 or p.j < 0:
                raise InputError(f"pair ({p.i}, {p.j}): negative image index")
            key = (min(p.i, p.j), max(p.i, p.j))
            if key in seen:
                log.warning("pair (%d, %d) given twice: keeping the first", *key)
                continue
            seen.add(key)
            flip = p.i > p.j
            q = p.swapped() if flip else p
            self.meta.append(
                PairMeta(
                    k,
                    flip,
                    q.i,
                    q.j,
                    q.shape1,
                    q.shape2,
                    np.asarray(q.xy1),
                    np.asarray(q.xy2),
                    np.asarray(q.match_conf),
                )
            )
        n = max(max(m.i, m.j) for m in self.meta) + 1
        if n_images is not None:
            if n_images < n:
                raise InputError(f"n_images={n_images} but predictions reference image {n - 1}")
            n = n_images
        self.n = n
        shapes: dict[int, tuple[int, int]] = {}
        for m in self.meta:
            for idx, shp in ((m.i, m.shape1), (m.j, m.shape2)):
                if shapes.setdefault(idx, shp) != shp:
                    raise InputError(
                        f"image {idx} has shape {shapes[idx]} in one pair and {shp} in pair ({m.i}, {m.j})"
                    )
        missing = [k for k in range(n) if k not in shapes]
        if missing:
            raise GraphError(f"images {missing} appear in no pair: they cannot be registered")
        self.shapes = shapes

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, k: int) -> PairPrediction:
        m = self.meta[k]
        p = self.src[m.src]
        return p.swapped() if m.flip else p


def sanitize_pointmap(pts: np.ndarray, conf: np.ndarray, own_frame: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Mask non-finite points/confidences (and non-positive depths in the own frame) by giving them the lowest
    weight; warn once per map. Masked points are set to the median valid point so sums stay finite."""
    # fast path, exact: numpy's min/max propagate NaN, so finite extremes mean every value is finite
    ext = np.array([pts.min(), pts.max(), conf.min(), conf.max()], np.float64)
    if np.isfinite(ext).all() and ext[2] >= 1 and (not own_frame or pts[..., 2].min() > 0):
        return pts, conf
    bad = ~np.isfinite(pts).all(-1) | ~np.isfinite(conf) | (conf < 1)
    if own_frame:
        bad |= ~(pts[..., 2] > 0)
    if not bad.any():
        return pts, conf
    if bad.all():
        raise InputError(f"{what}: no valid point (all NaN/inf or non-positive depth)")
    log.warning("%s: %d non-finite or invalid points masked", what, int(bad.sum()))
    pts = pts.copy()
    conf = conf.copy()
    good = pts[~bad]
    fill = np.median(good, axis=0) if not own_frame else None
    if own_frame:
        z = np.median(good[:, 2])
        pts[bad] = (0.0, 0.0, z)
    else:
        pts[bad] = fill
    conf[bad] = 1.0  # weight conf - 0.999 = 1e-3
    return pts.astype(np.float32), conf.astype(np.float32)
