"""Run the MASt3R / DUSt3R network over a scene graph -> one :class:`PairPrediction` per unordered pair.

What it does differently from the reference (same numbers, less work):

- each image is encoded ONCE for all its pairs (the reference re-encodes both images for every pair); encoder
  features are kept in memory only while some pending pair still needs them;
- both decoding directions of a pair, and several pairs whose image shapes agree, go through one decoder call;
- predictions are cached on disk (:class:`~sparsega.frontend.cache.CacheDir`), keyed by the two images' content
  hashes, their preprocessing, the checkpoint identity and the matching parameters; each pair is stored as soon as
  it is done, so a rerun, or the rerun of an interrupted run, does no network work for what is already there.

Matching: MASt3R nets (descriptors) use the reciprocal nearest neighbours of :func:`extract_correspondences`;
DUSt3R nets (no descriptors) use 3D nearest neighbours of the pointmaps (:func:`match_pointmaps_3d`), as the
reference does for that case.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, InputError
from ..types import PairPrediction
from .cache import (
    CacheDir,
    CachedPredictions,
    PairKeys,
    _cache_find,
    _cache_lookup,
    as_stored,
    check_storage,
    pair_cache_key,
    save_pair,
)
from .images import LoadedImage
from .matching import extract_correspondences, match_pointmaps_3d, pair_score

logger = logging.getLogger(__name__)

CACHE_NAMESPACE = "pairs"
DESC_CONF_CHOICES = ("desc_conf", "conf")
AUTOCAST_CHOICES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_BATCH_SIZE = 4

Result = Mapping[str, torch.Tensor]
Shape = tuple[int, int]


def _check_pairs(pairs: Any, n: int) -> np.ndarray:
    """(P, 2) int64 index pairs within [0, n); (i, i) only for a single image; unordered duplicates dropped."""
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"pairs must be an integer (P, 2) array, got shape {arr.shape} and dtype {arr.dtype}")
    if len(arr) == 0:
        raise InputError("no image pairs to run")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= n:
        raise InputError(f"pairs reference images outside 0..{n - 1}")
    if n > 1 and (arr[:, 0] == arr[:, 1]).any():
        k = int(arr[arr[:, 0] == arr[:, 1]][0, 0])
        raise InputError(f"self-pair ({k}, {k}): only a single image may be paired with itself")
    key = np.sort(arr, axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    return arr[np.sort(first)]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX, read from /proc/cpuinfo; False where
    that file does not exist). Without it bfloat16 matmuls are emulated: 5.8x slower than float32 on this project's
    2-core test machine."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast_ctx(autocast: str | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the backbone: ``bf16``/``fp16`` on CUDA, ``bf16`` on CPU (warned when the CPU has no
    native bfloat16); anything else runs float32 with a warning."""
    if autocast is None:
        return contextlib.nullcontext()
    if autocast not in AUTOCAST_CHOICES:
        raise ConfigError(f"autocast={autocast!r}: must be None, 'bf16' or 'fp16'")
    if device.type == "cpu" and autocast == "bf16":
        if not cpu_has_native_bf16():
            warnings.warn(
                "autocast='bf16' on a CPU without native bfloat16 (no AVX512-BF16 / AMX): emulated, slower than "
                "float32",
                stacklevel=3,
            )
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    if device.type != "cuda":
        warnings.warn(
            f"autocast={autocast!r} is used on CUDA (and bf16 on CPU); running {device.type} in float32", stacklevel=3
        )
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=AUTOCAST_CHOICES[autocast])


def _sync(t: torch.Tensor) -> None:
    """Wait for queued CUDA work (for honest timings); nothing on CPU."""
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _check_finite(pred: PairPrediction) -> None:
    for name in ("pts11", "pts21", "pts22", "pts12", "conf11", "conf21", "conf22", "conf12"):
        if not np.isfinite(getattr(pred, name)).all():
            raise InputError(
                f"pair ({pred.i}, {pred.j}): the network produced non-finite {name} "
                "(try without autocast, or check the checkpoint)"
            )


