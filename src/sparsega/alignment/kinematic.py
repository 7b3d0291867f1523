"""Kinematic trees: which camera each camera's pose is expressed relative to.

Sparse GA parameterises camera ``j`` by its pose relative to its parent ``i`` in a spanning tree of the image
graph; world poses are composed from the root outwards. Two ways to pick the tree, both reproducing the
reference exactly (same scipy calls, hence the same root and edge order):

- ``mst``: maximum spanning tree of the pair scores (scipy's minimum spanning tree of ``-score``);
- ``hclust-<method>``: agglomerative clustering of the images on ``1 - normalised score``; each merge links the
  two clusters' representatives, then the tree is the spanning tree of those links.

The root is the node farthest from every leaf (argmax of ``min(rank1, rank2)`` of breadth-first visiting ranks
from two far ends); edges are listed in breadth-first order from the root, so parents come before children.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.cluster import hierarchy
from scipy.sparse import csgraph
from scipy.spatial.distance import squareform

from ..errors import ConfigError, GraphError, InputError

__all__ = [
    "HCLUST_METHODS",
    "KinematicTree",
    "HclustSteps",
    "connected_components",
    "minimum_spanning_tree",
    "hclust_tree",
    "build_tree",
]

logger = logging.getLogger(__name__)

HCLUST_METHODS = ("ward", "single", "complete", "average", "weighted", "centroid", "median")


@dataclass(frozen=True, eq=False)
class KinematicTree:
    """A rooted spanning tree over images ``0 .. N-1``.

    Attributes:
        root: index of the root image (its pose is the free one).
        edges: ``(N-1, 2)`` int64 ``(parent, child)`` rows, every parent listed as a child (or the root) before
            it appears as a parent (breadth-first order for trees built here). Read-only.
    """

    root: int
    edges: np.ndarray

    def __post_init__(self) -> None:
        raw = np.asarray(self.edges)
        if raw.size == 0:
            edges = np.zeros((0, 2), np.int64)
        elif raw.ndim == 2 and raw.shape[1] == 2 and np.issubdtype(raw.dtype, np.integer):
            edges = raw.astype(np.int64)  # always a private copy
        else:
            raise InputError(f"KinematicTree: edges must be an (N-1, 2) integer array, got {raw.dtype} {raw.shape}")
        n = len(edges) + 1
        root = int(self.root)
        if not 0 <= root < n:
            raise InputError(f"KinematicTree: root {root} is not a node of a {n}-node tree")
        order = np.concatenate(([root], edges[:, 1]))
        if not np.array_equal(np.sort(order), np.arange(n)):
            raise InputError("KinematicTree: every node but the root must be the child of exactly one edge")
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        if len(edges) and not np.all(position[edges[:, 0]] < position[edges[:, 1]]):
            raise InputError("KinematicTree: edges must list a parent before its children")
        edges.setflags(write=False)
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "edges", edges)

    @property
    def n_nodes(self) -> int:
        """Number of images N."""
        return len(self.edges) + 1

    def order(self) -> np.ndarray:
        """``(N,)`` int64 nodes in composition order: the root, then the children in edge order."""
        return np.concatenate(([self.root], self.edges[:, 1])).astype(np.int64)

    def parents(self) -> np.ndarray:
        """``(N,)`` int64 parent of each node, -1 for the root."""
        parents = np.full(self.n_nodes, -1, dtype=np.int64)
        parents[self.edges[:, 1]] = self.edges[:, 0]
        return parents

    def depths(self) -> np.ndarray:
        """``(N,)`` int64 number of edges between each node and the root."""
        depths = np.zeros(self.n_nodes, dtype=np.int64)
        for parent, child in self.edges:  # parents come first: one pass suffices (N is the number of images)
            depths[child] = depths[parent] + 1
        return depths

    def levels(self) -> list[np.ndarray]:
        """Nodes grouped by depth, ``[array([root]), children of root, ...]``, each in composition order.

        Poses can be composed one level at a time: every node of level ``d`` only needs level ``d - 1``.
        """
        order = self.order()
        depth_in_order = self.depths()[order]
        return [order[depth_in_order == d] for d in range(int(depth_in_order.max()) + 1)]

    def edge_list(self) -> list[tuple[int, int]]:
        """Edges as a list of ``(parent, child)`` Python ints."""
        return [(int(p), int(c)) for p, c in self.edges]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KinematicTree):
            return NotImplemented
        return self.root == other.root and np.array_equal(self.edges, other.edges)

    def __hash__(self) -> int:
        return hash((self.root, self.edges.tobytes()))

    def __repr__(self) -> str:
        return f"KinematicTree(root={self.root}, edges={self.edge_list()})"


@dataclass(frozen=True, eq=False)
class HclustSteps:
    """Intermediates of :func:`hclust_tree`, for inspection and tests.

    Attributes:
        pws: ``(N, N)`` float32 normalised scores, ``score / (3 min(n_patches_i, n_patches_j))`` clipped at 1,
            diagonal 1.
        distance_matrix: ``(N, N)`` float32 ``1 - pws``, or 2 where ``pws == 0``.
        linkage: ``(N-1, 4)`` float64 scipy linkage matrix.
        adjacency: ``(N, N)`` float64 identity plus the merge links (symmetric 0/1).
    """

    pws: np.ndarray
    distance_matrix: np.ndarray
    linkage: np.ndarray
    adjacency: np.ndarray


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """Validate a symmetric, finite, non-negative ``(N, N)`` score matrix; returned as a float numpy array."""
    s = _to_numpy(scores)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty square (N, N) matrix, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise InputError(f"{name} must be a real numeric matrix, got {s.dtype}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise InputError(f"{name} contains non-finite values")
    if np.any(s < 0):
        raise InputError(f"{name} must be >= 0")
    if not np.array_equal(s, s.T):
        raise InputError(f"{name} must be symmetric")
    return s


def connected_components(scores: Any) -> list[np.ndarray]:
    """Groups of images linked by positive scores, largest first (ties: smallest first index first).

    Args:
        scores: ``(N, N)`` symmetric non-negative pair scores (0 = no edge; the diagonal is ignored).

    Returns:
        list of sorted int64 index arrays covering ``0 .. N-1``.
    """
    s = _check_scores(scores)
    linked = s > 0
    np.fill_diagonal(linked, False)
    n_comp, labels = csgraph.connected_components(sparse.csr_array(linked), directed=False)
    groups = [np.flatnonzero(labels == k).astype(np.int64) for k in range(n_comp)]
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return groups


def _require_connected(scores: np.ndarray) -> None:
    groups = connected_components(scores)
    if len(groups) > 1:
        listed = ", ".join(str(g.tolist()) for g in groups)
        raise GraphError(
            f"the image graph is disconnected: {len(groups)} groups of images share no match: {listed} "
            "(align(..., components=True) reconstructs each group; the CLI does so by default)"
        )


def _bfs_ranks(tree: sparse.csr_array, start: int) -> np.ndarray:
    """Position of each node in the breadth-first visiting order from ``start``."""
    order = csgraph.breadth_first_order(tree, start, directed=False, return_predecessors=False)
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    return ranks


def _spanning_tree(weights: np.ndarray) -> KinematicTree:
    """Reference spanning tree of a connected graph given by its non-zero scores (the diagonal included).

    scipy's minimum spanning tree of ``-weights``, built from the non-zeros in row-major order (ties are broken
    by scipy's stable edge sort, hence this exact construction), rooted as described in the module docstring.
    """
    n = weights.shape[0]
    if n == 1:
        return KinematicTree(0, np.zeros((0, 2), np.int64))
    rows, cols = np.nonzero(weights)
    graph = sparse.csr_array((-weights[rows, cols].astype(np.float64), (rows, cols)), shape=(n, n))
    msp = csgraph.minimum_spanning_tree(graph)

    ranks1 = _bfs_ranks(msp, 0)
    ranks2 = _bfs_ranks(msp, int(ranks1.argmax()))
    ranks1 = _bfs_ranks(msp, int(ranks2.argmax()))
    root = int(np.minimum(ranks1, ranks2).argmax())

    order, predecessors = csgraph.breadth_first_order(msp, root, directed=False)
    if len(order) != n:  # cannot happen for a connected graph
        raise GraphError(f"spanning tree reaches {len(order)} of {n} images")
    children = order[1:]
    edges = np.stack((predecessors[children], children), axis=1).astype(np.int64)
    return KinematicTree(root, edges)


def minimum_spanning_tree(scores: Any) -> KinematicTree:
    """Maximum-score spanning tree of the image graph (reference ``mst`` kinematic mode).

    Args:
        scores: ``(N, N)`` symmetric non-negative pair scores, 0 = no edge.

    Raises:
        GraphError: the positive scores do not connect all images (message lists the groups).
    """
    s = _check_scores(scores)
    _require_connected(s)
    tree = _spanning_tree(s)
    logger.debug("mst kinematic tree: %r", tree)
    return tree


def _check_hclust_inputs(
    pairwise_scores: Any, imsizes_wh: Any, subsample: int, method: str
) -> tuple[np.ndarray, np.ndarray]:
    if method not in HCLUST_METHODS:
        raise ConfigError(f"unknown hclust method {method!r} (expected one of {', '.join(HCLUST_METHODS)})")
    if isinstance(subsample, bool) or not isinstance(subsample, (int, np.integer)) or subsample < 1:
        raise ConfigError(f"subsample must be a positive integer, got {subsample!r}")
    s = _check_scores(pairwise_scores, "pairwise_scores")
    sizes = _to_numpy(imsizes_wh)
    if sizes.shape != (s.shape[0], 2) or not np.issubdtype(sizes.dtype, np.number):
        raise InputError(f"imsizes_wh must be ({s.shape[0]}, 2) (W, H), got shape {sizes.shape}")
    if not np.all(np.isfinite(sizes)) or np.any(sizes != np.round(sizes)):
        raise InputError("imsizes_wh must hold integer (W, H) sizes")
    sizes = sizes.astype(np.int64)
    if np.any(sizes < subsample):
        raise InputError(f"imsizes_wh: every image must be at least subsample={subsample} pixels wide and high")
    return s, sizes


def _hclust_steps(pairwise_scores: Any, imsizes_wh: Any, subsample: int = 8, method: str = "ward") -> HclustSteps:
    """The reference hclust computation up to the tree adjacency (N >= 2)."""
    s, sizes = _check_hclust_inputs(pairwise_scores, imsizes_wh, subsample, method)
    n = s.shape[0]
    n_patches = (sizes // int(subsample)).prod(axis=1)
    max_corres = (3 * np.minimum(n_patches[:, None], n_patches[None, :])).astype(np.float32)
    pws = np.minimum(s.astype(np.float32) / max_corres, np.float32(1)).astype(np.float32)
    np.fill_diagonal(pws, 1)
    distance_matrix = np.where(pws != 0, 1 - pws, np.float32(2)).astype(np.float32)
    linkage = hierarchy.linkage(squareform(distance_matrix, checks=False), method=method)

    adjacency = np.eye(n)
    rows = pws.copy()  # representative rows are updated in place, as in the reference
    representative = np.arange(2 * n - 1)
    for k, (a, b) in enumerate(linkage[:, :2].astype(np.int64)):
        a, b = representative[a], representative[b]
        adjacency[a, b] = adjacency[b, a] = 1
        best = a if rows[a].sum() > rows[b].sum() else b
        representative[n + k] = best
        rows[best] = np.maximum(rows[a], rows[b])
    return HclustSteps(pws=pws, distance_matrix=distance_matrix, linkage=linkage, adjacency=adjacency)


def hclust_tree(pairwise_scores: Any, imsizes_wh: Any, subsample: int = 8, method: str = "ward") -> KinematicTree:
    """Kinematic tree from hierarchical clustering of the images (reference ``hclust-<method>`` modes).

    Args:
        pairwise_scores: ``(N, N)`` symmetric match counts (0 = no edge).
        imsizes_wh: ``(N, 2)`` image sizes ``(W, H)`` in pixels.
        subsample: anchor spacing; ``(W // s) (H // s)`` patches bound the possible number of matches.
        method: scipy linkage method, one of :data:`HCLUST_METHODS`.

    Raises:
        GraphError: the positive scores do not connect all images (message lists the groups).
    """
    s, _ = _check_hclust_inputs(pairwise_scores, imsizes_wh, subsample, method)
    _require_connected(s)
    if s.shape[0] == 1:
        return KinematicTree(0, np.zeros((0, 2), np.int64))
    steps = _hclust_steps(s, imsizes_wh, subsample, method)
    tree = _spanning_tree(steps.adjacency)
    logger.debug("hclust-%s kinematic tree: %r", method, tree)
    return tree


def build_tree(mode: str, scores: Any, imsizes_wh: Any = None, subsample: int = 8) -> KinematicTree:
    """Kinematic tree for an ``AlignConfig.kinematic_mode``: ``"mst"`` or ``"hclust-<method>"``.

    ``imsizes_wh`` ``(N, 2)`` (W, H) is required by the hclust modes only.
    """
    if mode == "mst":
        return minimum_spanning_tree(scores)
    if isinstance(mode, str) and mode.startswith("hclust-"):
        method = mode[len("hclust-") :]
        if method in HCLUST_METHODS:
            if imsizes_wh is None:
                raise InputError(f"kinematic mode {mode!r} needs the image sizes (imsizes_wh)")
            return hclust_tree(scores, imsizes_wh, subsample, method)
    modes = ["mst"] + [f"hclust-{m}" for m in HCLUST_METHODS]
    raise ConfigError(f"unknown kinematic mode {mode!r} (expected one of {', '.join(modes)})")
