"""Scene graphs: which image pairs go through the network.

Names (the reference's, dust3r ``make_pairs``):

- ``complete``: every pair, listed as (i, j) with i > j, i ascending then j ascending.
- ``swin[-k][-noncyclic]``: each image with its k successors (default k = 3); cyclic by default (the last images
  wrap around to the first ones).
- ``logwin[-k][-noncyclic]``: each image with the images at offsets +-1, +-2, +-4, ..., +-2^(k-1) (default k = 3).
- ``oneref[-i]``: every image with the reference image i (default 0), listed as (i, j).

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
SCENE_GRAPH_KINDS = ("complete", "swin", "logwin", "oneref")


@dataclass(frozen=True)
class SceneGraph:
    """A parsed scene-graph name: `kind` in SCENE_GRAPH_KINDS, window `k` (swin/logwin), `cyclic`, `ref` (oneref)."""

    kind: str
    k: int = DEFAULT_WINDOW
    cyclic: bool = True
    ref: int = 0


def _bad(name: str, why: str) -> ConfigError:
    return ConfigError(
        f"scene graph {name!r}: {why} (expected complete, swin[-k][-noncyclic], logwin[-k][-noncyclic] or oneref[-i])"
    )


def parse_scene_graph(name: str) -> SceneGraph:
    """Parse a scene-graph name; raise :class:`ConfigError` naming it when it is unknown or malformed."""
    if not isinstance(name, str) or not name:
        raise _bad(str(name), "not a name")
    parts = name.split("-")
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


def make_pairs(n_images: int, scene_graph: str = "complete", symmetrize: bool = True) -> np.ndarray:
    """Image index pairs of a scene graph over `n_images` images: (P, 2) int64, reference order.

    A single image gives [[0, 0]]. Raises :class:`ConfigError` for a bad name or a oneref index out of range.
    """
    graph = parse_scene_graph(scene_graph)
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise InputError(f"need at least one image to make pairs, got n_images={n_images!r}")
    n = int(n_images)
    if n == 1:
        return np.zeros((1, 2), dtype=np.int64)
    if graph.kind == "complete":
        pairs = [(i, j) for i in range(n) for j in range(i)]
    elif graph.kind == "oneref":
        if graph.ref >= n:
            raise ConfigError(f"scene graph {scene_graph!r}: reference image {graph.ref} out of range for {n} images")
        pairs = [(graph.ref, j) for j in range(n) if j != graph.ref]
    else:
        pairs = _window_pairs(n, graph)
    out = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    if symmetrize:
        out = np.concatenate([out, out[:, ::-1]], axis=0)
    logger.debug("scene graph %s over %d images: %d pairs", scene_graph, n, len(out))
    return np.ascontiguousarray(out)


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


__all__ = ["make_pairs", "unique_pairs", "parse_scene_graph", "SceneGraph", "SCENE_GRAPH_KINDS"]
