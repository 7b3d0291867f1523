"""A pair prediction as a cache entry: the storage forms (lossless float32, or "compact"), and the encoding and
decoding between :class:`~sparsega.types.PairPrediction` and the arrays of an :class:`~.store.ArrayStore` entry."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from ..errors import CacheError, ConfigError
from ..types import PairPrediction
from .store import ArrayStore

logger = logging.getLogger("sparsega.frontend.cache")

PAIR_KIND = "PairPrediction"

# How a pair's maps are stored. "float32": everything as computed (lossless). "compact": only what the alignment
# reads at full resolution is kept there: the own-frame maps (pts11, conf11, pts22, conf22) in float16; the
# cross-frame maps (pts21, conf21, pts12, conf12) are read only on a grid (pairwise Procrustes on every 4th pixel,
# fallback targets at anchor pixels, multiples of 4 for the default subsample 8), so they are kept on every
# CROSS_STEP-th pixel in float16 and read back by nearest-neighbour repetition (exact on that grid).
# 512x384: the maps take 3.3 MB per pair instead of 12.6 MB. A map whose values float16 cannot hold (overflow, or
# depths so small that float16 loses precision) stays float32.
STORAGE_CHOICES = ("compact", "float32")
CROSS_STEP = 4
_OWN_MAPS = ("pts11", "conf11", "pts22", "conf22")
_CROSS_MAPS = ("pts21", "conf21", "pts12", "conf12")
_MATCH_FIELDS = ("xy1", "xy2", "match_conf")
_F16_MAX = 65000.0
_F16_MIN_MEDIAN_DEPTH = 1e-2  # below this, float16's 6e-5 normal range would cost relative depth precision


def check_storage(storage: str) -> str:
    """``storage`` if it is one of :data:`STORAGE_CHOICES`, else :class:`~sparsega.errors.ConfigError`."""
    if storage not in STORAGE_CHOICES:
        raise ConfigError(f"storage={storage!r}: must be one of {', '.join(STORAGE_CHOICES)}")
    return storage


def _half(arr: np.ndarray) -> np.ndarray:
    """``arr`` as float16 when float16 holds it to its relative precision, else as float32."""
    a = np.asarray(arr, np.float32)
    if a.size == 0 or not np.isfinite(a).all() or float(np.abs(a).max()) > _F16_MAX:
        return np.ascontiguousarray(a)
    if a.ndim == 3 and float(np.median(np.abs(a[..., 2]))) < _F16_MIN_MEDIAN_DEPTH:
        return np.ascontiguousarray(a)
    return a.astype(np.float16)


def _encode_pair(pred: PairPrediction, storage: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and meta entries that store ``pred`` in ``storage`` form."""
    arrays = {name: getattr(pred, name) for name in _MATCH_FIELDS}
    if check_storage(storage) == "float32":
        arrays.update({name: getattr(pred, name) for name in _OWN_MAPS + _CROSS_MAPS})
        return arrays, {}
    arrays.update({name: _half(getattr(pred, name)) for name in _OWN_MAPS})
    s = CROSS_STEP
    arrays.update({name: _half(np.asarray(getattr(pred, name))[::s, ::s]) for name in _CROSS_MAPS})
    return arrays, {"storage": "compact", "cross_step": s}


def _expand(grid: np.ndarray, step: int, shape: tuple[int, int]) -> np.ndarray:
    """Full-size float32 map from its every-``step``-th-pixel samples (each sample fills its block)."""
    h, w = shape
    full = np.repeat(np.repeat(np.asarray(grid, np.float32), step, axis=0), step, axis=1)
    return np.ascontiguousarray(full[:h, :w])


