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
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from . import canonical
from . import kinematic
from ..errors import GraphError, InputError
from .optimizer import AlignProblem, OptimState, optimize
from ..scene import Scene, clean_confidences
from ..types import AlignConfig, PairPrediction

log = logging.getLogger(__name__)

# score given to a pair that exists but has no match at all: below any real match count, so such a pair only links
# the kinematic tree where nothing better exists (the reference crashes on it)
ZERO_MATCH_SCORE = 0.5


@dataclass
class CanonicalData:
    """What alignment keeps of one image after fusing its pointmaps (the full-resolution maps are dropped).

    canon2: (H, W) float32 depth ratio map; confs: (H, W) float32 fused confidence; focal: initial focal (px);
    core_depth: (A,) float32 canonical depths at the anchors.
    """

    canon2: np.ndarray
    confs: np.ndarray
    focal: float
    core_depth: np.ndarray


@dataclass
class _PairMeta:
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


class _Pairs:
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
        self.meta: list[_PairMeta] = []
        for k in range(count):
            p = predictions[k]
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
            self.meta.append(_PairMeta(k, flip, q.i, q.j, q.shape1, q.shape2, np.asarray(q.xy1),
                                       np.asarray(q.xy2), np.asarray(q.match_conf)))
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
                    raise InputError(f"image {idx} has shape {shapes[idx]} in one pair and {shp} in pair "
                                     f"({m.i}, {m.j})")
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


