"""Image retrieval for scene graphs: an (N, N) image similarity, and the pairs it selects.

Two similarities, neither needing extra weights:

- ``"sift"``: classical local features (pycolmap's SIFT). A visual vocabulary learnt on the collection itself
  (k-means, scipy) gives TF-IDF bag-of-words histograms whose cosine shortlists candidates; each candidate pair is
  then scored by its share of verified matches (mutual nearest neighbours passing Lowe's ratio test). Works with
  any checkpoint.
- ``"encoder"``: the MASt3R encoder's own tokens (computed once per image), mean-pooled after L2 normalisation and
  compared by cosine; meaningful with trained weights only.

Pair selection (:func:`retrieval_pairs`): ``retrieval-k`` pairs each image with its k most similar others;
``retrieval-Na-k`` also connects Na anchor images completely (farthest-point sampling on 1 - similarity, from the
most central image). The edges of a maximum-similarity spanning tree are added, so the pair graph is connected.
Everything is deterministic (ties go to the lower index).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError

log = logging.getLogger(__name__)

SIMILARITIES = ("sift", "encoder")


def _cosine(x: np.ndarray) -> np.ndarray:
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    s = x @ x.T
    np.fill_diagonal(s, 1.0)
    return s


def _verified_score(a: np.ndarray, b: np.ndarray, ratio: float = 0.8) -> float:
    """Share of mutual nearest-neighbour SIFT matches passing Lowe's ratio test (unit descriptors ``a``, ``b``)."""
    if len(a) < 2 or len(b) < 2:
        return 0.0
    sim = a @ b.T
    top2 = np.argpartition(-sim, 1, axis=1)[:, :2]
    s2 = np.take_along_axis(sim, top2, 1)
    order = np.argsort(-s2, axis=1)
    best = np.take_along_axis(top2, order[:, :1], 1)[:, 0]
    s_best, s_second = np.take_along_axis(s2, order, 1).T
    d_best, d_second = np.sqrt(np.maximum(2 - 2 * s_best, 0)), np.sqrt(np.maximum(2 - 2 * s_second, 0))
    mutual = np.argmax(sim, axis=0)[best] == np.arange(len(a))
    return float(((d_best < ratio * d_second) & mutual).sum() / min(len(a), len(b)))


