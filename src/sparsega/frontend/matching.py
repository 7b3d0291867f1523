"""Dense matching between the two images of a pair: fast reciprocal nearest neighbours, merging, pair scores.

Semantics are the reference's (MASt3R ``fast_reciprocal_NNs`` / ``extract_correspondences``):

- seeds are the pixels (s//2 + s*i, s//2 + s*j) of image A (s = subsample, flat index y*W + x);
- ping-pong: each unconverged seed goes to its nearest neighbour in B, then back to its nearest neighbour in A;
  a chain stops as soon as a step lands where it was at the previous round (the pair is then reciprocal), at most
  `max_iter` rounds; chains still moving are dropped;
- the result is the set of unique (idx_a, idx_b) pairs, sorted by (idx_a, idx_b).

Descriptor similarity is the dot product (descriptors are unit vectors); pointmaps (DUSt3R checkpoints, no
descriptors) use the Euclidean distance through scipy's cKDTree. Nearest-neighbour searches over descriptors are
matrix products in cache-sized tiles (2 MB of similarities at a time on CPU), for any map size; ties go
to the lowest index.

Pixel coordinates are (x, y) = (column, row); flat indices are y * W + x.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..errors import InputError

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor
_BLOCK_ELEMS = 2**19  # similarities per tile on CPU (2 MB in float32: stays in cache)
_Q_TILE = 256  # queries per tile on CPU
_RUNNING_BEST = True  # CPU: running-best search (tests switch it off to compare with the per-tile table)


def _to_tensor(x: ArrayLike, name: str, device: str | torch.device | None) -> torch.Tensor:
    t = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if not t.is_floating_point():
        t = t.float()
    t = t.detach()
    if device is not None:
        t = t.to(device)
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} has non-finite values")
    return t


def _to_numpy_f32(x: ArrayLike, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise InputError(f"{name} has non-finite values")
    return a


def _check_map(t: ArrayLike, name: str) -> tuple[int, int, int]:
    if t.ndim != 3 or t.shape[0] < 1 or t.shape[1] < 1 or t.shape[2] < 1:
        raise InputError(f"{name} must have shape (H, W, D), got {tuple(t.shape)}")
    return int(t.shape[0]), int(t.shape[1]), int(t.shape[2])


def _seeds(h: int, w: int, subsample: int) -> np.ndarray:
    """(S,) int64 flat indices of the seed pixels (s//2 + s*i, s//2 + s*j), sorted."""
    if isinstance(subsample, bool) or not isinstance(subsample, (int, np.integer)) or subsample < 1:
        raise InputError(f"subsample must be a positive integer, got {subsample!r}")
    s = int(subsample)
    ys = np.arange(s // 2, h, s, dtype=np.int64)
    xs = np.arange(s // 2, w, s, dtype=np.int64)
    return (ys[:, None] * w + xs[None, :]).ravel()


def _dot_nn(db: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Nearest neighbour by maximal dot product in `db` (N, D), for (Q, D) queries; ties go to the lowest index.

    Brute force in cache-sized tiles: a (q_tile, d_tile) block of similarities (2 MB in float32 on CPU) stays in
    the cache between the matrix product and the row maxima, ~3.5x faster than large blocks whose similarities
    round-trip through memory (the product has depth D = 24 only, so memory traffic dominates). On CPU each query
    keeps a running best: a tile's row maxima (``amax``, 10x cheaper than ``max`` with indices) are compared with
    it, and the argmax is taken only in the rows the tile improves (a few tiles per query); a strict comparison
    keeps the earlier tile on ties and ``argmax`` returns a row's first maximal index, so ties resolve to the lowest
    index overall, as on other devices, where each tile's row maxima go into a (n_tiles, q_tile) table whose argmax
    over tiles takes the first tile. The tiles
    run in the caller's thread (torch's own threads inside each op): the process-wide thread count is never
    changed here; parallelism across pairs belongs to the caller.
    """
    n = db.shape[0]
    db_t = db.T.contiguous()  # (D, N): column blocks for torch.mm
    on_cpu = db.device.type == "cpu"

    def nn_tiles(q: torch.Tensor, qt: int, d_tile: int) -> torch.Tensor:
        """NN of the (Q, D) queries `q`, processed qt at a time."""
        starts = list(range(0, n, d_tile))
        out = torch.empty(q.shape[0], dtype=torch.int64, device=db.device)
        vals = torch.empty(len(starts), qt, dtype=db.dtype, device=db.device)
        idxs = torch.empty(len(starts), qt, dtype=torch.int64, device=db.device)
        sim = torch.empty(qt, d_tile, dtype=db.dtype, device=db.device)
        offsets = torch.tensor(starts, dtype=torch.int64, device=db.device)
        for q0 in range(0, q.shape[0], qt):
            qb = q[q0 : q0 + qt].contiguous()
            m = qb.shape[0]
            if on_cpu and _RUNNING_BEST:  # a tile's row maxima (fast), its argmax only for the rows it improves
                best = torch.full((m,), -torch.inf, dtype=db.dtype)
                best_idx = torch.zeros(m, dtype=torch.int64)
                for d0 in starts:
                    w = min(d_tile, n - d0)
                    s = sim[:m, :w]
                    torch.mm(qb, db_t[:, d0 : d0 + w], out=s)
                    top = s.amax(dim=1)
                    rows = (top > best).nonzero().squeeze(1)  # strict: an equal later value keeps the lower index
                    if len(rows):
                        best[rows] = top[rows]
                        best_idx[rows] = s[rows].argmax(dim=1) + d0  # first maximal index of the row
                out[q0 : q0 + m] = best_idx
                continue
            for k, d0 in enumerate(starts):
                w = min(d_tile, n - d0)
                s = sim[:m, :w]
                torch.mm(qb, db_t[:, d0 : d0 + w], out=s)
                torch.max(s, dim=1, out=(vals[k, :m], idxs[k, :m]))
            best_tile = vals[:, :m].argmax(dim=0)  # first maximal tile
            out[q0 : q0 + m] = idxs[best_tile, torch.arange(m, device=db.device)] + offsets[best_tile]
        return out

    def query(q: torch.Tensor) -> torch.Tensor:
        n_q = q.shape[0]
        if n_q == 0:
            return torch.empty(0, dtype=torch.int64, device=db.device)
        elems = _BLOCK_ELEMS if on_cpu else _BLOCK_ELEMS * 32
        qt = max(1, min(n_q, _Q_TILE if on_cpu else 4096, elems))
        d_tile = min(n, max(1, elems // qt))
        return nn_tiles(q, qt, d_tile)

    return query


def _l2_nn(db: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Nearest neighbour by Euclidean distance in `db` (N, D) with a k-d tree, for (Q, D) queries."""
    tree = cKDTree(db)

    def query(q: np.ndarray) -> np.ndarray:
        if len(q) == 0:
            return np.zeros(0, dtype=np.int64)
        return tree.query(q, k=1, workers=-1)[1].astype(np.int64)

    return query


def _ping_pong(
    seeds: np.ndarray,
    to_b: Callable[[np.ndarray], np.ndarray],
    to_a: Callable[[np.ndarray], np.ndarray],
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Iterate A -> B -> A from the seeds; return the converged (idx_a, idx_b), int64, unsorted."""
    xy1 = seeds.copy()
    xy2 = np.full_like(seeds, -1)
    old1, old2 = xy1.copy(), xy2.copy()
    active = np.ones(len(seeds), dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        xy2[active] = to_b(xy1[active])
        active &= old2 != xy2
        xy1[active] = to_a(xy2[active])
        active &= old1 != xy1
        old1[:] = xy1
        old2[:] = xy2
    done = ~active
    return xy1[done], xy2[done]


def _unique_sorted(idx1: np.ndarray, idx2: np.ndarray, n2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (idx1, idx2) pairs sorted by (idx1, idx2), with first-occurrence positions."""
    key = idx1.astype(np.int64) * n2 + idx2.astype(np.int64)
    _, first = np.unique(key, return_index=True)
    return idx1[first].astype(np.int64), idx2[first].astype(np.int64), first.astype(np.int64)


def _xy(idx: np.ndarray, w: int) -> np.ndarray:
    """(N,) flat indices -> (N, 2) int64 (x, y)."""
    idx = idx.astype(np.int64)
    return np.stack([idx % w, idx // w], axis=1)


class _CachedNN:
    """Nearest neighbour in the other map of each pixel of a source map, computed lazily and memoised.

    The ping-pong revisits pixels, and the two matching directions of a pair (A->B seeds, B->A seeds) use the same
    two maps, so each pixel's neighbour is searched at most once; only unseen, deduplicated pixels are queried.
    """

    def __init__(self, n_src: int, search: Callable[[np.ndarray], np.ndarray]) -> None:
        self._cache = np.full(n_src, -1, dtype=np.int64)
        self._search = search

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        if idx.size:
            need = np.unique(idx[self._cache[idx] < 0])
            if need.size:
                self._cache[need] = self._search(need)
        return self._cache[idx]


class _PairMatcher:
    """Cached nearest-neighbour maps A->B and B->A between two (H, W, D) maps; `metric` 'dot' or 'l2'."""

    def __init__(
        self, a: ArrayLike, b: ArrayLike, metric: str, device: str | torch.device | None, names: tuple[str, str]
    ) -> None:
        h1, w1, d1 = _check_map(a, names[0])
        h2, w2, d2 = _check_map(b, names[1])
        if d1 != d2:
            raise InputError(f"{names[0]} and {names[1]} have different depths ({d1} vs {d2})")
        self.shape_a, self.shape_b = (h1, w1), (h2, w2)
        if metric == "dot":
            ta = _to_tensor(a, names[0], device).reshape(-1, d1)
            tb = _to_tensor(b, names[1], ta.device).reshape(-1, d2).to(ta.dtype)
            nn_in_b, nn_in_a = _dot_nn(tb), _dot_nn(ta)

            def a_to_b(i: np.ndarray) -> np.ndarray:
                return nn_in_b(ta[torch.from_numpy(i).to(ta.device)]).cpu().numpy()

            def b_to_a(i: np.ndarray) -> np.ndarray:
                return nn_in_a(tb[torch.from_numpy(i).to(tb.device)]).cpu().numpy()
        elif metric == "l2":
            na = _to_numpy_f32(a, names[0]).reshape(-1, d1)
            nb = _to_numpy_f32(b, names[1]).reshape(-1, d2)
            tree_b, tree_a = _l2_nn(nb), _l2_nn(na)

            def a_to_b(i: np.ndarray) -> np.ndarray:
                return tree_b(na[i])

            def b_to_a(i: np.ndarray) -> np.ndarray:
                return tree_a(nb[i])
        else:  # pragma: no cover - internal
            raise ValueError(metric)
        self.a_to_b = _CachedNN(h1 * w1, a_to_b)
        self.b_to_a = _CachedNN(h2 * w2, b_to_a)

    def reciprocal(self, from_a: bool, subsample: int, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
        """Reciprocal pairs seeded in A (from_a) or in B: (idx_seed_side, idx_other_side), unique and sorted."""
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
            raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")
        (h1, w1), (h2, w2) = (self.shape_a, self.shape_b) if from_a else (self.shape_b, self.shape_a)
        fwd, bwd = (self.a_to_b, self.b_to_a) if from_a else (self.b_to_a, self.a_to_b)
        i1, i2 = _ping_pong(_seeds(h1, w1, subsample), fwd, bwd, int(max_iter))
        u1, u2, _ = _unique_sorted(i1, i2, h2 * w2)
        return u1, u2


@torch.no_grad()
def fast_reciprocal_nns(
    desc_a: ArrayLike,
    desc_b: ArrayLike,
    subsample: int = 8,
    ret_xy: bool = False,
    max_iter: int = 10,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal nearest neighbours from A's seed grid, dot-product similarity.

    Args:
        desc_a: (H1, W1, D) descriptors of image A (numpy or torch; computed on `device`, default: its own).
        desc_b: (H2, W2, D) descriptors of image B.
        subsample: seed spacing s; seeds at (s//2 + s*i, s//2 + s*j).
        ret_xy: return (N, 2) int64 (x, y) pixels instead of flat indices.
        max_iter: maximum number of A -> B -> A rounds.

    Returns:
        (idx_a, idx_b): (N,) int64 flat indices, unique pairs sorted by (idx_a, idx_b); or (xy_a, xy_b).
    """
    matcher = _PairMatcher(desc_a, desc_b, "dot", device, ("desc_a", "desc_b"))
    i1, i2 = matcher.reciprocal(True, subsample, max_iter)
    if ret_xy:
        return _xy(i1, matcher.shape_a[1]), _xy(i2, matcher.shape_b[1])
    return i1, i2


def merge_correspondences(
    idx1: np.ndarray, idx2: np.ndarray, shape1: tuple[int, int], shape2: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deduplicate raw matches: (M,) flat indices -> (xy1 (M', 2), xy2 (M', 2), index (M',)), all int64.

    Pairs are unique, sorted by (idx1, idx2); `index` gives the position of each pair's FIRST occurrence in the
    input (used to pick confidences). shape1/shape2 are (H, W).
    """
    idx1 = np.asarray(idx1).ravel()
    idx2 = np.asarray(idx2).ravel()
    if idx1.shape != idx2.shape:
        raise InputError(f"idx1 and idx2 differ in length ({len(idx1)} vs {len(idx2)})")
    (h1, w1), (h2, w2) = (int(shape1[0]), int(shape1[1])), (int(shape2[0]), int(shape2[1]))
    for name, idx, n in (("idx1", idx1, h1 * w1), ("idx2", idx2, h2 * w2)):
        if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= n):
            raise InputError(f"{name} must hold integer flat indices in [0, {n})")
    u1, u2, first = _unique_sorted(idx1.astype(np.int64), idx2.astype(np.int64), h2 * w2)
    return _xy(u1, w1), _xy(u2, w2), first


def _symmetric_matches(
    maps: Sequence[ArrayLike],
    confs: Sequence[ArrayLike],
    subsample: int,
    max_iter: int,
    metric: str,
    device: str | torch.device | None,
    names: tuple[str, str, str, str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(maps) != 4 or len(confs) != 4:
        raise InputError(f"expected 4 maps and 4 confidence maps [11, 21, 22, 12], got {len(maps)} and {len(confs)}")
    m11, m21, m22, m12 = maps
    q11, q21, q22, q12 = (_to_numpy_f32(q, f"confidence {n}") for q, n in zip(confs, names))
    s1, s2 = tuple(m11.shape[:2]), tuple(m22.shape[:2])
    for m, q, s, n in (
        (m11, q11, s1, names[0]),
        (m21, q21, s2, names[1]),
        (m22, q22, s2, names[2]),
        (m12, q12, s1, names[3]),
    ):
        if tuple(m.shape[:2]) != s or q.shape != s:
            raise InputError(f"{n}: map {tuple(m.shape)} / confidence {q.shape} do not match image shape {s}")
    idx1, idx2, c1, c2 = [], [], [], []
    for a, b, qa, qb, na, nb in ((m11, m21, q11, q21, names[0], names[1]), (m12, m22, q12, q22, names[3], names[2])):
        matcher = _PairMatcher(a, b, metric, device, (na, nb))
        a1, b1 = matcher.reciprocal(True, subsample, max_iter)
        b2, a2 = matcher.reciprocal(False, subsample, max_iter)
        ia, ib = np.concatenate([a1, a2]), np.concatenate([b1, b2])
        idx1.append(ia)
        idx2.append(ib)
        c1.append(qa.ravel()[ia])
        c2.append(qb.ravel()[ib])
    xy1, xy2, first = merge_correspondences(np.concatenate(idx1), np.concatenate(idx2), s1, s2)
    conf = np.sqrt(np.concatenate(c1)[first] * np.concatenate(c2)[first]).astype(np.float32)
    return xy1, xy2, conf


@torch.no_grad()
def extract_correspondences(
    descs: Sequence[ArrayLike],
    qonfs: Sequence[ArrayLike],
    subsample: int = 8,
    max_iter: int = 10,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matches of a pair from the descriptors of both decoding passes.

    Args:
        descs: [desc11 (H1,W1,D), desc21 (H2,W2,D), desc22 (H2,W2,D), desc12 (H1,W1,D)].
        qonfs: the matching descriptor confidences, (H1,W1), (H2,W2), (H2,W2), (H1,W1).

    Returns:
        xy1 (M, 2) int64, xy2 (M, 2) int64 pixels (x, y) in images 1 and 2, conf (M,) float32 =
        sqrt(q_1[xy1] * q_2[xy2]) from the pass that found the match first, in the order
        [11->21, 21->11, 12->22, 22->12]; unique, sorted by (idx1, idx2).
    """
    return _symmetric_matches(
        descs, qonfs, subsample, max_iter, "dot", device, ("desc11", "desc21", "desc22", "desc12")
    )


def match_pointmaps_3d(
    pts: Sequence[ArrayLike],
    confs: Sequence[ArrayLike],
    subsample: int = 8,
    max_iter: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matches of a pair from pointmaps, for checkpoints without descriptors (DUSt3R).

    Reciprocal nearest neighbours in 3D (Euclidean, k-d tree): pts11 vs pts21 (both in frame 1) and pts12 vs
    pts22 (both in frame 2), exactly like :func:`extract_correspondences` otherwise.

    Args:
        pts: [pts11 (H1,W1,3), pts21 (H2,W2,3), pts22 (H2,W2,3), pts12 (H1,W1,3)].
        confs: the point confidences [conf11, conf21, conf22, conf12].

    Returns:
        xy1 (M, 2) int64, xy2 (M, 2) int64, conf (M,) float32 = sqrt(conf_1 * conf_2).
    """
    return _symmetric_matches(pts, confs, subsample, max_iter, "l2", None, ("pts11", "pts21", "pts22", "pts12"))


def pair_score(
    conf11: ArrayLike, conf21: ArrayLike, conf22: ArrayLike, conf12: ArrayLike, match_conf: ArrayLike
) -> tuple[float, float, int]:
    """The reference pair score: ((mean C11 * mean C12 * mean C21 * mean C22)^(1/4), sum of match confs, M).

    Computed in float32 as the reference does. Sparse GA's kinematic tree uses the third element.
    """
    c = [
        torch.as_tensor(_to_numpy_f32(x, n))
        for x, n in ((conf11, "conf11"), (conf12, "conf12"), (conf21, "conf21"), (conf22, "conf22"))
    ]
    m = torch.as_tensor(_to_numpy_f32(match_conf, "match_conf")).ravel()
    geo = (c[0].mean() * c[1].mean() * c[2].mean() * c[3].mean()).sqrt().sqrt()
    return float(geo), float(m.sum()), int(m.numel())


__all__ = [
    "fast_reciprocal_nns",
    "merge_correspondences",
    "extract_correspondences",
    "match_pointmaps_3d",
    "pair_score",
]
