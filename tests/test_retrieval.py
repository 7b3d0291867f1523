"""Retrieval scene graphs (sparsega.frontend.retrieval and the ``retrieval-*`` / ``A+B`` names of
sparsega.frontend.pairs): golden-free properties (degree, symmetry, connectivity, anchors, determinism), clear
errors, and the two similarities' mechanics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from sparsega import ConfigError, sim
from sparsega.frontend.pairs import make_pairs, needs_similarity, parse_scene_graph, unique_pairs
from sparsega.frontend.retrieval import encoder_similarity, retrieval_pairs, sift_similarity

from conftest import GOLDEN


def _similarity(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def _edges(pairs) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in np.asarray(pairs).tolist()}


@pytest.mark.parametrize("n,k", [(2, 1), (7, 2), (30, 5)])
def test_each_image_gets_its_k_most_similar(n, k):
    S = _similarity(n, seed=n)
    edges = _edges(retrieval_pairs(S, k))
    for i in range(n):
        others = np.argsort(-(S[i] - 3 * np.eye(n)[i]), kind="stable")[: min(k, n - 1)]
        assert all((min(i, int(j)), max(i, int(j))) in edges for j in others)
    assert all(a < b for a, b in edges)
    graph = csr_matrix((np.ones(len(edges)), tuple(np.array(sorted(edges)).T)), shape=(n, n))
    assert connected_components(graph, directed=False)[0] == 1  # the spanning tree keeps it connected


def test_two_groups_are_joined_by_the_spanning_tree():
    S = np.full((6, 6), -0.5)
    S[:3, :3] = S[3:, 3:] = 0.9
    np.fill_diagonal(S, 1.0)
    edges = _edges(retrieval_pairs(S, 1))
    assert any(a < 3 <= b for a, b in edges)


def test_anchors_are_fully_connected_and_deterministic():
    S = _similarity(20, seed=1)
    pairs = make_pairs(20, "retrieval-4-2", similarity=S, symmetrize=False)
    again = make_pairs(20, "retrieval-4-2", similarity=S, symmetrize=False)
    np.testing.assert_array_equal(pairs, again)
    plain = _edges(make_pairs(20, "retrieval-2", similarity=S, symmetrize=False))
    extra = _edges(pairs) - plain
    nodes = sorted({v for e in extra for v in e})
    assert 1 <= len(nodes) <= 4 and len(_edges(pairs)) >= len(plain)
    full = make_pairs(20, "retrieval-4-2", similarity=S)
    assert len(full) == 2 * len(pairs) and (full[len(pairs) :] == pairs[:, ::-1]).all()


def test_union_with_a_window():
    S = _similarity(12, seed=2)
    union = _edges(make_pairs(12, "swin-3+retrieval-2", similarity=S))
    assert _edges(make_pairs(12, "swin-3")) <= union and _edges(make_pairs(12, "retrieval-2", similarity=S)) <= union
    assert len(unique_pairs(make_pairs(12, "swin-3+retrieval-2", similarity=S))) == len(union)  # no duplicates


def test_names_and_errors():
    assert needs_similarity("swin-3+retrieval-5") and not needs_similarity("swin-3+logwin-2")
    g = parse_scene_graph("retrieval-10-5")[0]
    assert (g.kind, g.k, g.anchors) == ("retrieval", 5, 10)
    for bad in ("retrieval", "retrieval-0", "retrieval-a-2", "retrieval-1-2-3", "swin-3+", "swin-3+nope"):
        with pytest.raises(ConfigError):
            parse_scene_graph(bad)
    with pytest.raises(ConfigError, match="needs an image similarity"):
        make_pairs(5, "retrieval-2")


def test_sift_similarity_mechanics():
    gt = sim.make_scene("orbit", n_views=4, height=96, width=128, seed=0)
    S = sift_similarity(gt.images, vocabulary=32)
    assert S.shape == (4, 4) and np.allclose(S, S.T) and np.allclose(np.diag(S), 1) and np.isfinite(S).all()
    np.testing.assert_array_equal(S, sift_similarity(gt.images, vocabulary=32))  # deterministic
    flat = [np.full((96, 128, 3), 128, np.uint8)] * 3  # no features at all: a warning, equal similarities
    assert np.allclose(sift_similarity(flat), 1.0)


def test_encoder_similarity_mechanics():
    from sparsega.frontend.images import load_images
    from sparsega.frontend.model import load_checkpoint

    gt = sim.make_scene("orbit", n_views=3, height=96, width=128, seed=0)
    from PIL import Image

    net = load_checkpoint(GOLDEN / "model_tiny_a.pth")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        paths = []
        for k, im in enumerate(gt.images):
            Image.fromarray(im).save(Path(d) / f"{k}.png")
            paths.append(str(Path(d) / f"{k}.png"))
        images = load_images(paths, size=64)
    S = encoder_similarity(net, images)
    assert S.shape == (3, 3) and np.allclose(S, S.T) and np.allclose(np.diag(S), 1)


def test_sift_retrieval_finds_covisible_pairs_in_a_shuffled_collection():
    """8 orbit views in a shuffled order: a window over the file order pairs unrelated views, while the SIFT
    retrieval pairs views that truly overlap (ground-truth co-visibility from the exact depth maps)."""
    n = 10
    gt = sim.make_scene("orbit", n_views=n, height=192, width=256, seed=3)
    perm = np.random.default_rng(0).permutation(n)
    images = [gt.images[k] for k in perm]

    def overlap(a: int, b: int) -> float:  # share of view a's grid points seen by view b at the right depth
        P = gt.points(a)[4::8, 4::8].reshape(-1, 3)
        uv, z = gt.project(b, P)
        h, w = gt.depthmaps[b].shape
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        u = np.clip(np.round(uv[:, 0]).astype(int), 0, w - 1)
        v = np.clip(np.round(uv[:, 1]).astype(int), 0, h - 1)
        return float((ok & (np.abs(gt.depthmaps[b][v, u] - z) < 0.02 * z)).mean())

    def precision(pairs) -> float:
        good = [min(overlap(perm[a], perm[b]), overlap(perm[b], perm[a])) > 0.3 for a, b in _edges(pairs)]
        return float(np.mean(good))

    retrieved = make_pairs(n, "retrieval-2", similarity=sift_similarity(images), symmetrize=False)
    window = make_pairs(n, "swin-2-noncyclic", symmetrize=False)
    assert precision(retrieved) >= 0.8 > precision(window) + 0.2, (precision(retrieved), precision(window))