def _decode_pair(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The PairPrediction fields (float32 maps at full size) from a stored entry; None if malformed."""
    names = _OWN_MAPS + _CROSS_MAPS + _MATCH_FIELDS
    if any(name not in arrays for name in names):
        return None
    if meta.get("storage", "float32") == "float32":
        return {name: arrays[name] for name in names}
    step = meta.get("cross_step")
    if meta.get("storage") != "compact" or not isinstance(step, int) or step < 1:
        return None
    out = {name: arrays[name] for name in _MATCH_FIELDS}
    out.update({name: np.asarray(arrays[name], np.float32) for name in _OWN_MAPS})
    shape1, shape2 = out["conf11"].shape[:2], out["conf22"].shape[:2]
    for name, shape in (("pts21", shape2), ("conf21", shape2), ("pts12", shape1), ("conf12", shape1)):
        grid = arrays[name]
        if grid.shape[:2] != (-(-shape[0] // step), -(-shape[1] // step)):
            return None
        out[name] = _expand(grid, step, shape)
    return out


def _as_decoded(pred: PairPrediction, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> PairPrediction:
    """``pred`` with the fields of its encoded entry ``arrays, meta`` (what :func:`load_pair` will read)."""
    if not meta:  # float32: stored as given
        return pred
    fields = _decode_pair(arrays, meta)
    if fields is None:  # pragma: no cover - _encode_pair always writes a decodable entry
        raise CacheError("internal error: a compact pair entry does not decode")
    return dataclasses.replace(pred, **fields)


def as_stored(pred: PairPrediction, storage: str) -> PairPrediction:
    """``pred`` exactly as :func:`load_pair` returns it after :func:`save_pair` with ``storage``, so that a run
    from the cache and the run that filled it align the same numbers."""
    return _as_decoded(pred, *_encode_pair(pred, storage))


def save_pair(store: ArrayStore, key: str, pred: PairPrediction, storage: str = "float32") -> PairPrediction:
    """Store ``pred`` under ``key`` in ``storage`` form (see :data:`STORAGE_CHOICES`; ``pred.i``/``pred.j`` are
    not stored). ``float32`` is lossless. Returns the prediction as stored (:func:`as_stored`), decoded from the
    same encoding that was written."""
    arrays, extra = _encode_pair(pred, storage)
    score = None if pred.score is None else [float(pred.score[0]), float(pred.score[1]), int(pred.score[2])]
    store.put(key, arrays, {"kind": PAIR_KIND, "score": score, **extra})
    return _as_decoded(pred, arrays, extra)


def load_pair(store: ArrayStore, key: str, i: int, j: int) -> PairPrediction | None:
    """The prediction stored under ``key`` as pair ``(i, j)`` (float32 maps at full size, whatever the storage
    form), or None (absent, corrupt or not a pair entry)."""
    got = store.get(key)
    if got is None:
        return None
    arrays, meta = got
    fields = _decode_pair(arrays, meta) if meta.get("kind") == PAIR_KIND else None
    if fields is None:
        logger.warning("cache entry %s is not a pair prediction; ignoring it", store.path(key))
        return None
    return PairPrediction(i=int(i), j=int(j), **fields, score=_score(meta))


def load_pair_header(store: ArrayStore, key: str, i: int, j: int) -> PairPrediction:
    """The matches, map shapes and score of the pair stored under ``key``, as pair ``(i, j)``, read from the entry's
    header and match arrays only (:meth:`PairPrediction.header`; not checksum-verified, :func:`load_pair` is).
    :class:`~sparsega.errors.CacheError` if absent, unreadable or not a pair entry."""
    arrays, shapes, meta = store.peek(key, _MATCH_FIELDS)
    if meta.get("kind") != PAIR_KIND or "conf11" not in shapes or "conf22" not in shapes:
        raise CacheError(f"cache entry {store.path(key)} is not a pair prediction")
    shape1, shape2 = shapes["conf11"][:2], shapes["conf22"][:2]
    return PairPrediction.header(i, j, shape1, shape2, arrays["xy1"], arrays["xy2"], arrays["match_conf"], _score(meta))


def _score(meta: dict[str, Any]) -> tuple[float, float, int] | None:
    """The pair score stored in an entry's meta (JSON turns the tuple into a list)."""
    score = meta.get("score")
    return None if score is None else (float(score[0]), float(score[1]), int(score[2]))
