"""Disconnected views: the connected components of the match graph, and the predictions of one component.

The one disconnected-graph policy (every entry point follows it; :func:`sparsega.alignment.api.align_components`
implements it):

- a pair **links** its two images when it carries at least one usable match (finite confidence > 0). A pair with
  no usable match does not link: nothing ties the two cameras but the network's guess of an unseen view. It still
  adds its fallback loss between images that are linked otherwise. The kinematic tree of
  :func:`~sparsega.alignment.api.align` is built on the same links (``link="trusted"`` here is a stricter split:
  only pairs whose best match confidence exceeds ``matching_conf_thr``);
- a disconnected graph is aligned component by component: every group of at least two views is its own
  :class:`Scene` (largest first, ``scene.image_index`` = its images' input indices) and the images linked to
  nothing are reported as unregistered (or, on request, reconstructed alone from a self-pair);
- ``align`` / ``reconstruct`` return a single Scene and raise :class:`~sparsega.errors.GraphError` naming the
  groups when the graph splits, unless called with ``components=True`` (then always a :class:`ComponentResult`);
  every CLI command uses ``components=True`` and writes one folder, or ``OUT/component_k/`` per component with a
  top-level report listing them and the unregistered images.

Inside a component, every prediction between its images is kept (untrusted and zero-match pairs included, for the
fallback loss); predictions between components are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from ..errors import ConfigError, InputError
from ..scene import Scene
from ..types import PairPrediction
from .kinematic import connected_components

log = logging.getLogger(__name__)

LINK_MODES = ("matches", "trusted")
ISOLATED_MODES = ("unregistered", "self-pair")


@dataclass(frozen=True)
class ComponentSplit:
    """How the images split. ``groups``: sorted original indices per component with >= 2 views, largest first
    (ties: smallest first index); ``isolated``: indices of images linked to nothing, ascending."""

    n_images: int
    groups: list[np.ndarray] = field(default_factory=list)
    isolated: list[int] = field(default_factory=list)

    @property
    def connected(self) -> bool:
        """True when all images form one component."""
        return len(self.groups) == 1 and not self.isolated


class ComponentResult(NamedTuple):
    """Result of :func:`~sparsega.alignment.api.align_components`: one Scene per reconstructed component (largest
    first; ``scene.image_index`` = its views' input indices) and the input indices of unregistered images."""

    scenes: list[Scene]
    unregistered: list[int]

    @property
    def connected(self) -> bool:
        """True when every image is in the one scene."""
        return len(self.scenes) == 1 and not self.unregistered


def _pair_links(p: PairPrediction, link: str, thr: float) -> bool:
    if p.i == p.j or p.n_matches == 0:
        return False
    conf = np.asarray(p.match_conf, dtype=np.float64)
    valid = conf[np.isfinite(conf) & (conf > 0)]
    if not len(valid):
        return False
    return link == "matches" or float(valid.max()) > thr


def split_components(
    predictions: Sequence[PairPrediction],
    n_images: int | None = None,
    *,
    link: Literal["matches", "trusted"] = "matches",
    matching_conf_thr: float = 5.0,
) -> ComponentSplit:
    """Connected components of the match graph (see the module docstring for ``link``).

    Args:
        predictions: the pair predictions (image indices ``0 .. N-1``).
        n_images: N, when larger than the highest referenced index (unreferenced images are isolated).
    """
    if link not in LINK_MODES:
        raise ConfigError(f"link={link!r}: must be one of {', '.join(LINK_MODES)}")
    if not isinstance(predictions, Sequence) or isinstance(predictions, (str, bytes)) or not len(predictions):
        raise InputError("no pair predictions to align")
    for p in predictions:
        if not isinstance(p, PairPrediction):
            raise InputError(f"expected PairPrediction, got {type(p).__name__}")
        if p.i < 0 or p.j < 0:
            raise InputError(f"pair ({p.i}, {p.j}): negative image index")
    n = max(max(p.i, p.j) for p in predictions) + 1
    if n_images is not None:
        if n_images < n:
            raise InputError(f"n_images={n_images} but predictions reference image {n - 1}")
        n = int(n_images)
    linked = np.zeros((n, n), dtype=np.float32)
    for p in predictions:
        if _pair_links(p, link, matching_conf_thr):
            linked[p.i, p.j] = linked[p.j, p.i] = 1.0
    groups = connected_components(linked)
    big = [g for g in groups if len(g) >= 2]
    isolated = sorted(int(g[0]) for g in groups if len(g) == 1)
    return ComponentSplit(n_images=n, groups=big, isolated=isolated)


def subset_predictions(
    predictions: Sequence[PairPrediction], indices: Sequence[int] | np.ndarray
) -> list[PairPrediction]:
    """The predictions between images ``indices`` only, re-indexed to ``0 .. len(indices)-1`` in that order."""
    remap = {int(k): pos for pos, k in enumerate(indices)}
    out = []
    for p in predictions:
        if p.i in remap and p.j in remap:
            out.append(dataclasses.replace(p, i=remap[p.i], j=remap[p.j]))
    return out


def self_pair(predictions: Sequence[PairPrediction], index: int) -> PairPrediction | None:
    """A self-pair ``(0, 0)`` for image ``index`` from its own-frame pointmap in the first prediction holding it
    (no matches), or None if no prediction holds it."""
    for p in predictions:
        if index in (p.i, p.j):
            pts, conf = (p.pts11, p.conf11) if p.i == index else (p.pts22, p.conf22)
            empty = np.zeros((0, 2), np.int64)
            return PairPrediction(
                i=0,
                j=0,
                pts11=pts,
                conf11=conf,
                pts21=pts,
                conf21=conf,
                pts22=pts,
                conf22=conf,
                pts12=pts,
                conf12=conf,
                xy1=empty,
                xy2=empty.copy(),
                match_conf=np.zeros(0, np.float32),
                score=None,
            )
    return None


__all__ = [
    "ComponentSplit",
    "ComponentResult",
    "split_components",
    "subset_predictions",
    "self_pair",
    "LINK_MODES",
    "ISOLATED_MODES",
]
