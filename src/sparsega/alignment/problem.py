"""Pipeline steps 3-5 as data: pair predictions -> the flat, vectorised :class:`AlignProblem` the optimiser reads.

Per image, the canonical view fuses its pointmaps (:mod:`.canonical`) and only anchor-resolution data is kept
(anchor depths, match offsets, fallback targets) plus the (H, W) depth-ratio map for the final dense depth; the
kinematic tree (:mod:`.kinematic`) is built over the match-count graph. Also the optimiser's result types.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import InputError
from ..types import AlignConfig, PairPrediction
from . import canonical, kinematic, reading
from .inputs import PairView, sanitize_pointmap
from .pose_init import (
    PairwisePoses,
    anchor_z,
    average_pairwise_poses,
    chain_pairwise_poses,
    depth_ratio,
    pair_similarity,
)
from .reading import LaterMaps, ReadAhead

log = logging.getLogger(__name__)

Tensor = torch.Tensor


@dataclass(frozen=True)
class AlignProblem:
    """Flat, vectorised description of an alignment problem (all torch tensors on the target device).

    N images, A anchors in total, M matches (each with two sides), F fallback targets.

    Attributes:
        imsizes: (N, 2) (W, H) of each image.
        base_focals: (N,) initial focals f0 from the canonical views (pixels).
        pps: (N, 2) initial principal points (pixels).
        median_depths: (N,) lower median canonical anchor depth of each image (as torch.median).
        core_depth: (A,) canonical anchor depths divided by their image's median depth.
        anchor_img: (A,) image of each anchor.  anchor_xy: (A, 2) anchor pixel (x, y).
        m_img: (2, M) images of both sides of each match.  m_xy: (2, M, 2) pixels.  m_anchor: (2, M) global anchor
            index.  m_off: (2, M) canonical depth ratio to the anchor.  m_conf: (M,) confidence.
            m_ok: (M,) True where the pair's matching is trusted (max confidence > threshold); trusted matches
            come first (the losses use the leading slice).
        fb_anchor: (F,) anchors regressed by the fallback.  fb_ref: (F,) image whose camera frame the target is in.
            fb_target: (F, 3) target point in that frame.  fb_conf: (F,) weight.  fb_xy: (F, 2) pixel of the
            regressed point (the anchor's own pixel, or a matched pixel).  fb_off: (F,) its canonical depth ratio
            to the anchor (1 at the anchor pixel).
        root, edges: kinematic tree (edges (N-1, 2) (parent, child) in BFS order).
    """

    imsizes: Tensor
    base_focals: Tensor
    pps: Tensor
    median_depths: Tensor
    core_depth: Tensor
    anchor_img: Tensor
    anchor_xy: Tensor
    m_img: Tensor
    m_xy: Tensor
    m_anchor: Tensor
    m_off: Tensor
    m_conf: Tensor
    m_ok: Tensor
    fb_anchor: Tensor
    fb_ref: Tensor
    fb_target: Tensor
    fb_conf: Tensor
    fb_xy: Tensor
    fb_off: Tensor
    root: int
    edges: np.ndarray
    mean_confs: Tensor = field(default_factory=lambda: torch.zeros(0))
    init_R: Tensor | None = None
    init_C: Tensor | None = None
    init_log_sizes: Tensor | None = None

    @property
    def n_images(self) -> int:
        return int(self.imsizes.shape[0])

    @property
    def n_matches(self) -> int:
        return int(self.m_conf.shape[0])

    def to(self, dtype: torch.dtype) -> AlignProblem:
        """A copy with every floating-point tensor cast to ``dtype`` (index tensors unchanged)."""
        cast = {
            f.name: getattr(self, f.name).to(dtype)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor) and getattr(self, f.name).is_floating_point()
        }
        return dataclasses.replace(self, **cast)


@dataclass(frozen=True)
class StageResult:
    """Outcome of one optimisation stage."""

    name: str
    niter_done: int
    losses: list[float]
    wall_s: float
    stopped_non_finite: bool = False


@dataclass(frozen=True)
class OptimState:
    """Final optimised quantities (detached, on the optimiser's device).

    intrinsics (N, 3, 3); cam2w (N, 4, 4); anchor_depth (A,) absolute anchor depths; focals (N,).
    """

    intrinsics: Tensor
    cam2w: Tensor
    anchor_depth: Tensor
    focals: Tensor
    stages: list[StageResult]


@dataclass(frozen=True)
class CanonicalData:
    """What alignment keeps of one image after fusing its pointmaps (the full-resolution maps are dropped).

    canon2: (H, W) float32 depth ratio map; confs: (H, W) float32 fused confidence; focal: initial focal (px);
    core_depth: (A,) float32 canonical depths at the anchors.
    """

    canon2: np.ndarray
    confs: np.ndarray
    focal: float
    core_depth: np.ndarray


def _anchor_pixels(h: int, w: int, s: int) -> np.ndarray:
    ys, xs = np.mgrid[s // 2 : h : s, s // 2 : w : s]
    return np.stack((xs.ravel(), ys.ravel()), -1).astype(np.int64)


def _fuse(
    ptmaps: np.ndarray, confs: np.ndarray, s: int, config: AlignConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Canonical view of one image from its ``(n, H, W, 3)`` pointmaps and ``(n, H, W)`` confidences (float32,
    sanitised): ``canon (H, W, 3)``, ``canon2 (H, W)``, ``confs (H, W)`` float32 and the focal. The compiled kernel
    (:mod:`.kernels.canonical`), or its torch twin with ``loss_backend="autograd"`` (the plain torch path)."""
    if config.loss_backend != "autograd":
        from .kernels import canonical as fast

        canon, canon2, cconf = fast.fuse_view(ptmaps, confs, s, config.canonical_mode)
        focal = fast.estimate_focal(canon)
        if not np.isfinite(focal):
            raise InputError("estimate_focal: a pointmap has no point with finite coordinates and positive depth")
        return canon, canon2, cconf, focal
    canon_t, canon2_t, cconf_t = canonical.canonical_view(
        torch.from_numpy(ptmaps), torch.from_numpy(confs), subsample=s, mode=config.canonical_mode
    )
    focal = float(canonical.estimate_focal(canon_t))
    f32 = np.float32
    return canon_t.numpy().astype(f32), canon2_t.numpy().astype(f32), cconf_t.numpy().astype(f32), focal


def build_problem(
    predictions: Sequence[PairPrediction], config: AlignConfig, n_images: int | None = None
) -> tuple[AlignProblem, list[CanonicalData], dict[str, Any]]:
    """Turn predictions into the flat :class:`AlignProblem` (plus per-image canonical data for densification)."""
    preds = PairView(predictions, n_images)
    n, shapes, meta = preds.n, preds.shapes, preds.meta
    s = config.subsample
    dev, dt = torch.device(resolve_device(config.device)), config.torch_dtype

    own: dict[int, list[tuple[int, str]]] = {k: [] for k in range(n)}  # image -> [(pred idx, which)]
    for k, p in enumerate(meta):
        own[p.i].append((k, "11"))
        if p.j != p.i:
            own[p.j].append((k, "22"))
    for k, (h, w) in shapes.items():
        if h % s or w % s:
            raise InputError(f"image {k}: size {w}x{h} is not a multiple of subsample={s}")

    # matches: both sides in flat arrays; self-pairs (single image) carry no cross-view constraint
    pair_ok = np.zeros(len(preds), dtype=bool)
    valids, confs = [], []
    for k, p in enumerate(meta):
        m = len(p.match_conf)
        conf = np.asarray(p.match_conf, dtype=np.float32)
        if m and not np.isfinite(conf).all():
            log.warning("pair (%d, %d): non-finite match confidences dropped", p.i, p.j)
        valid = np.isfinite(conf) & (conf > 0) if m else np.zeros(0, bool)
        if p.i == p.j:
            valid[:] = False
        pair_ok[k] = bool(valid.any()) and float(conf[valid].max()) > config.matching_conf_thr
        valids.append(valid)
        confs.append(conf)
    # trusted pairs' matches first (the losses use a slice), pairs in input order, each pair's matches in its order;
    # written straight into the final arrays (int32 pixels), no per-pair copies concatenated
    pair_order = np.r_[np.flatnonzero(pair_ok), np.flatnonzero(~pair_ok)].astype(np.int64)
    n_valid = np.array([v.sum() for v in valids], dtype=np.int64)
    m_pair = np.repeat(pair_order, n_valid[pair_order])
    m_xy = np.empty((2, len(m_pair), 2), dtype=np.int32)
    m_conf = np.empty(len(m_pair), dtype=np.float32)
    pos = 0
    for k in pair_order:
        v, end = valids[k], pos + int(n_valid[k])
        m_xy[0, pos:end] = meta[k].xy1[v]
        m_xy[1, pos:end] = meta[k].xy2[v]
        m_conf[pos:end] = confs[k][v]
        pos = end
    del valids, confs
    m_img = np.stack((np.array([p.i for p in meta], np.int64)[m_pair], np.array([p.j for p in meta], np.int64)[m_pair]))
    m_anchor = np.zeros(m_img.shape, dtype=np.int64)  # C order: filled through flat views below
    m_off = np.zeros(m_img.shape, dtype=np.float32)
    side_order = np.argsort(m_img.reshape(-1), kind="stable")  # match sides grouped by image
    side_ptr = np.searchsorted(m_img.reshape(-1)[side_order], np.arange(n + 1))
    m_xy_flat = m_xy.reshape(-1, 2)

    # canonical views, one image at a time
    anchor_base = np.zeros(n + 1, dtype=np.int64)
    for k in range(n):
        h, w = shapes[k]
        anchor_base[k + 1] = anchor_base[k] + (h // s) * (w // s)
    cdata: list[CanonicalData] = []
    base_focals = np.zeros(n)
    mean_confs = np.zeros(n)
    # the start's pairwise poses, from the pairs while they are loaded here: each pair's Procrustes when its first
    # image is fused, and both images' depth ratios once their canonical views exist (pose_init.PairwisePoses)
    warm = config.pose_init != "identity" and n > 1
    sims: dict[int, Any] = {}
    sigmas: dict[tuple[int, int], float] = {}
    later = LaterMaps(reading.STASH_BYTES)
    first_reads = [pk for k in range(n) for pk, which in own[k] if which == "11"]  # in the order they are used
    ahead = bool(getattr(predictions, "thread_safe_reads", False)) and len(first_reads) > 1
    reader: Any = ReadAhead(preds, first_reads) if ahead else preds
    try:
        for k in range(n):
            maps, cfs, own_z = [], [], []
            for pk, which in own[k]:
                # pair (i, j), i < j, is read when image i is fused; image j's maps are kept for it (within a
                # budget) so that a cached pair is usually read and decoded once
                got = later.pop(pk) if which == "22" else None
                if got is None:
                    p = reader[pk]
                    if which == "11" and meta[pk].j != k:
                        later.put(pk, p.pts22, p.conf22)
                    if warm and which == "11":  # both directions: the pose start may use either
                        sims[pk] = (pair_similarity(p), pair_similarity(p.swapped()) if p.i != p.j else None)
                    got = (p.pts11, p.conf11) if which == "11" else (p.pts22, p.conf22)
                    del p
                pts, cf = got
                if warm:
                    own_z.append(anchor_z(pts, s))
                what = f"pair ({meta[pk].i}, {meta[pk].j}) pts{which}"
                pts, cf = sanitize_pointmap(np.asarray(pts, np.float32), np.asarray(cf, np.float32), True, what)
                maps.append(pts)
                cfs.append(cf)
            canon, canon2_np, cconf, focal = _fuse(np.stack(maps), np.stack(cfs), s, config)
            del maps, cfs
            if not np.isfinite(canon2_np).all():
                raise InputError(f"image {k}: canonical view is not finite")
            core = canon[s // 2 :: s, s // 2 :: s, 2].reshape(-1).astype(np.float32)
            core = np.maximum(core, np.float32(1e-6 * max(np.median(core), 1e-12)))
            cdata.append(CanonicalData(canon2_np, cconf, focal, core))
            for (pk, _), z in zip(own[k], own_z):
                sigmas[pk, k] = depth_ratio(core, z)
            base_focals[k] = focal
            mean_confs[k] = float(torch.from_numpy(cconf).mean())
            sel = side_order[side_ptr[k] : side_ptr[k + 1]]  # flat (side * M + match) positions of image k
            if len(sel):
                canon2 = torch.from_numpy(canon2_np)
                idx, off = canonical.anchor_depth_offsets(canon2, torch.from_numpy(m_xy_flat[sel]), subsample=s)
                m_anchor.reshape(-1)[sel] = idx.numpy() + anchor_base[k]
                m_off.reshape(-1)[sel] = off.numpy()
    finally:
        if ahead:
            reader.close()

    # fallback targets at anchor resolution for pairs whose matching is not trusted
    fb_anchor, fb_ref, fb_target, fb_conf, fb_xy, fb_off = [], [], [], [], [], []
    n_fallback = 0
    for k, pm in enumerate(meta):
        if pair_ok[k] or pm.i == pm.j:
            continue
        n_fallback += 1
        p = preds[k]
        for a, b, pts_ab, conf_ab, (h, w) in (
            (p.i, p.j, p.pts12, p.conf12, p.shape1),
            (p.j, p.i, p.pts21, p.conf21, p.shape2),
        ):
            if config.fallback_targets == "anchors":  # every anchor holding a match, at its own pixel
                sel = side_order[side_ptr[a] : side_ptr[a + 1]]
                anc = np.unique(m_anchor.reshape(-1)[sel] - anchor_base[a])
                pix = _anchor_pixels(h, w, s)[anc]
                sxy, soff = pix, np.ones(len(anc), np.float32)
            else:  # every matched pixel of a (all partners); target at its block's top-left pixel
                sel = side_order[side_ptr[a] : side_ptr[a + 1]]
                anc = m_anchor.reshape(-1)[sel] - anchor_base[a]
                sxy, soff = m_xy_flat[sel], m_off.reshape(-1)[sel]
                pix = np.stack(((anc % (w // s)) * s, (anc // (w // s)) * s), 1)
            tgt = np.asarray(pts_ab, np.float32)[pix[:, 1], pix[:, 0]]
            cf = np.asarray(conf_ab, np.float32)[pix[:, 1], pix[:, 0]]
            good = np.isfinite(tgt).all(-1) & np.isfinite(cf)
            fb_anchor.append(anchor_base[a] + anc[good])
            fb_ref.append(np.full(good.sum(), b))
            fb_target.append(tgt[good])
            fb_conf.append(cf[good])
            fb_xy.append(sxy[good])
            fb_off.append(soff[good])

    anchor_img = np.repeat(np.arange(n), np.diff(anchor_base))
    anchor_xy = np.concatenate([_anchor_pixels(*shapes[k], s) for k in range(n)])
    core_all = np.concatenate([c.core_depth for c in cdata])
    # the reference's torch.median: the lower of the two middle values for an even count (not numpy's mean)
    medians = np.array([np.sort(c.core_depth)[(len(c.core_depth) - 1) // 2] for c in cdata], dtype=np.float64)
    core_norm = core_all / medians[anchor_img]

    # kinematic tree over the match-count graph
    scores = np.zeros((n, n), dtype=np.float32)
    counts = np.bincount(m_pair, minlength=len(meta))
    for k, p in enumerate(meta):
        if p.i == p.j:
            continue
        # a pair links two images only through usable matches (sparsega.alignment.components): a pair with none
        # adds its fallback loss but no tree edge
        scores[p.i, p.j] = scores[p.j, p.i] = float(counts[k])
    imsizes_wh = np.array([(shapes[k][1], shapes[k][0]) for k in range(n)], dtype=np.int64)
    if n == 1:
        root, edges = 0, np.zeros((0, 2), dtype=np.int64)
    else:
        tree = kinematic.build_tree(config.kinematic_mode, scores, imsizes_wh, s)
        root, edges = int(tree.root), np.asarray(tree.edges, dtype=np.int64).reshape(-1, 2)

    init = None
    if warm:
        known = {}
        for k, m in enumerate(meta):
            if m.i != m.j:
                known[m.i, m.j] = (sims[k][0], sigmas[k, m.i], sigmas[k, m.j])
                known[m.j, m.i] = (sims[k][1], sigmas[k, m.j], sigmas[k, m.i])
        poses = PairwisePoses(preds, cdata, s, known=known)
        if config.pose_init == "procrustes":
            init = chain_pairwise_poses(preds, n, root, edges, cdata, s, poses=poses)
        else:
            weights = np.where(pair_ok, counts, 0).astype(np.float64)
            init = average_pairwise_poses(preds, n, root, edges, cdata, s, weights, poses=poses)

    def t(x: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), device=dev, dtype=dtype or dt)

    cat = np.concatenate
    problem = AlignProblem(
        imsizes=t(imsizes_wh, torch.int64),
        base_focals=t(base_focals),
        pps=t(imsizes_wh / 2.0),
        median_depths=t(medians),
        core_depth=t(core_norm),
        anchor_img=t(anchor_img, torch.int64),
        anchor_xy=t(anchor_xy),
        m_img=t(m_img, torch.int64),
        m_xy=t(m_xy),
        m_anchor=t(m_anchor, torch.int64),
        m_off=t(m_off),
        m_conf=t(m_conf),
        m_ok=t(pair_ok[m_pair], torch.bool),
        fb_anchor=t(cat(fb_anchor) if fb_anchor else np.zeros(0), torch.int64),
        fb_ref=t(cat(fb_ref) if fb_ref else np.zeros(0), torch.int64),
        fb_target=t(cat(fb_target) if fb_target else np.zeros((0, 3))),
        fb_conf=t(cat(fb_conf) if fb_conf else np.zeros(0)),
        fb_xy=t(cat(fb_xy) if fb_xy else np.zeros((0, 2))),
        fb_off=t(cat(fb_off) if fb_off else np.zeros(0)),
        root=root,
        edges=edges,
        mean_confs=t(mean_confs),
        init_R=t(init[0]) if init else None,
        init_C=t(init[1]) if init else None,
        init_log_sizes=t(init[2]) if init else None,
    )
    stats = {
        "n_images": n,
        "n_pairs": len(preds),
        "n_matches": int(m_conf.shape[0]),
        "n_fallback_pairs": n_fallback,
        "n_anchors": int(anchor_base[-1]),
        "kinematic_root": root,
        "kinematic_edges": edges.tolist(),
        "pairs": [[p.i, p.j] for p in meta],
    }
    return problem, cdata, stats