def predict_pair(
    i: int,
    j: int,
    res11: Result,
    res21: Result,
    res22: Result,
    res12: Result,
    subsample: int = 8,
    desc_conf: str = "desc_conf",
) -> PairPrediction:
    """Match one pair from its four network outputs (single-pair dicts of (H, W, ...) tensors).

    Descriptor nets: reciprocal NNs of ``desc`` with ``desc_conf`` (or ``conf``) as match quality; others: 3D
    reciprocal NNs of the pointmaps with ``conf``. Returns the :class:`PairPrediction` with the reference score.
    """
    if "desc" in res11:
        key = "desc_conf" if desc_conf == "desc_conf" else "conf"
        xy1, xy2, mconf = extract_correspondences(
            [res11["desc"], res21["desc"], res22["desc"], res12["desc"]],
            [res11[key], res21[key], res22[key], res12[key]],
            subsample=subsample,
        )
    else:
        xy1, xy2, mconf = match_pointmaps_3d(
            [res11["pts3d"], res21["pts3d"], res22["pts3d"], res12["pts3d"]],
            [res11["conf"], res21["conf"], res22["conf"], res12["conf"]],
            subsample=subsample,
        )
    maps = {
        f"{k}{ab}": _np(res[k2])
        for ab, res in (("11", res11), ("21", res21), ("22", res22), ("12", res12))
        for k, k2 in (("pts", "pts3d"), ("conf", "conf"))
    }
    score = pair_score(maps["conf11"], maps["conf21"], maps["conf22"], maps["conf12"], mconf)
    pred = PairPrediction(i=int(i), j=int(j), xy1=xy1, xy2=xy2, match_conf=mconf, score=score, **maps)
    _check_finite(pred)
    return pred