def sift_similarity(images: Sequence[np.ndarray], vocabulary: int = 256, max_features: int = 1024,
                    seed: int = 0, shortlist: int = 30) -> np.ndarray:  # fmt: skip
    """(N, N) float64 similarity of (H, W, 3) uint8 images (module docstring): a bag-of-words shortlist of
    ``shortlist`` candidates per image, each candidate pair scored by its share of verified SIFT matches (mutual
    nearest neighbours passing the ratio test); pairs outside every shortlist score below all candidates."""
    import pycolmap
    from scipy.cluster.vq import kmeans2, vq

    opts = pycolmap.FeatureExtractionOptions()
    opts.sift.max_num_features = int(max_features)
    opts.sift.first_octave = 0  # no 2x upsampling: ~4x faster, enough features at the network's image size
    opts.num_threads = 1  # deterministic, and the caller's threads stay free
    opts.use_gpu = False
    extractor = pycolmap.FeatureExtractor.create(opts)
    descs = []
    for k, im in enumerate(images):
        arr = np.asarray(im)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise InputError(f"image {k}: expected (H, W, 3) colours, got shape {arr.shape}")
        gray = np.round(arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
        _, d = extractor.extract_from_uint8_array(np.ascontiguousarray(gray))
        descs.append(np.asarray(d.data, np.float32).reshape(-1, 128))
    n = len(descs)
    allx = np.concatenate([d for d in descs if len(d)]) if any(len(d) for d in descs) else np.zeros((0, 128))
    if len(allx) < 2:
        log.warning("retrieval: too few SIFT features (%d); all images equally similar", len(allx))
        return np.ones((n, n))
    rng = np.random.default_rng(seed)
    train = allx[rng.permutation(len(allx))[: 50 * vocabulary]]
    words = max(2, min(vocabulary, len(train) // 4))
    centres, _ = kmeans2(train.astype(np.float64), words, minit="++", seed=seed)
    hist = np.zeros((n, words))
    for k, d in enumerate(descs):
        if len(d):
            np.add.at(hist[k], vq(d.astype(np.float64), centres)[0], 1.0)
    df = (hist > 0).sum(0)
    idf = np.log((n + 1) / (df + 1))
    bow = _cosine(np.sqrt(hist) * idf)
    unit = [d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6) for d in descs]
    out = bow - 2.0  # non-candidates: below every verified score, in bag-of-words order
    np.fill_diagonal(out, 1.0)
    masked = bow - 3 * np.eye(n)
    cand = np.argsort(-masked, axis=1, kind="stable")[:, : min(shortlist, n - 1)]
    for i in range(n):
        for j in cand[i]:
            a, b = (i, int(j)) if i < j else (int(j), i)
            if out[a, b] < -0.5:
                out[a, b] = out[b, a] = _verified_score(unit[a], unit[b])
    return out


def encoder_similarity(net: Any, images: Sequence[Any]) -> np.ndarray:
    """(N, N) float64 similarity from the network's encoder tokens of each :class:`~.images.LoadedImage`."""
    import torch

    feats = []
    with torch.inference_mode():
        for im in images:
            tok, _ = net.encode(im.tensor(net.device))
            tok = torch.nn.functional.normalize(tok[0].float(), dim=-1).mean(0)
            feats.append(tok.cpu().double().numpy())
    return _cosine(np.stack(feats))


def _spanning_tree(sim: np.ndarray) -> list[tuple[int, int]]:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    n = len(sim)
    cost = (2.0 - sim) * (1 - np.eye(n))  # > 0 off the diagonal: maximum similarity = minimum cost
    tree = minimum_spanning_tree(csr_matrix(np.triu(cost, 1))).tocoo()
    return [(min(int(a), int(b)), max(int(a), int(b))) for a, b in zip(tree.row, tree.col)]


def _farthest_points(sim: np.ndarray, count: int) -> list[int]:
    dist = 1.0 - sim
    chosen = [int(np.argmax(sim.sum(1)))]  # the most central image first
    best = dist[chosen[0]].copy()
    while len(chosen) < count:
        nxt = int(np.argmax(best))
        chosen.append(nxt)
        best = np.minimum(best, dist[nxt])
    return chosen


def retrieval_pairs(similarity: np.ndarray, k: int, n_anchors: int = 0) -> list[tuple[int, int]]:
    """Unordered pairs (i < j), sorted: each image's ``k`` most similar others, a complete graph over
    ``n_anchors`` anchors, and a maximum-similarity spanning tree (module docstring)."""
    sim = np.asarray(similarity, np.float64)
    n = len(sim)
    if sim.shape != (n, n) or not np.isfinite(sim).all():
        raise InputError(f"similarity must be a finite (N, N) matrix, got shape {sim.shape}")
    if k < 1:
        raise ConfigError(f"retrieval: k={k} must be >= 1")
    found: set[tuple[int, int]] = set()
    masked = sim.copy()
    np.fill_diagonal(masked, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")  # ties: lower index first
    for i in range(n):
        for j in order[i, : min(k, n - 1)]:
            found.add((min(i, int(j)), max(i, int(j))))
    anchors = _farthest_points(sim, min(n_anchors, n)) if n_anchors else []
    found.update((min(a, b), max(a, b)) for a in anchors for b in anchors if a != b)
    found.update(_spanning_tree(sim))
    return sorted(found)


def image_similarity(images: Sequence[Any], method: str = "sift", net: Any = None) -> np.ndarray:
    """The similarity of loaded images by ``method`` (``"sift"`` or ``"encoder"``, which needs ``net``)."""
    if method not in SIMILARITIES:
        raise ConfigError(f"retrieval={method!r}: must be one of {', '.join(SIMILARITIES)}")
    if method == "encoder":
        if net is None:
            raise ConfigError("retrieval='encoder' needs the network")
        return encoder_similarity(net, images)
    return sift_similarity([getattr(im, "rgb", im) for im in images])


__all__ = ["SIMILARITIES", "encoder_similarity", "image_similarity", "retrieval_pairs", "sift_similarity"]
