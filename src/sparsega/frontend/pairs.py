"""Scene graphs: which image pairs go through the network.

Names (the reference's, dust3r ``make_pairs``):

- ``complete``: every pair, listed as (i, j) with i > j, i ascending then j ascending.
- ``swin[-k][-noncyclic]``: each image with its k successors (default k = 3); cyclic by default (the last images
  wrap around to the first ones).
- ``logwin[-k][-noncyclic]``: each image with the images at offsets +-1, +-2, +-4, ..., +-2^(k-1) (default k = 3).
- ``oneref[-i]``: every image with the reference image i (default 0), listed as (i, j).
- ``retrieval-k`` / ``retrieval-Na-k`` (not the reference's; MASt3R-SfM's idea): each image with its k most
  similar images, plus Na anchors connected completely, by an image similarity (:mod:`.retrieval`).
- ``A+B``: the union of two graphs, e.g. ``swin-3+retrieval-5`` for a video with revisits (loop closure).

swin/logwin pairs come out in the order in which the reference iterates its Python set of (min, max) tuples;
this module builds the same set the same way, so the order matches too (CPython's int-tuple hashing is
deterministic). With ``symmetrize`` the list is followed by its swapped copy, as in the reference.

Differences from the reference: malformed names raise :class:`ConfigError` instead of silently falling back to
defaults; self-pairs (i, i), which the reference emits for a cyclic swin window k >= n, are dropped; a single image
gives the single pair (0, 0) (the reference demo pairs an image with a copy of itself).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, InputError

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 3
SCENE_GRAPH_KINDS = ("complete", "swin", "logwin", "oneref", "retrieval")


@dataclass(frozen=True)
class SceneGraph:
    """A parsed scene-graph name: `kind` in SCENE_GRAPH_KINDS, window or neighbour count `k` (swin, logwin,
    retrieval), `cyclic`, `ref` (oneref), `anchors` (retrieval's Na)."""

    kind: str
    k: int = DEFAULT_WINDOW
    cyclic: bool = True
    ref: int = 0
    anchors: int = 0


def _bad(name: str, why: str) -> ConfigError:
    return ConfigError(
        f"scene graph {name!r}: {why} (expected complete, swin[-k][-noncyclic], logwin[-k][-noncyclic], oneref[-i], "
        "retrieval[-Na]-k, or A+B)"
    )


def parse_scene_graph(name: str) -> tuple[SceneGraph, ...]:
    """Parse a scene-graph name (``A+B`` gives both parts); raise :class:`ConfigError` naming it when it is unknown
    or malformed."""
    if not isinstance(name, str) or not name:
        raise _bad(str(name), "not a name")
    return tuple(_parse_one(part, name) for part in name.split("+"))


def needs_similarity(name: str) -> bool:
    """True when the graph ``name`` has a retrieval part (it needs an image similarity)."""
    return any(g.kind == "retrieval" for g in parse_scene_graph(name))


def _parse_one(part: str, name: str) -> SceneGraph:
    parts = part.split("-")
    kind, rest = parts[0], parts[1:]
    if kind not in SCENE_GRAPH_KINDS:
        raise _bad(name, f"unknown kind {kind!r}")
    if kind == "complete":
        if rest:
            raise _bad(name, "complete takes no parameter")
        return SceneGraph("complete")
    if kind == "oneref":
        if len(rest) > 1 or (rest and not rest[0].isdigit()):
            raise _bad(name, "oneref takes one image index")
        return SceneGraph("oneref", ref=int(rest[0]) if rest else 0)
    if kind == "retrieval":
        if not 1 <= len(rest) <= 2 or not all(r.isdigit() for r in rest) or int(rest[-1]) < 1:
            raise _bad(name, "retrieval takes [Na-]k with k >= 1")
        return SceneGraph("retrieval", k=int(rest[-1]), anchors=int(rest[0]) if len(rest) == 2 else 0)
    cyclic = True
    if rest and rest[-1] == "noncyclic":
        cyclic = False
        rest = rest[:-1]
    if len(rest) > 1 or (rest and not rest[0].isdigit()):
        raise _bad(name, f"{kind} takes a window size and an optional -noncyclic")
    k = int(rest[0]) if rest else DEFAULT_WINDOW
    if k < 1:
        raise _bad(name, "the window size must be >= 1")
    return SceneGraph(kind, k=k, cyclic=cyclic)


def _window_pairs(n: int, graph: SceneGraph) -> list[tuple[int, int]]:
    """swin/logwin pairs (min, max) in the iteration order of the reference's Python set."""
    if graph.kind == "swin":
        offsets = list(range(1, graph.k + 1))
    else:
        offsets = [2**e for e in range(graph.k)]
        offsets = [-o for o in offsets] + offsets
    found: set[tuple[int, int]] = set()
    for i in range(n):
        for off in offsets:
            j = (i + off) % n if graph.cyclic else i + off
            if 0 <= j < n and j != i:
                found.add((min(i, j), max(i, j)))
    return list(found)  # set iteration order, on purpose


def make_pairs(
    n_images: int, scene_graph: str = "complete", symmetrize: bool = True, similarity: np.ndarray | None = None
) -> np.ndarray:
    """Image index pairs of a scene graph over `n_images` images: (P, 2) int64, reference order.

    A single image gives [[0, 0]]. Retrieval graphs need ``similarity`` (N, N) (:mod:`.retrieval`); a union
    ``A+B`` lists A's pairs, then B's that A lacks. Raises :class:`ConfigError` for a bad name, a oneref index out
    of range or a missing similarity.
    """
    graphs = parse_scene_graph(scene_graph)
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise InputError(f"need at least one image to make pairs, got n_images={n_images!r}")
    n = int(n_images)
    if n == 1:
        return np.zeros((1, 2), dtype=np.int64)
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for graph in graphs:
        for p in _graph_pairs(n, graph, scene_graph, similarity):
            if (min(p), max(p)) not in seen:
                seen.add((min(p), max(p)))
                pairs.append(p)
    out = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    if symmetrize:
        out = np.concatenate([out, out[:, ::-1]], axis=0)
    logger.debug("scene graph %s over %d images: %d pairs", scene_graph, n, len(out))
    return np.ascontiguousarray(out)


def _graph_pairs(n: int, graph: SceneGraph, name: str, similarity: np.ndarray | None) -> list[tuple[int, int]]:
    if graph.kind == "retrieval":
        if similarity is None:
            raise ConfigError(f"scene graph {name!r} needs an image similarity (reconstruct computes one)")
        from .retrieval import retrieval_pairs

        if np.shape(similarity) != (n, n):
            raise InputError(f"similarity has shape {np.shape(similarity)}, expected ({n}, {n})")
        return retrieval_pairs(similarity, graph.k, graph.anchors)
    if graph.kind == "complete":
        pairs = [(i, j) for i in range(n) for j in range(i)]
    elif graph.kind == "oneref":
        if graph.ref >= n:
            raise ConfigError(f"scene graph {name!r}: reference image {graph.ref} out of range for {n} images")
        pairs = [(graph.ref, j) for j in range(n) if j != graph.ref]
    else:
        pairs = _window_pairs(n, graph)
    return pairs


def unique_pairs(pairs: np.ndarray, ascending: bool = False) -> np.ndarray:
    """Keep each unordered pair once: (P, 2) -> (P', 2) int64.

    Default: the first occurrence of each unordered pair is kept, in its own orientation and list position. This is
    what the reference effectively computes: it runs the network and the matching for the first orientation it
    meets and derives the other one by swapping the cached result. With ``ascending`` every pair is written (i, j)
    with i <= j and the result is sorted. A self-pair (i, i) is kept (single-image scenes).
    """
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"pairs must be an integer (P, 2) array, got shape {arr.shape} and dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1, 2)
    key = np.sort(arr, axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    if ascending:
        return np.ascontiguousarray(np.unique(key, axis=0)).reshape(-1, 2)
    return np.ascontiguousarray(arr[np.sort(first)])


__all__ = ["make_pairs", "unique_pairs", "parse_scene_graph", "needs_similarity", "SceneGraph", "SCENE_GRAPH_KINDS"]
