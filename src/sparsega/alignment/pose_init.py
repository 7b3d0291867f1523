"""Stage-1 start: pairwise relative poses from each pair's own pointmaps by weighted Procrustes, averaged over
every trusted pair (``pose_init="global"``, the default) or chained along the kinematic tree
(``pose_init="procrustes"``) into absolute poses and sizes. The reference starts from identity
(``pose_init="identity"``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..types import PairPrediction

if TYPE_CHECKING:
    from .inputs import PairView
    from .problem import CanonicalData


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


def pair_similarity(p: PairPrediction, step: int = 4) -> tuple[float, np.ndarray, np.ndarray] | None:
    """Camera j of pair ``p`` in camera i's pair frame: the confidence-weighted Procrustes ``pts21 ~ s R pts22 + t``
    on every ``step``-th pixel, as ``(s, R (3,3), t (3,))`` float64; None when fewer than 3 points are usable."""

    def grid(x: np.ndarray) -> np.ndarray:  # subsampled first, then converted: a view of the map is read only there
        return np.asarray(x)[::step, ::step].astype(np.float64)

    src = grid(p.pts22).reshape(-1, 3)
    dst = grid(p.pts21).reshape(-1, 3)
    w = (grid(p.conf22) * grid(p.conf21)).reshape(-1) - 1 + 1e-6
    ok = np.isfinite(src).all(1) & np.isfinite(dst).all(1) & np.isfinite(w)
    if ok.sum() < 3:
        return None
    return weighted_umeyama(src[ok], dst[ok], w[ok])


def anchor_z(pts: np.ndarray, subsample: int) -> np.ndarray:
    """``(A,)`` float32 depths of a pointmap ``(H, W, 3)`` at the anchors (a copy: the map may be released)."""
    sl = slice(subsample // 2, None, subsample)
    return np.array(np.asarray(pts)[sl, sl, 2].reshape(-1), np.float32)


def depth_ratio(core: np.ndarray, z: np.ndarray) -> float:
    """``sigma``: median ratio of an image's canonical anchor depths ``core (A,)`` to one prediction's ``z (A,)``."""
    return float(np.median(core / np.maximum(z, 1e-12)))


def _relative_pose(
    sim: tuple[float, np.ndarray, np.ndarray] | None, sig_a: float, sig_b: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Camera j of a pair in camera i's frame, in i's canonical units: ``(R, centre, size ratio)``.

    The pair-frame similarity ``sim`` (:func:`pair_similarity`) and the ratios ``sigma`` between canonical and pair
    depths (:func:`depth_ratio`) give the centre ``sigma_i t`` and the size ratio ``sigma_i s / sigma_j``.
    Degenerate input gives the identity.
    """
    if sim is None:
        return np.eye(3), np.zeros(3), 1.0
    s_ab, R_ab, t_ab = sim
    ratio = sig_a * s_ab / sig_b
    if not (np.isfinite(ratio) and ratio > 0 and np.isfinite(t_ab).all()):
        return np.eye(3), np.zeros(3), 1.0
    return R_ab, sig_a * t_ab, ratio


class PairwisePoses:
    """The relative pose :func:`_relative_pose` of ordered image pairs ``(a, b)``, computed once each (the chain
    and the averaging share it; (b, a) uses the pair's other decoding direction).

    ``known`` maps ``(a, b)`` to ``(similarity, sigma_a, sigma_b)`` computed while the pair was loaded anyway
    (``problem.build_problem`` does so for every pair in its own orientation); others are read again from
    ``preds``."""

    def __init__(
        self,
        preds: PairView,
        cdata: list[CanonicalData],
        subsample: int,
        step: int = 4,
        known: dict[tuple[int, int], tuple[tuple[float, np.ndarray, np.ndarray] | None, float, float]] | None = None,
    ) -> None:
        self.preds, self.cdata, self.subsample, self.step = preds, cdata, subsample, step
        self.by_pair = {(m.i, m.j): k for k, m in enumerate(preds.meta) if m.i != m.j}
        self.known = known or {}
        self._memo: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, float]] = {}

    def __call__(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, float]:
        if (a, b) not in self._memo:
            if (a, b) in self.known:
                self._memo[a, b] = _relative_pose(*self.known[a, b])
            else:
                by_pair, preds, s = self.by_pair, self.preds, self.subsample
                p = preds[by_pair[a, b]] if (a, b) in by_pair else preds[by_pair[b, a]].swapped()
                sig_a = depth_ratio(self.cdata[a].core_depth, anchor_z(p.pts11, s))
                sig_b = depth_ratio(self.cdata[b].core_depth, anchor_z(p.pts22, s))
                self._memo[a, b] = _relative_pose(pair_similarity(p, self.step), sig_a, sig_b)
        return self._memo[a, b]


