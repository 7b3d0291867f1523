"""Disconnected views: split the match graph into components and align each one as its own :class:`Scene`.

:func:`sparsega.alignment.api.align` needs one connected graph (it raises :class:`~sparsega.errors.GraphError` listing
the groups otherwise). When photos come from several places, :func:`align_components` reconstructs every group of
at least two views separately (largest first) and reports the images that link to nothing as unregistered, or,
on request, reconstructs each of them alone from a self-pair (as the reference's single-image demo does).

What "linked" means (the graph the split is computed on):

- ``link="matches"`` (default): a pair links its two images when it carries at least one usable match (finite
  confidence > 0). A pair with zero usable matches does not link, even though :func:`~sparsega.alignment.api.align`
  would still use it as weak (fallback-only) evidence inside one graph: with no match at all there is nothing that
  ties the two cameras but the network's guess of an unseen view.
- ``link="trusted"``: stricter; a pair links only when its best match confidence exceeds
  ``config.matching_conf_thr`` (the pairs :func:`align` trusts for its matching losses).

Inside a component, every prediction between its images is kept (untrusted and zero-match pairs included, for the
fallback loss); predictions between components are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Sequence

import numpy as np

from ..errors import ConfigError, InputError
from .kinematic import connected_components
from ..scene import Scene
from ..types import AlignConfig, PairPrediction

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
    """Result of :func:`align_components`: one Scene per reconstructed component (largest first; each has
    ``info["component_images"]`` = original image indices) and the original indices of unregistered images."""

    scenes: list[Scene]
    unregistered: list[int]


def _pair_links(p: PairPrediction, link: str, thr: float) -> bool:
    if p.i == p.j or p.n_matches == 0:
        return False
    conf = np.asarray(p.match_conf, dtype=np.float64)
    valid = conf[np.isfinite(conf) & (conf > 0)]
    if not len(valid):
        return False
    return link == "matches" or float(valid.max()) > thr


def split_components(predictions: Sequence[PairPrediction], n_images: int | None = None, *,
                     link: Literal["matches", "trusted"] = "matches", matching_conf_thr: float = 5.0
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


def subset_predictions(predictions: Sequence[PairPrediction], indices: Sequence[int]) -> list[PairPrediction]:
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
            return PairPrediction(i=0, j=0, pts11=pts, conf11=conf, pts21=pts, conf21=conf, pts22=pts, conf22=conf,
                                  pts12=pts, conf12=conf, xy1=empty, xy2=empty.copy(),
                                  match_conf=np.zeros(0, np.float32), score=None)
    return None


def _pick(seq: Sequence[Any] | None, idx: Sequence[int]) -> list[Any] | None:
    return None if seq is None else [seq[int(k)] for k in idx]


def align_components(predictions: Sequence[PairPrediction], config: AlignConfig | None = None, *,
                     images: Sequence[np.ndarray] | None = None, image_paths: Sequence[str] | None = None,
                     n_images: int | None = None, link: Literal["matches", "trusted"] = "matches",
                     isolated: Literal["unregistered", "self-pair"] = "unregistered",
                     **overrides: Any) -> ComponentResult:
    """Align each connected component of the match graph as its own :class:`Scene`.

    Args:
        predictions, config, images, image_paths, n_images, overrides: as :func:`sparsega.alignment.api.align`
            (``images`` / ``image_paths`` indexed by ORIGINAL image index).
        link: which pairs link two images (module docstring).
        isolated: ``"unregistered"`` (default) lists images linked to nothing in ``unregistered``;
            ``"self-pair"`` reconstructs each alone from its own-frame pointmap (a one-view Scene, identity pose),
            placed after the multi-view scenes; images in no prediction at all stay unregistered.

    Returns:
        :class:`ComponentResult` ``(scenes, unregistered)``; ``scene.info["component_images"]`` lists the original
        indices of the scene's views (scene view k = original image ``component_images[k]``).
    """
    from .api import align

    if isolated not in ISOLATED_MODES:
        raise ConfigError(f"isolated={isolated!r}: must be one of {', '.join(ISOLATED_MODES)}")
    cfg = (config or AlignConfig()).replace(**overrides) if overrides else (config or AlignConfig())
    split = split_components(predictions, n_images, link=link, matching_conf_thr=cfg.matching_conf_thr)
    n = split.n_images
    if images is not None and len(images) != n:
        raise InputError(f"{len(images)} images given for {n} views")
    if image_paths is not None and len(image_paths) != n:
        raise InputError(f"{len(image_paths)} image paths given for {n} views")
    names = list(image_paths) if image_paths is not None else [f"view_{k:03d}" for k in range(n)]
    if not split.connected:
        log.warning("the match graph splits into %d component(s) of >= 2 views %s and %d isolated image(s) %s",
                    len(split.groups), [g.tolist() for g in split.groups], len(split.isolated), split.isolated)

    scenes: list[Scene] = []
    for k, group in enumerate(split.groups):
        sub = subset_predictions(predictions, group)
        log.info("component %d: %d views %s", k, len(group), group.tolist())
        scene = align(sub, cfg, images=_pick(images, group), image_paths=_pick(names, group),
                      n_images=len(group))
        scene.info["component_images"] = [int(x) for x in group]
        scenes.append(scene)
    unregistered: list[int] = []
    for idx in split.isolated:
        sp = self_pair(predictions, idx) if isolated == "self-pair" else None
        if sp is None:
            unregistered.append(idx)
            continue
        scene = align([sp], cfg, images=_pick(images, [idx]), image_paths=[names[idx]], n_images=1)
        scene.info["component_images"] = [idx]
        scenes.append(scene)
    if unregistered:
        log.warning("unregistered image(s) (no match with any other image): %s",
                    ", ".join(f"{k} ({names[k]})" for k in unregistered))
    return ComponentResult(scenes=scenes, unregistered=unregistered)


__all__ = ["ComponentSplit", "ComponentResult", "split_components", "subset_predictions", "self_pair",
           "align_components", "LINK_MODES", "ISOLATED_MODES"]