class _FeatureBank:
    """Encoder features of the images still needed, each image encoded once (equal shapes share one call)."""

    def __init__(self, net: Any, images: Sequence[LoadedImage], pending: np.ndarray, batch_size: int) -> None:
        self.net, self.images, self.batch_size = net, images, batch_size
        self.remaining = np.bincount(pending.ravel(), minlength=len(images))  # pending pairs per image
        self.feats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.encoded: set[int] = set()
        self.encode_s = 0.0

    def get(self, idx: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens (1, N, D), pos (1, N, 2)) of each image in ``idx``, encoding the missing ones by shape group."""
        missing = list(dict.fromkeys(k for k in idx if k not in self.feats))
        groups: dict[Shape, list[int]] = {}
        for k in missing:
            groups.setdefault(self.images[k].true_shape, []).append(k)
        for ks in groups.values():
            for c in range(0, len(ks), self.batch_size):
                chunk = ks[c : c + self.batch_size]
                if self.encoded.intersection(chunk):  # pragma: no cover - internal invariant
                    raise RuntimeError("an image would be encoded twice")
                t0 = time.perf_counter()
                imgs = torch.cat([self.images[k].tensor(self.net.device) for k in chunk])
                feat, pos = self.net.encode(imgs)
                _sync(feat)
                self.encode_s += time.perf_counter() - t0
                for b, k in enumerate(chunk):
                    self.feats[k] = (feat[b : b + 1], pos[b : b + 1])
                self.encoded.update(chunk)
        return [self.feats[k] for k in idx]

    def release(self, i: int, j: int) -> None:
        """One pending pair of (i, j) is done: free the features no longer needed."""
        for k in {i, j}:
            self.remaining[k] -= 1
            if self.remaining[k] <= 0:
                self.feats.pop(k, None)


def _split(res: Result, b: int) -> list[dict[str, torch.Tensor]]:
    return [{k: v[n] for k, v in res.items()} for n in range(b)]


def _decode_batch(
    net: Any, bank: _FeatureBank, batch: Sequence[tuple[int, int]], shape1: Shape, shape2: Shape
) -> list[tuple[dict[str, torch.Tensor], ...]]:
    """(res11, res21, res22, res12) of each pair of ``batch`` (all pairs with shapes (shape1, shape2))."""
    b = len(batch)
    f1 = bank.get([i for i, _ in batch])
    f2 = bank.get([j for _, j in batch])
    feat1, pos1 = torch.cat([f[0] for f in f1]), torch.cat([f[1] for f in f1])
    feat2, pos2 = torch.cat([f[0] for f in f2]), torch.cat([f[1] for f in f2])
    if shape1 == shape2:  # both directions in one decoder call
        first, second = net.decode_pair(
            torch.cat([feat1, feat2]),
            torch.cat([pos1, pos2]),
            torch.cat([feat2, feat1]),
            torch.cat([pos2, pos1]),
            shape1,
            shape2,
        )
        heads1, heads2 = _split(first, 2 * b), _split(second, 2 * b)
        r11, r22, r21, r12 = heads1[:b], heads1[b:], heads2[:b], heads2[b:]
    else:
        a1, a2 = net.decode_pair(feat1, pos1, feat2, pos2, shape1, shape2)
        b1, b2 = net.decode_pair(feat2, pos2, feat1, pos1, shape2, shape1)
        r11, r21, r22, r12 = _split(a1, b), _split(a2, b), _split(b1, b), _split(b2, b)
    return list(zip(r11, r21, r22, r12))


def _batches(todo: np.ndarray, images: Sequence[LoadedImage], batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """Pairs in list order, each batch filled with the next pending pairs of the same (shape_i, shape_j)."""
    done = np.zeros(len(todo), dtype=bool)
    keys = [(images[i].true_shape, images[j].true_shape) for i, j in todo.tolist()]
    for p in range(len(todo)):
        if done[p]:
            continue
        batch = [p]
        q = p + 1
        while len(batch) < batch_size and q < len(todo):
            if not done[q] and keys[q] == keys[p]:
                batch.append(q)
            q += 1
        done[batch] = True
        yield [(int(todo[k, 0]), int(todo[k, 1])) for k in batch]


@torch.inference_mode()
def run_pairs(
    net: Any,
    images: Sequence[LoadedImage],
    pairs: Any,
    *,
    subsample: int = 8,
    desc_conf: str = "desc_conf",
    cache: CacheDir | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    autocast: str | None = None,
    progress: bool = True,
    stats: dict[str, Any] | None = None,
    stream: bool = False,
    storage: str = "compact",
) -> Sequence[PairPrediction]:
    """Network predictions + matches for the pairs of a scene graph.

    Args:
        net: a :class:`~sparsega.frontend.model.MASt3RNet` (``encode``, ``decode_pair``, ``has_descriptors``,
            ``identity``).
        images: the loaded images (:func:`~sparsega.frontend.images.load_images`).
        pairs: (P, 2) image index pairs (e.g. :func:`~sparsega.frontend.pairs.make_pairs`); (j, i) repeats of (i, j) are
            dropped, so the output has one prediction per unordered pair, in the orientation met first.
        subsample: seed spacing of the matching.
        desc_conf: ``"desc_conf"`` or ``"conf"``: which confidence weighs the descriptor matches.
        cache: where predictions are stored and looked up (None: no disk cache).
        batch_size: pairs per decoder call (and images per encoder call); results do not depend on it.
        autocast: ``"bf16"`` / ``"fp16"`` mixed precision for the backbone (heads stay float32): both on CUDA,
            ``"bf16"`` on CPU (fast only where the CPU has AVX512-BF16 or AMX; warned otherwise); ignored with a
            warning elsewhere. Deviation from float32: ``benchmarks/bench_inference.py --precision``.
        progress: show a tqdm progress bar.
        stats: if a dict is given, it receives counts ``n_pairs``, ``cache_hits``, ``computed``, ``encoded`` (images)
            and wall times ``encode_s``, ``decode_s`` (decoders + heads), ``matching_s``.
        stream: (needs ``cache``) keep no prediction in memory: each is written to the cache as soon as it is
            computed and the result is a :class:`CachedPredictions` that reads them back on access, so memory does
            not grow with the number of pairs.
        storage: ``"compact"`` (float16 own-frame maps, cross-frame maps on every 4th pixel: what the alignment
            reads, a quarter of the bytes) or ``"float32"`` (lossless); see :mod:`sparsega.frontend.cache`. The
            predictions returned are the stored ones with or without a cache, so a rerun from the cache aligns
            exactly the same numbers.

    Returns:
        one :class:`PairPrediction` per pair (a list, or a :class:`CachedPredictions` with ``stream``), float32
        arrays in network pixels.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: must be an integer >= 1")
    if desc_conf not in DESC_CONF_CHOICES:
        raise ConfigError(f"desc_conf={desc_conf!r}: must be one of {', '.join(DESC_CONF_CHOICES)}")
    if isinstance(subsample, bool) or not isinstance(subsample, (int, np.integer)) or subsample < 1:
        raise ConfigError(f"subsample={subsample!r}: must be a positive integer")
    if len(images) == 0:
        raise InputError("no images given")
    check_storage(storage)
    if stream and cache is None:
        raise ConfigError("run_pairs(stream=True) needs a cache to stream the predictions from")
    todo_all = _check_pairs(pairs, len(images))
    device = net.device
    amp = _autocast_ctx(autocast, device)
    keys = PairKeys(net.identity, int(subsample), desc_conf, storage)
    store = cache.store(CACHE_NAMESPACE) if cache is not None else None

    results: dict[tuple[int, int], PairPrediction] = {}
    found: dict[tuple[int, int], tuple[str, bool]] = {}  # stream: where each pair's entry is
    if store is not None:
        for i, j in todo_all.tolist():
            if stream:
                hit = _cache_find(store, images, i, j, keys)  # read once to validate
                if hit is not None:
                    found[(i, j)] = hit[:2]
                continue
            pred = _cache_lookup(store, images, i, j, keys)
            if pred is not None:
                results[(i, j)] = pred
    have = found if stream else results
    todo = np.array([p for p in todo_all.tolist() if tuple(p) not in have], dtype=np.int64).reshape(-1, 2)
    logger.info("%d pairs: %d from the cache, %d to compute", len(todo_all), len(have), len(todo))

    bank = _FeatureBank(net, images, todo, int(batch_size))
    bar = tqdm(total=len(todo_all), initial=len(have), desc="network", unit="pair", disable=not progress)
    net_s = match_s = 0.0
    try:
        with amp:
            for batch in _batches(todo, images, int(batch_size)):
                shape1, shape2 = images[batch[0][0]].true_shape, images[batch[0][1]].true_shape
                t0 = time.perf_counter()
                outs = _decode_batch(net, bank, batch, shape1, shape2)
                _sync(outs[0][0]["pts3d"])
                net_s += time.perf_counter() - t0
                for (i, j), (r11, r21, r22, r12) in zip(batch, outs):
                    t0 = time.perf_counter()
                    pred = predict_pair(i, j, r11, r21, r22, r12, subsample=int(subsample), desc_conf=desc_conf)
                    match_s += time.perf_counter() - t0
                    if store is not None:  # encoded once: written, and the same encoding read back
                        key = keys.key(images[i], images[j])
                        pred = save_pair(store, key, pred, storage)
                        found[(i, j)] = (key, False)
                    else:
                        pred = as_stored(pred, storage)
                    if not stream:
                        results[(i, j)] = pred
                    bank.release(i, j)
                    bar.update(1)
    finally:
        bar.close()
    if stats is not None:
        stats.update(
            n_pairs=len(todo_all),
            cache_hits=len(todo_all) - len(todo),
            computed=len(todo),
            encoded=len(bank.encoded),
            encode_s=bank.encode_s,
            decode_s=net_s - bank.encode_s,
            matching_s=match_s,
        )
    if stream and store is not None:
        return CachedPredictions(store, [(i, j, *found[(i, j)]) for i, j in todo_all.tolist()])
    return [results[(i, j)] for i, j in todo_all.tolist()]


__all__ = ["run_pairs", "predict_pair", "pair_cache_key", "CachedPredictions", "CACHE_NAMESPACE"]