def chain_pairwise_poses(
    preds: PairView,
    n: int,
    root: int,
    edges: np.ndarray,
    cdata: list[CanonicalData],
    subsample: int,
    step: int = 4,
    poses: PairwisePoses | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial absolute poses and sizes by chaining pairwise relative poses (:class:`PairwisePoses`; ``poses``
    when given) along the kinematic tree. A tree edge without a predicted pair (hclust trees link cluster
    representatives) is composed along the shortest path of predicted pairs. Returns ``R (N,3,3)``, centres
    ``C (N,3)`` (root at the origin, root size 1) and ``log_sizes (N,)``.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order

    rel = poses or PairwisePoses(preds, cdata, subsample, step)
    by_pair = rel.by_pair
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


def _project_so3(m: np.ndarray) -> np.ndarray:
    """The rotation nearest to each ``(..., 3, 3)`` matrix (Frobenius), by SVD."""
    U, _, Vt = np.linalg.svd(m)
    D = np.ones(m.shape[:-1])
    D[..., 2] = np.sign(np.linalg.det(U @ Vt))
    return (U * D[..., None, :]) @ Vt


def _laplacian_solve(n: int, root: int, i: np.ndarray, j: np.ndarray, w: np.ndarray, rhs_edge: np.ndarray):
    """Least squares ``min sum_e w_e |x_j - x_i - r_e|^2`` with ``x_root = 0``; ``rhs_edge (E, ...)``."""
    L = np.zeros((n, n))
    np.add.at(L, (i, i), w)
    np.add.at(L, (j, j), w)
    np.add.at(L, (i, j), -w)
    np.add.at(L, (j, i), -w)
    b = np.zeros((n, *rhs_edge.shape[1:]))
    np.add.at(b, j, w.reshape(-1, *[1] * (rhs_edge.ndim - 1)) * rhs_edge)
    np.add.at(b, i, -w.reshape(-1, *[1] * (rhs_edge.ndim - 1)) * rhs_edge)
    keep = np.arange(n) != root
    x = np.zeros_like(b)
    x[keep] = np.linalg.lstsq(L[np.ix_(keep, keep)], b[keep], rcond=None)[0]
    return x


def average_pairwise_poses(
    preds: PairView,
    n: int,
    root: int,
    edges: np.ndarray,
    cdata: list[CanonicalData],
    subsample: int,
    weights: np.ndarray,
    step: int = 4,
    iters: int = 30,
    poses: PairwisePoses | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial poses from ALL weighted pairs instead of a chain (``pose_init="global"``): the pairwise Procrustes
    poses of the pairs with ``weights > 0`` (one per :attr:`PairView.meta` entry, e.g. trusted match counts) are
    averaged: log sizes and centres by weighted linear least squares over the pair graph, rotations by chordal
    averaging (block updates ``R_j = proj(sum w R_i R_ij)`` from the chained start). Drift along a long sequence
    is then spread over every overlapping pair rather than accumulated along the tree. Same outputs as
    :func:`chain_pairwise_poses` (root at the identity, root size 1); ``poses``: as there."""
    rel_pose = poses or PairwisePoses(preds, cdata, subsample, step)
    R0, C0, logs0 = chain_pairwise_poses(preds, n, root, edges, cdata, subsample, step, rel_pose)
    use = [k for k, m in enumerate(preds.meta) if m.i != m.j and weights[k] > 0]
    if not use:
        return R0, C0, logs0
    ei = np.array([preds.meta[k].i for k in use])
    ej = np.array([preds.meta[k].j for k in use])
    w = np.asarray([weights[k] for k in use], np.float64)
    rel = [rel_pose(int(a), int(b)) for a, b in zip(ei, ej)]
    Rij = np.stack([r[0] for r in rel])
    cij = np.stack([r[1] for r in rel])
    lij = np.log(np.array([r[2] for r in rel]))
    logs = _laplacian_solve(n, root, ei, ej, w, lij)
    R = R0.copy()
    for _ in range(iters):
        acc = np.zeros((n, 3, 3))
        np.add.at(acc, ej, w[:, None, None] * (R[ei] @ Rij))  # R_j ~ R_i R_ij
        np.add.at(acc, ei, w[:, None, None] * (R[ej] @ Rij.transpose(0, 2, 1)))  # R_i ~ R_j R_ij^T
        new = _project_so3(acc)
        new[root] = np.eye(3)
        R = new
    # C_j - C_i = s_i R_i c_ij
    rhs = np.exp(logs[ei])[:, None] * np.einsum("eab,eb->ea", R[ei], cij)
    C = _laplacian_solve(n, root, ei, ej, w, rhs)
    return R, C, logs