def _sanitize(pts: np.ndarray, conf: np.ndarray, own_frame: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
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


def _anchor_pixels(h: int, w: int, s: int) -> np.ndarray:
    ys, xs = np.mgrid[s // 2 : h : s, s // 2 : w : s]
    return np.stack((xs.ravel(), ys.ravel()), -1).astype(np.int64)


def weighted_umeyama(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted similarity ``dst ~ s R src + t`` (float64). ``src, dst (P, 3)``, ``w (P,)`` >= 0."""
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    xs, xd = src - ms, dst - md
    cov = (xd * w[:, None]).T @ xs
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt)) or 1.0
    R = U @ D @ Vt
    var = (w * (xs**2).sum(1)).sum()
    scale = float((S * np.diag(D)).sum() / var) if var > 0 else 1.0
    return scale, R, md - scale * R @ ms


def _relative_pose(p: PairPrediction, core_a: np.ndarray, core_b: np.ndarray, subsample: int, step: int
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """Camera j of pair ``p`` in camera i's frame, in i's canonical units: ``(R, centre, size ratio)``.

    A confidence-weighted Procrustes ``pts21 ~ s R pts22 + t`` places j in i's pair frame; the ratios ``sigma``
    between canonical and pair depths convert to canonical units (centre ``sigma_i t``, size ratio
    ``sigma_i s / sigma_j``). Degenerate input gives the identity.
    """
    sl = slice(subsample // 2, None, subsample)
    sig_a = float(np.median(core_a / np.maximum(np.asarray(p.pts11)[sl, sl, 2].reshape(-1), 1e-12)))
    sig_b = float(np.median(core_b / np.maximum(np.asarray(p.pts22)[sl, sl, 2].reshape(-1), 1e-12)))
    src = np.asarray(p.pts22, np.float64)[::step, ::step].reshape(-1, 3)
    dst = np.asarray(p.pts21, np.float64)[::step, ::step].reshape(-1, 3)
    w = (np.asarray(p.conf22, np.float64)[::step, ::step] * np.asarray(p.conf21, np.float64)[::step, ::step]
         ).reshape(-1) - 1 + 1e-6
    ok = np.isfinite(src).all(1) & np.isfinite(dst).all(1) & np.isfinite(w)
    if ok.sum() < 3:
        return np.eye(3), np.zeros(3), 1.0
    s_ab, R_ab, t_ab = weighted_umeyama(src[ok], dst[ok], w[ok])
    ratio = sig_a * s_ab / sig_b
    if not (np.isfinite(ratio) and ratio > 0 and np.isfinite(t_ab).all()):
        return np.eye(3), np.zeros(3), 1.0
    return R_ab, sig_a * t_ab, ratio


def chain_pairwise_poses(preds: "_Pairs", n: int, root: int, edges: np.ndarray,
                         cdata: list[CanonicalData], subsample: int, step: int = 4
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial absolute poses and sizes by chaining pairwise relative poses (:func:`_relative_pose`) along the
    kinematic tree. A tree edge without a predicted pair (hclust trees link cluster representatives) is
    composed along the shortest path of predicted pairs. Returns ``R (N,3,3)``, centres ``C (N,3)`` (root at the
    origin, root size 1) and ``log_sizes (N,)``.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order

    by_pair = {(m.i, m.j): k for k, m in enumerate(preds.meta) if m.i != m.j}
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, float]] = {}

    def rel(a: int, b: int) -> tuple[np.ndarray, np.ndarray, float]:
        if (a, b) not in cache:
            p = preds[by_pair[a, b]] if (a, b) in by_pair else preds[by_pair[b, a]].swapped()
            cache[a, b] = _relative_pose(p, cdata[a].core_depth, cdata[b].core_depth, subsample, step)
        return cache[a, b]

    ij = np.array(list(by_pair), dtype=np.int64).reshape(-1, 2)
    graph = csr_matrix((np.ones(len(ij)), (ij[:, 0], ij[:, 1])), shape=(n, n))
    R = np.tile(np.eye(3), (n, 1, 1))
    C = np.zeros((n, 3))
    size = np.ones(n)
    for a, b in edges:
        a, b = int(a), int(b)
        if (a, b) in by_pair or (b, a) in by_pair:
            path = [a, b]
        else:
            _, pred = breadth_first_order(graph, a, directed=False)
            path = [b]
            while path[-1] != a and pred[path[-1]] >= 0:
                path.append(int(pred[path[-1]]))
            path = path[::-1] if path[-1] == a else [a, b]
        Rc, Cc, sc = R[a], C[a], size[a]
        for u, v in zip(path[:-1], path[1:]):
            if (u, v) in by_pair or (v, u) in by_pair:
                R_uv, c_uv, r_uv = rel(u, v)
            else:
                R_uv, c_uv, r_uv = np.eye(3), np.zeros(3), 1.0
            Cc = Cc + Rc @ (sc * c_uv)
            Rc = Rc @ R_uv
            sc = sc * r_uv
        R[b], C[b], size[b] = Rc, Cc, sc
    return R, C, np.log(size)


def build_problem(predictions: Sequence[PairPrediction], config: AlignConfig, n_images: int | None = None
                  ) -> tuple[AlignProblem, list[CanonicalData], dict[str, Any]]:
    """Turn predictions into the flat :class:`AlignProblem` (plus per-image canonical data for densification)."""
    preds = _Pairs(predictions, n_images)
    n, shapes, meta = preds.n, preds.shapes, preds.meta
    s = config.subsample
    dev, dt = torch.device(config.device), config.torch_dtype

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
    sides_img, sides_xy, confs, pair_of = [], [], [], []
    for k, p in enumerate(meta):
        m = len(p.match_conf)
        conf = np.asarray(p.match_conf, dtype=np.float32)
        if m and not np.isfinite(conf).all():
            log.warning("pair (%d, %d): non-finite match confidences dropped", p.i, p.j)
        valid = np.isfinite(conf) & (conf > 0) if m else np.zeros(0, bool)
        if p.i == p.j:
            valid[:] = False
        pair_ok[k] = bool(valid.any()) and float(conf[valid].max()) > config.matching_conf_thr
        sides_img.append(np.stack((np.full(valid.sum(), p.i), np.full(valid.sum(), p.j))))
        sides_xy.append(np.stack((p.xy1[valid], p.xy2[valid])))
        confs.append(conf[valid])
        pair_of.append(np.full(valid.sum(), k))
    m_pair = np.concatenate(pair_of).astype(np.int64)
    order = np.argsort(~pair_ok[m_pair], kind="stable")  # trusted matches first (the losses use a slice)
    m_pair = m_pair[order]
    m_img = np.ascontiguousarray(np.concatenate(sides_img, axis=1).astype(np.int64)[:, order])
    m_xy = np.ascontiguousarray(np.concatenate(sides_xy, axis=1).astype(np.int64)[:, order])
    m_conf = np.concatenate(confs)[order]
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
    for k in range(n):
        maps, cfs = [], []
        for pk, which in own[k]:
            p = preds[pk]
            pts, cf = (p.pts11, p.conf11) if which == "11" else (p.pts22, p.conf22)
            pts, cf = _sanitize(np.asarray(pts, np.float32), np.asarray(cf, np.float32), True,
                                f"pair ({p.i}, {p.j}) pts{which}")
            maps.append(pts)
            cfs.append(cf)
        ptmaps = torch.from_numpy(np.stack(maps))
        cf_t = torch.from_numpy(np.stack(cfs))
        canon, canon2, cconf = canonical.canonical_view(ptmaps, cf_t, subsample=s, mode=config.canonical_mode)
        focal = float(canonical.estimate_focal(canon))
        del ptmaps, cf_t
        canon2_np = canon2.numpy().astype(np.float32)
        if not np.isfinite(canon2_np).all():
            raise InputError(f"image {k}: canonical view is not finite")
        core = canon[s // 2 :: s, s // 2 :: s, 2].reshape(-1).numpy().astype(np.float32)
        core = np.maximum(core, np.float32(1e-6 * max(np.median(core), 1e-12)))
        cdata.append(CanonicalData(canon2_np, cconf.numpy().astype(np.float32), focal, core))
        base_focals[k] = focal
        mean_confs[k] = float(cconf.mean())
        sel = side_order[side_ptr[k] : side_ptr[k + 1]]  # flat (side * M + match) positions of image k
        if len(sel):
            idx, off = canonical.anchor_depth_offsets(canon2, torch.from_numpy(m_xy_flat[sel]), subsample=s)
            m_anchor.reshape(-1)[sel] = idx.numpy() + anchor_base[k]
            m_off.reshape(-1)[sel] = off.numpy()

    # fallback targets at anchor resolution for pairs whose matching is not trusted
    fb_anchor, fb_ref, fb_target, fb_conf = [], [], [], []
    n_fallback = 0
    for k, pm in enumerate(meta):
        if pair_ok[k] or pm.i == pm.j:
            continue
        n_fallback += 1
        p = preds[k]
        for a, b, pts_ab, conf_ab, (h, w) in ((p.i, p.j, p.pts12, p.conf12, p.shape1),
                                              (p.j, p.i, p.pts21, p.conf21, p.shape2)):
            axy = _anchor_pixels(h, w, s)
            tgt = np.asarray(pts_ab, np.float32)[axy[:, 1], axy[:, 0]]
            cf = np.asarray(conf_ab, np.float32)[axy[:, 1], axy[:, 0]]
            good = np.isfinite(tgt).all(-1) & np.isfinite(cf)
            fb_anchor.append(anchor_base[a] + np.flatnonzero(good))
            fb_ref.append(np.full(good.sum(), b))
            fb_target.append(tgt[good])
            fb_conf.append(cf[good])

    anchor_img = np.repeat(np.arange(n), np.diff(anchor_base))
    anchor_xy = np.concatenate([_anchor_pixels(*shapes[k], s) for k in range(n)])
    core_all = np.concatenate([c.core_depth for c in cdata])
    medians = np.array([np.median(c.core_depth) for c in cdata])
    core_norm = core_all / medians[anchor_img]

    # kinematic tree over the match-count graph
    scores = np.zeros((n, n), dtype=np.float32)
    counts = np.bincount(m_pair, minlength=len(meta))
    for k, p in enumerate(meta):
        if p.i == p.j:
            continue
        cnt = float(counts[k])
        scores[p.i, p.j] = scores[p.j, p.i] = cnt if cnt > 0 else ZERO_MATCH_SCORE
    imsizes_wh = np.array([(shapes[k][1], shapes[k][0]) for k in range(n)], dtype=np.int64)
    if n == 1:
        root, edges = 0, np.zeros((0, 2), dtype=np.int64)
    else:
        tree = kinematic.build_tree(config.kinematic_mode, scores, imsizes_wh, s)
        root, edges = int(tree.root), np.asarray(tree.edges, dtype=np.int64).reshape(-1, 2)

    init = None
    if config.pose_init == "procrustes" and n > 1:
        init = chain_pairwise_poses(preds, n, root, edges, cdata, s)

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
        root=root,
        edges=edges,
        mean_confs=t(mean_confs),
        init_R=t(init[0]) if init else None,
        init_C=t(init[1]) if init else None,
        init_log_sizes=t(init[2]) if init else None,
    )
    stats = {
        "n_images": n, "n_pairs": len(preds), "n_matches": int(m_conf.shape[0]),
        "n_fallback_pairs": n_fallback, "n_anchors": int(anchor_base[-1]),
        "kinematic_root": root, "kinematic_edges": edges.tolist(),
        "pairs": [[p.i, p.j] for p in meta],
    }
    return problem, cdata, stats


def densify(state: OptimState, problem: AlignProblem, cdata: list[CanonicalData], subsample: int
            ) -> list[np.ndarray]:
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


def align(predictions: Sequence[PairPrediction], config: AlignConfig | None = None, *,
          images: Sequence[np.ndarray] | None = None, image_paths: Sequence[str] | None = None,
          n_images: int | None = None, known_intrinsics: Any = None, known_poses: Any = None,
          **overrides: Any) -> Scene:
    """Sparse global alignment of pair predictions into a :class:`Scene`.

    Args:
        predictions: one :class:`PairPrediction` per image pair (any order; (j, i) duplicates of (i, j) dropped).
        config: hyper-parameters (reference defaults); ``overrides`` replace fields by name.
        images: optional (H, W, 3) uint8 colours per image (grey otherwise).
        image_paths: optional names per image (``view_000`` ... otherwise).
        n_images: number of images, if more than referenced (an image in no pair is an error).
        known_intrinsics, known_poses: see :mod:`sparsega.alignment.known` (DESIGN "Known cameras").
    """
    cfg = (config or AlignConfig()).replace(**overrides) if overrides else (config or AlignConfig())
    with _torch_threads(1):
        return _align(predictions, cfg, images=images, image_paths=image_paths, n_images=n_images,
                      known_intrinsics=known_intrinsics, known_poses=known_poses)


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


def _align(predictions: Sequence[PairPrediction], cfg: AlignConfig, *, images: Sequence[np.ndarray] | None,
           image_paths: Sequence[str] | None, n_images: int | None, known_intrinsics: Any, known_poses: Any
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

    depths = [d * np.float32(world_scale) for d in densify(state, problem, cdata, cfg.subsample)]
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

    m_img = problem.m_img.cpu().numpy()
    m_xy = problem.m_xy.cpu().numpy().astype(np.int64)
    sparse_xy = []
    for k in range(n):
        xy = m_xy[m_img == k]
        w = int(problem.imsizes[k, 0])
        key = np.unique(xy[:, 1] * w + xy[:, 0])  # sorted by (y, x), as np.unique(xy, axis=0) on (x, y) is not
        sparse_xy.append(np.stack((key % w, key // w), 1).astype(np.int64))

    info = {
        "config": cfg.to_dict(),
        "world_scale": world_scale,
        "stats": {k: v for k, v in stats.items() if k not in ("pairs",)},
        "timings_s": {"prepare": t_prep, "optimize": t_opt, "total": time.perf_counter() - t0,
                      **{st.name: st.wall_s for st in state.stages}},
        "stages": [{"name": st.name, "niter": st.niter_done, "loss_first": st.losses[0] if st.losses else None,
                    "loss_last": st.losses[-1] if st.losses else None, "stopped_non_finite": st.stopped_non_finite}
                   for st in state.stages],
    }
    return Scene(cam2w=cam2w, intrinsics=K, depthmaps=depths, confidences=confs, images=imgs,
                 image_paths=paths, sparse_xy=sparse_xy, info=info)
