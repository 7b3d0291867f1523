"""The back-end: pair predictions -> :class:`~sparsega.scene.Scene`.

Steps (each a pure function of the previous one's output, except the optimiser):

1. validate and index the predictions (duplicates dropped, zero-match pairs kept for the fallback);
2. canonical view per image, streamed: only one image's pointmaps are fused at a time, and what the optimiser needs
   is kept at anchor resolution (anchor depths, match offsets, fallback targets) plus the (H, W) depth ratio map for
   the final dense depth;
3. kinematic tree over the match-count graph;
4. the two optimisation stages (:mod:`sparsega.alignment.optimizer`);
5. dense depth maps from the anchors, point clouds, cleaned confidences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import ConfigError, InputError
from ..scene import Scene
from ..types import AlignConfig, PairPrediction
from .clean import clean_confidences
from .components import ISOLATED_MODES, ComponentResult, self_pair, split_components, subset_predictions
from .optimizer import optimize
from .problem import AlignProblem, CanonicalData, OptimState, build_problem

log = logging.getLogger(__name__)


def densify(state: OptimState, problem: AlignProblem, cdata: list[CanonicalData], subsample: int) -> list[np.ndarray]:
    """Dense (H, W) depth maps from the optimised anchor depths and each image's canonical depth ratios."""
    depths = []
    base = 0
    focals = state.focals.detach().cpu().double().numpy()
    f0 = problem.base_focals.detach().cpu().double().numpy()
    anchor_depth = state.anchor_depth.detach().cpu().double().numpy()
    for k, c in enumerate(cdata):
        h, w = c.canon2.shape
        s = subsample
        na = (h // s) * (w // s)
        ad = anchor_depth[base : base + na].reshape(h // s, w // s)
        base += na
        ratio_anchor = c.canon2[s // 2 :: s, s // 2 :: s]
        off = c.canon2 / np.repeat(np.repeat(ratio_anchor, s, 0), s, 1)
        off = 1 + (off - 1) * (f0[k] / focals[k])
        depths.append((np.repeat(np.repeat(ad, s, 0), s, 1) * off).astype(np.float32))
    return depths


def matched_pixels(problem: AlignProblem, block: int = 1 << 22) -> list[np.ndarray]:
    """Per image, the distinct matched pixels ``(M_i, 2)`` int64 (x, y), sorted by (y, x): one sort of a flat pixel
    key over all match sides of all images (a scan per image would cost N times the match count), the keys
    computed ``block`` sides at a time (no full-size temporaries besides the keys)."""
    n = problem.n_images
    img = problem.m_img.detach().cpu().reshape(-1)
    xy = problem.m_xy.detach().cpu().reshape(-1, 2)
    wh = problem.imsizes.cpu().numpy().astype(np.int64)
    base: np.ndarray = np.r_[0, np.cumsum(wh[:, 0] * wh[:, 1])]  # image k's keys: base[k] .. base[k + 1] - 1
    keys = np.empty(img.shape[0], dtype=np.int64)
    for start in range(0, len(keys), block):
        i = img[start : start + block].numpy()
        p = xy[start : start + block].numpy().astype(np.int64)
        keys[start : start + block] = base[i] + p[:, 1] * wh[i, 0] + p[:, 0]
    keys.sort()
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys  # unique (np.unique hashes: far slower)
    bounds = np.searchsorted(keys, base)
    out = []
    for k in range(n):
        local = keys[bounds[k] : bounds[k + 1]] - base[k]
        w = int(wh[k, 0])
        out.append(np.stack((local % w, local // w), 1).astype(np.int64))
    return out


@overload
def align(
    predictions: Sequence[PairPrediction],
    config: AlignConfig | None = None,
    *,
    images: Sequence[np.ndarray] | None = None,
    image_paths: Sequence[str] | None = None,
    n_images: int | None = None,
    known_intrinsics: Any = None,
    known_poses: Any = None,
    components: Literal[False] = False,
    **overrides: Any,
) -> Scene: ...


@overload
def align(
    predictions: Sequence[PairPrediction],
    config: AlignConfig | None = None,
    *,
    images: Sequence[np.ndarray] | None = None,
    image_paths: Sequence[str] | None = None,
    n_images: int | None = None,
    known_intrinsics: Any = None,
    known_poses: Any = None,
    components: Literal[True],
    **overrides: Any,
) -> ComponentResult: ...


@overload
def align(
    predictions: Sequence[PairPrediction],
    config: AlignConfig | None = None,
    *,
    images: Sequence[np.ndarray] | None = None,
    image_paths: Sequence[str] | None = None,
    n_images: int | None = None,
    known_intrinsics: Any = None,
    known_poses: Any = None,
    components: bool,
    **overrides: Any,
) -> Scene | ComponentResult: ...


def align(
    predictions: Sequence[PairPrediction],
    config: AlignConfig | None = None,
    *,
    images: Sequence[np.ndarray] | None = None,
    image_paths: Sequence[str] | None = None,
    n_images: int | None = None,
    known_intrinsics: Any = None,
    known_poses: Any = None,
    components: bool = False,
    **overrides: Any,
) -> Scene | ComponentResult:
    """Sparse global alignment of pair predictions into a :class:`Scene`.

    Args:
        predictions: one :class:`PairPrediction` per image pair (any order; (j, i) duplicates of (i, j) dropped).
        config: hyper-parameters (reference defaults); ``overrides`` replace fields by name.
        images: optional (H, W, 3) uint8 colours per image (grey otherwise).
        image_paths: optional names per image (``view_000`` ... otherwise).
        n_images: number of images, if more than referenced (an image in no pair is an error).
        known_intrinsics, known_poses: see :mod:`sparsega.alignment.known` (DESIGN "Known cameras").
        components: False (default): one Scene, and :class:`~sparsega.errors.GraphError` naming the groups when
            the match graph splits. True: always a :class:`ComponentResult` (:func:`align_components`; the
            policy is documented once, in :mod:`sparsega.alignment.components`).
    """
    if components:
        return align_components(
            predictions,
            config,
            images=images,
            image_paths=image_paths,
            n_images=n_images,
            known_intrinsics=known_intrinsics,
            known_poses=known_poses,
            **overrides,
        )
    cfg = (config or AlignConfig()).replace(**overrides) if overrides else (config or AlignConfig())
    cfg = cfg.replace(device=resolve_device(cfg.device))  # "auto" -> the device used, as recorded in the report
    with _torch_threads(1):
        return _align(
            predictions,
            cfg,
            images=images,
            image_paths=image_paths,
            n_images=n_images,
            known_intrinsics=known_intrinsics,
            known_poses=known_poses,
        )


def _pick(seq: Sequence[Any] | None, idx: Sequence[int] | np.ndarray) -> list[Any] | None:
    return None if seq is None else [seq[int(k)] for k in idx]


def align_components(
    predictions: Sequence[PairPrediction],
    config: AlignConfig | None = None,
    *,
    images: Sequence[np.ndarray] | None = None,
    image_paths: Sequence[str] | None = None,
    n_images: int | None = None,
    link: Literal["matches", "trusted"] = "matches",
    isolated: Literal["unregistered", "self-pair"] = "unregistered",
    known_intrinsics: Any = None,
    known_poses: Any = None,
    **overrides: Any,
) -> ComponentResult:
    """Align each connected component of the match graph as its own :class:`Scene`.

    Args:
        predictions, config, images, image_paths, n_images, known_intrinsics, known_poses, overrides: as
            :func:`align` (indexed by input image; known cameras given as a dict or an (N, ...) array).
        link: which pairs link two images (module docstring).
        isolated: ``"unregistered"`` (default) lists images linked to nothing in ``unregistered``;
            ``"self-pair"`` reconstructs each alone from its own-frame pointmap (a one-view Scene, identity pose),
            placed after the multi-view scenes; images in no prediction at all stay unregistered.

    Returns:
        :class:`ComponentResult` ``(scenes, unregistered)``; ``scene.image_index`` lists the input indices of the
        scene's views (scene view k = input image ``image_index[k]``).
    """
    if isolated not in ISOLATED_MODES:
        raise ConfigError(f"isolated={isolated!r}: must be one of {', '.join(ISOLATED_MODES)}")
    cfg = (config or AlignConfig()).replace(**overrides) if overrides else (config or AlignConfig())
    cfg = cfg.replace(device=resolve_device(cfg.device))
    with _torch_threads(1):
        return _align_components(
            predictions, cfg, images, image_paths, n_images, link, isolated, known_intrinsics, known_poses
        )


def _align_components(
    predictions: Sequence[PairPrediction],
    cfg: AlignConfig,
    images: Sequence[np.ndarray] | None,
    image_paths: Sequence[str] | None,
    n_images: int | None,
    link: Literal["matches", "trusted"],
    isolated: Literal["unregistered", "self-pair"],
    known_intrinsics: Any,
    known_poses: Any,
) -> ComponentResult:
    """:func:`align_components` with a resolved config."""
    split = split_components(predictions, n_images, link=link, matching_conf_thr=cfg.matching_conf_thr)
    n = split.n_images
    if images is not None and len(images) != n:
        raise InputError(f"{len(images)} images given for {n} views")
    if image_paths is not None and len(image_paths) != n:
        raise InputError(f"{len(image_paths)} image paths given for {n} views")
    names = list(image_paths) if image_paths is not None else [f"view_{k:03d}" for k in range(n)]
    if not split.connected:
        log.warning(
            "the match graph splits into %d component(s) of >= 2 views %s and %d isolated image(s) %s",
            len(split.groups),
            [g.tolist() for g in split.groups],
            len(split.isolated),
            split.isolated,
        )

    scenes: list[Scene] = []
    for k, group in enumerate(split.groups):
        sub = subset_predictions(predictions, group)
        log.info("component %d: %d views %s", k, len(group), group.tolist())
        scene = _align(
            sub,
            cfg,
            images=_pick(images, group),
            image_paths=_pick(names, group),
            n_images=len(group),
            known_intrinsics=_pick_known(known_intrinsics, group),
            known_poses=_pick_known(known_poses, group),
        )
        scenes.append(dataclasses.replace(scene, image_index=np.asarray(group, dtype=np.int64)))
    unregistered: list[int] = []
    for idx in split.isolated:
        # a single input image is reconstructed alone from its self-pair whatever ``isolated`` says
        sp = self_pair(predictions, idx) if isolated == "self-pair" or n == 1 else None
        if sp is None:
            unregistered.append(idx)
            continue
        scene = _align(
            [sp],
            cfg,
            images=_pick(images, [idx]),
            image_paths=[names[idx]],
            n_images=1,
            known_intrinsics=_pick_known(known_intrinsics, [idx]),
            known_poses=None,
        )
        scenes.append(dataclasses.replace(scene, image_index=np.asarray([idx], dtype=np.int64)))
    if unregistered:
        log.warning(
            "unregistered image(s) (no match with any other image): %s",
            ", ".join(f"{k} ({names[k]})" for k in unregistered),
        )
    return ComponentResult(scenes=scenes, unregistered=unregistered)


def _pick_known(known: Any, idx: Sequence[int] | np.ndarray) -> Any:
    """Known cameras (``{index: value}`` or an (N, ...) array) of images ``idx``, re-indexed ``0..len(idx)-1``."""
    if known is None:
        return None
    if isinstance(known, Mapping):
        picked = {pos: known[int(k)] for pos, k in enumerate(idx) if int(k) in known}
        return picked or None
    return np.asarray(known)[np.asarray(idx, dtype=np.int64)]


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU ops of the alignment on ``n`` threads (restored afterwards). The torch work here is
    per-image elementwise fusion; one thread keeps reductions in one fixed order (results independent of the
    caller's thread count) and cannot stall behind a descheduled thread on a busy machine."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _align(
    predictions: Sequence[PairPrediction],
    cfg: AlignConfig,
    *,
    images: Sequence[np.ndarray] | None,
    image_paths: Sequence[str] | None,
    n_images: int | None,
    known_intrinsics: Any,
    known_poses: Any,
) -> Scene:
    """:func:`align` with a resolved config."""
    t0 = time.perf_counter()
    problem, cdata, stats = build_problem(predictions, cfg, n_images)
    n = problem.n_images
    t_prep = time.perf_counter() - t0

    setup, world_scale, fixed_poses = None, 1.0, {}
    if known_intrinsics is not None or known_poses is not None:
        from .known import make_setup, validate_poses

        setup, cfg, world_scale = make_setup(problem, cfg, known_intrinsics, known_poses)
        if cfg.fix_poses:
            fixed_poses = validate_poses(known_poses, n)

    state = optimize(problem, cfg, setup)
    t_opt = time.perf_counter() - t0 - t_prep

    # what the rest needs of the problem, then the problem itself released (a big scene's match arrays: GBs)
    sparse_xy = matched_pixels(problem)
    depths = [d * np.float32(world_scale) for d in densify(state, problem, cdata, cfg.subsample)]
    del problem, setup
    K = state.intrinsics.detach().cpu().numpy().astype(np.float32)
    cam2w_d = state.cam2w.detach().cpu().double().numpy()
    cam2w_d[:, :3, 3] *= world_scale
    for k, pose in fixed_poses.items():  # hard constraints: exactly the input (no round-off from the chain)
        cam2w_d[k] = pose
    cam2w = cam2w_d.astype(np.float32)
    confs = [c.confs.copy() for c in cdata]
    for k, d in enumerate(depths):
        # the additive depth model can cross zero where an unmatched anchor's canonical ratio is small and the
        # focal shrank: such pixels get confidence 0 and the smallest valid depth (never NaN or <= 0)
        bad = ~(np.isfinite(d) & (d > 0))
        if bad.any():
            good = d[~bad]
            d[bad] = good.min() if good.size else 1.0
            confs[k][bad] = 0.0
            log.info("image %d: %d pixels with non-positive depth marked invalid", k, int(bad.sum()))
    if cfg.clean_depth and n > 1:
        confs = clean_confidences(confs, K, cam2w, depths, np.asarray(stats["pairs"]))

    if images is not None:
        if len(images) != n:
            raise InputError(f"{len(images)} images given for {n} views")
        imgs = [np.asarray(im, dtype=np.uint8) for im in images]
        for k, im in enumerate(imgs):
            if im.shape[:2] != depths[k].shape:
                raise InputError(f"image {k}: colours have shape {im.shape[:2]}, predictions {depths[k].shape}")
    else:
        imgs = [np.full((*d.shape, 3), 160, np.uint8) for d in depths]
    paths = list(image_paths) if image_paths is not None else [f"view_{k:03d}" for k in range(n)]
    if len(paths) != n:
        raise InputError(f"{len(paths)} image paths given for {n} views")

    info = {
        "config": cfg.to_dict(),
        "world_scale": world_scale,
        "stats": {k: v for k, v in stats.items() if k not in ("pairs",)},
        "timings_s": {
            "prepare": t_prep,
            "optimize": t_opt,
            "total": time.perf_counter() - t0,
            **{st.name: st.wall_s for st in state.stages},
        },
        "stages": [
            {
                "name": st.name,
                "niter": st.niter_done,
                "loss_first": st.losses[0] if st.losses else None,
                "loss_last": st.losses[-1] if st.losses else None,
                "stopped_non_finite": st.stopped_non_finite,
            }
            for st in state.stages
        ],
    }
    return Scene(
        cam2w=cam2w,
        intrinsics=K,
        depthmaps=depths,
        confidences=confs,
        images=imgs,
        image_paths=paths,
        sparse_xy=sparse_xy,
        info=info,
    )
