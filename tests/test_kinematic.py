"""Kinematic trees against the reference goldens (blocks/graph.npz) and structural properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsega import ConfigError, GraphError, InputError
from sparsega.alignment.kinematic import (
    HCLUST_METHODS,
    KinematicTree,
    _hclust_steps,
    build_tree,
    connected_components,
    hclust_tree,
    minimum_spanning_tree,
)

from conftest import load_golden

G = load_golden("blocks/graph.npz")
CASES = list(range(int(G["n_cases"])))
S = int(G["subsample"])


def _edge_set(edges: np.ndarray) -> set[frozenset[int]]:
    return {frozenset((int(a), int(b))) for a, b in edges}


def _assert_valid_bfs_tree(tree: KinematicTree, n: int) -> None:
    """N-1 edges reaching every node, parents before children, breadth-first (depth never decreases)."""
    assert tree.n_nodes == n and tree.edges.shape == (n - 1, 2) and tree.edges.dtype == np.int64
    order = tree.order()
    assert sorted(order.tolist()) == list(range(n))
    parents = tree.parents()
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    assert parents[tree.root] == -1
    children = order[1:]
    assert np.all(position[parents[children]] < position[children])
    assert np.all(np.diff(tree.depths()[order]) >= 0)


@pytest.mark.parametrize("case", CASES)
def test_mst_matches_golden(case):
    scores = G[f"mst{case}_scores"]
    tree = minimum_spanning_tree(scores)
    assert tree.root == int(G[f"mst{case}_root"])
    np.testing.assert_array_equal(tree.edges, G[f"mst{case}_edges"])
    # same edges as scipy's spanning tree of -score
    msp = G[f"mst{case}_scipy_msp_dense"]
    assert _edge_set(tree.edges) == _edge_set(np.argwhere(msp != 0))
    _assert_valid_bfs_tree(tree, len(scores))
    # accepted as a torch tensor too, and dispatched by build_tree
    assert minimum_spanning_tree(torch.from_numpy(scores)) == tree
    assert build_tree("mst", scores) == tree


@pytest.mark.parametrize("case", CASES)
def test_hclust_ward_matches_golden(case):
    scores, sizes = G[f"hclust{case}_pairwise_scores"], G[f"hclust{case}_imsizes_wh"]
    steps = _hclust_steps(scores, sizes, S, "ward")
    assert steps.pws.dtype == steps.distance_matrix.dtype == np.float32
    np.testing.assert_allclose(steps.pws, G[f"hclust{case}_pws"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(steps.distance_matrix, G[f"hclust{case}_distance_matrix"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(steps.linkage, G[f"hclust{case}_linkage_Z"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(steps.adjacency, G[f"hclust{case}_tree_adjacency"])
    tree = hclust_tree(scores, sizes, S, "ward")
    assert tree.root == int(G[f"hclust{case}_root"])
    np.testing.assert_array_equal(tree.edges, G[f"hclust{case}_edges"])
    assert build_tree("hclust-ward", scores, sizes, S) == tree
    # the tree is made of the merge links
    links = steps.adjacency - np.eye(len(scores))
    assert _edge_set(tree.edges) == _edge_set(np.argwhere(np.triu(links)))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", HCLUST_METHODS)
def test_every_hclust_method_gives_a_spanning_tree(case, method):
    scores, sizes = G[f"hclust{case}_pairwise_scores"], G[f"hclust{case}_imsizes_wh"]
    tree = build_tree(f"hclust-{method}", scores, sizes, S)
    _assert_valid_bfs_tree(tree, len(scores))
    steps = _hclust_steps(scores, sizes, S, method)
    assert steps.linkage.shape == (len(scores) - 1, 4)
    assert _edge_set(tree.edges) <= _edge_set(np.argwhere(np.triu(steps.adjacency, 1)))


def test_mst_maximises_total_score_and_is_label_invariant():
    rng = np.random.default_rng(0)
    n = 9
    scores = np.triu(rng.uniform(1, 100, (n, n)) * (rng.uniform(size=(n, n)) < 0.6), 1)
    scores[np.arange(n - 1), np.arange(1, n)] += 1  # a path keeps it connected
    scores = scores + scores.T
    tree = minimum_spanning_tree(scores)
    _assert_valid_bfs_tree(tree, n)
    total = scores[tree.edges[:, 0], tree.edges[:, 1]].sum()
    # Prim's algorithm on the maximum: same total (weights are distinct, so the tree is unique)
    in_tree, best_total = {0}, 0.0
    while len(in_tree) < n:
        cand = [(scores[i, j], j) for i in in_tree for j in range(n) if j not in in_tree and scores[i, j] > 0]
        w, j = max(cand)
        best_total += w
        in_tree.add(j)
    assert total == pytest.approx(best_total)
    # relabelling the images relabels the tree edges; scaling the scores changes nothing
    perm = rng.permutation(n)
    permuted = minimum_spanning_tree(scores[np.ix_(perm, perm)])
    assert _edge_set(perm[permuted.edges]) == _edge_set(tree.edges)
    assert minimum_spanning_tree(3.5 * scores) == tree


def test_disconnected_graph_raises_and_lists_components():
    scores = np.zeros((6, 6), np.float32)
    for i, j, w in [(0, 2, 5.0), (2, 4, 3.0), (1, 3, 7.0)]:
        scores[i, j] = scores[j, i] = w
    groups = connected_components(scores)
    assert [g.tolist() for g in groups] == [[0, 2, 4], [1, 3], [5]]
    sizes = np.full((6, 2), 64)
    for make in (
        lambda: minimum_spanning_tree(scores),
        lambda: hclust_tree(scores, sizes, S),
        lambda: build_tree("hclust-single", scores, sizes, S),
    ):
        with pytest.raises(GraphError, match=r"\[0, 2, 4\], \[1, 3\], \[5\]"):
            make()
    # a self-score does not connect an image
    scores[5, 5] = 10
    with pytest.raises(GraphError):
        minimum_spanning_tree(scores)


def test_single_image_and_two_images():
    for tree in (minimum_spanning_tree(np.zeros((1, 1))), hclust_tree(np.zeros((1, 1)), [[64, 48]], S)):
        assert tree.root == 0 and tree.edges.shape == (0, 2)
        assert tree.order().tolist() == [0] and tree.parents().tolist() == [-1]
        assert [lvl.tolist() for lvl in tree.levels()] == [[0]]
    two = np.array([[0, 12.0], [12.0, 0]])
    for tree in (minimum_spanning_tree(two), hclust_tree(two, [[64, 48], [64, 48]], S)):
        _assert_valid_bfs_tree(tree, 2)


def test_tree_helpers():
    tree = KinematicTree(2, np.array([[2, 0], [2, 3], [0, 1], [3, 4], [1, 5]]))
    assert tree.parents().tolist() == [2, 0, -1, 2, 3, 1]
    assert tree.depths().tolist() == [1, 2, 0, 1, 2, 3]
    assert tree.order().tolist() == [2, 0, 3, 1, 4, 5]
    assert [lvl.tolist() for lvl in tree.levels()] == [[2], [0, 3], [1, 4], [5]]
    assert tree.edge_list() == [(2, 0), (2, 3), (0, 1), (3, 4), (1, 5)]
    with pytest.raises(ValueError):
        tree.edges[0, 0] = 1  # read-only
    assert tree == KinematicTree(2, [[2, 0], [2, 3], [0, 1], [3, 4], [1, 5]])
    assert hash(tree) == hash(KinematicTree(2, tree.edges.copy()))


@pytest.mark.parametrize(
    "root,edges,word",
    [
        (5, [[0, 1]], "root"),
        (0, [[0, 1], [0, 1]], "exactly one"),
        (0, [[1, 2], [0, 1]], "parent before"),
        (0, [[0, 0]], "exactly one"),
        (0, [[0, 1, 2]], "integer array"),
        (0, [[0.0, 1.0]], "integer array"),
    ],
)
def test_bad_trees_are_refused(root, edges, word):
    with pytest.raises(InputError, match=word):
        KinematicTree(root, np.array(edges))


def test_bad_inputs():
    scores = G["hclust0_pairwise_scores"]
    sizes = G["hclust0_imsizes_wh"]
    with pytest.raises(ConfigError, match="hclust-foo"):
        build_tree("hclust-foo", scores, sizes)
    with pytest.raises(ConfigError, match="spanning"):
        build_tree("spanning", scores, sizes)
    with pytest.raises(InputError, match="imsizes_wh"):
        build_tree("hclust-ward", scores)
    with pytest.raises(InputError, match="imsizes_wh"):
        hclust_tree(scores, sizes[:3])
    with pytest.raises(InputError, match="symmetric"):
        minimum_spanning_tree(np.triu(scores))
    with pytest.raises(InputError, match=">= 0"):
        minimum_spanning_tree(-scores)
    with pytest.raises(InputError, match="non-finite"):
        bad = scores.copy()
        bad[0, 1] = bad[1, 0] = np.nan
        minimum_spanning_tree(bad)
    with pytest.raises(InputError, match="square"):
        minimum_spanning_tree(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="method"):
        hclust_tree(scores, sizes, S, "kmeans")
