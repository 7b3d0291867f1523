"""Read and write the cache folder of naver's MASt3R sparse global alignment.

Layout (``h(p)`` = md5 hex of the image path string exactly as given to naver's tools)::

    forward/h(a)/h(b).pth                               (X11, C11, X21, C21): pass (a, b), frame of a
    forward/h(b)/h(a).pth                               (X22, C22, X12, C12): pass (b, a), frame of b
    corres_conf=<desc_conf>_subsample=<s>/h(a)-h(b).pth  (score, (xy_a, xy_b, conf)); h(b)-h(a) may be the one
    canon_views/...                                     derived data, ignored here

pointmaps (H, W, 3) and confidences (H, W) float32; ``xy_*`` (M, 2) int64 pixels (x, y); ``conf`` (M,) float32;
``score`` = (geometric mean of the four mean confidences, sum of match confidences, M).

Files are read with ``torch.load(weights_only=True)`` only: tensors, tuples and numbers; anything needing
arbitrary unpickling is refused.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..types import PairPrediction

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def path_hash(path: PathLike) -> str:
    """md5 hex of the path string as given (``str(path)`` for a Path), naver's cache naming."""
    return hashlib.md5(str(os.fspath(path)).encode("utf-8")).hexdigest()


def corres_dirname(subsample: int, desc_conf: str) -> str:
    """Name of the correspondence folder for these matching parameters."""
    return f"corres_conf={desc_conf}_subsample={int(subsample)}"


def _hashes(image_paths: Sequence[PathLike]) -> list[str]:
    """md5 of each path; duplicates are an InputError (their files would collide)."""
    if isinstance(image_paths, (str, os.PathLike)) or len(image_paths) == 0:
        raise InputError("image_paths must be a non-empty list of image paths")
    hashes = [path_hash(p) for p in image_paths]
    seen: dict[str, int] = {}
    for k, h in enumerate(hashes):
        if h in seen:
            raise InputError(f"image path {os.fspath(image_paths[k])!r} is listed twice (positions {seen[h]} and {k})")
        seen[h] = k
    return hashes


# ------------------------------------------------------------------ reading
def _torch_load(path: Path, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` of ``path``; InputError naming the file for anything else.

    ``mmap``: map the file instead of reading it (tensors are views of the page cache; only the pages that are
    touched are read, and they are released with the tensors). Falls back to a plain read for archives that
    cannot be mapped (legacy format)."""
    import torch

    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                pass
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{path}: refused, it needs unpickling of arbitrary Python objects, not only tensors ({first[:160]})"
        ) from exc
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except Exception as exc:  # noqa: BLE001 - zip/EOF/runtime errors all mean a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"{path}: corrupt or not a torch file ({type(exc).__name__}: {first[:160]})") from exc


def _as_array(value: Any, path: Path, what: str, integer: bool = False, check_finite: bool = True) -> np.ndarray:
    """Tensor/array -> numpy (float32, or int64 when ``integer``); InputError naming the file otherwise."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise InputError(f"{path}: {what} has dtype {value.dtype}, expected numbers")
        arr = value.detach().to("cpu")
        arr = arr.float().numpy() if arr.dtype == torch.bfloat16 else arr.numpy()
    elif isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        arr = value
    else:
        raise InputError(f"{path}: {what} is a {type(value).__name__}, expected a tensor")
    if integer:
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise InputError(f"{path}: {what} holds non-integer pixel coordinates")
        return np.ascontiguousarray(arr, dtype=np.int64)
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if check_finite and not np.all(np.isfinite(out)):
        raise InputError(f"{path}: {what} contains NaN or infinite values")
    return out


def _read_forward(path: Path, lazy: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_a, C_a, X_b, C_b) of one decoding direction: (H,W,3), (H,W) float32 for each image.

    ``lazy``: memory-mapped and not scanned for NaN (nothing is read until used; the alignment masks non-finite
    points itself, with a warning)."""
    data = _torch_load(path, mmap=lazy)
    if not isinstance(data, (tuple, list)) or len(data) != 4:
        raise InputError(f"{path}: expected a 4-tuple (X1, C1, X2, C2), got {type(data).__name__}")
    names = (
        "pointmap of the first image",
        "confidence of the first image",
        "pointmap of the second image",
        "confidence of the second image",
    )
    x1, c1, x2, c2 = (_as_array(v, path, n, check_finite=not lazy) for v, n in zip(data, names))
    for x, c, n in ((x1, c1, "first"), (x2, c2, "second")):
        if x.ndim != 3 or x.shape[2] != 3 or c.shape != x.shape[:2]:
            raise InputError(
                f"{path}: {n} image has pointmap {x.shape} and confidence {c.shape}, expected (H, W, 3) and (H, W)"
            )
    return x1, c1, x2, c2


def _read_corres(path: Path) -> tuple[tuple[float, float, int], np.ndarray, np.ndarray, np.ndarray]:
    """(score, xy_first (M,2) int64, xy_second (M,2) int64, conf (M,) float32) as stored in ``path``."""
    data = _torch_load(path)
    try:
        score_raw, (xy1_raw, xy2_raw, conf_raw) = data
        score = (float(score_raw[0]), float(score_raw[1]), int(score_raw[2]))
        if len(score_raw) != 3:
            raise ValueError
    except (TypeError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: expected (score 3-tuple, (xy1, xy2, conf))") from exc
    xy1 = _as_array(xy1_raw, path, "xy1", integer=True)
    xy2 = _as_array(xy2_raw, path, "xy2", integer=True)
    conf = _as_array(conf_raw, path, "match confidences")
    m = conf.shape[0] if conf.ndim == 1 else -1
    if m < 0 or xy1.shape != (m, 2) or xy2.shape != (m, 2):
        raise InputError(
            f"{path}: matches have shapes {xy1.shape}, {xy2.shape}, {conf.shape}, expected (M, 2), (M, 2), (M,)"
        )
    return score, xy1, xy2, conf


def _load_pair(record: tuple, lazy: bool) -> PairPrediction:
    """The prediction of one pair record ``(i, j, forward path ij, forward path ji, corres path, score, xy1, xy2,
    conf)``, shapes checked; ``lazy``: memory-mapped pointmaps (see :func:`_read_forward`)."""
    i, j, path_ij, path_ji, corres_path, score, xy1, xy2, conf = record
    x11, c11, x21, c21 = _read_forward(path_ij, lazy=lazy)
    x22, c22, x12, c12 = _read_forward(path_ji, lazy=lazy)
    pred = PairPrediction(
        i=i,
        j=j,
        pts11=x11,
        conf11=c11,
        pts21=x21,
        conf21=c21,
        pts22=x22,
        conf22=c22,
        pts12=x12,
        conf12=c12,
        xy1=xy1,
        xy2=xy2,
        match_conf=conf,
        score=score,
    )
    try:
        pred.validate()
    except InputError as exc:
        raise InputError(f"{path_ij}, {path_ji}, {corres_path}: inconsistent files: {exc}") from exc
    return pred


class CachedPairSequence(Sequence[PairPrediction]):
    """The pairs of a naver cache folder, loaded on access: the matches are held in memory, the pointmaps are
    memory-mapped from their files each time a pair is indexed and released with the returned prediction.

    Alignment reads each image's pointmaps one image at a time, so memory stays at one image's pairs whatever the
    number of pairs. Structure and shapes of every file are checked when the sequence is built; NaN values are
    masked (with a warning) by the alignment instead of failing the whole read.
    """

    def __init__(
        self,
        records: list[tuple[int, int, Path, Path, Path, tuple[float, float, int], np.ndarray, np.ndarray, np.ndarray]],
        shapes: list[tuple[tuple[int, int], tuple[int, int]]],
    ) -> None:
        self._records = records
        self._shapes = shapes  # (H, W) of image i and of image j, per pair

    def __len__(self) -> int:
        return len(self._records)

    def _load(self, k: int) -> PairPrediction:
        return _load_pair(self._records[k], lazy=True)

    def pair_header(self, k: int) -> PairPrediction:
        """Pair ``k`` without reading its files: the matches, and zero-stride placeholders of the right shapes for
        the pointmaps (the :class:`~sparsega.types.PairPrediction` header protocol, see there)."""
        i, j, _, _, _, score, xy1, xy2, conf = self._records[k]
        return PairPrediction.header(i, j, *self._shapes[k], xy1, xy2, conf, score)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self._load(q) for q in range(len(self))[k]]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self._load(k)


def read_mast3r_cache(
    cache_dir: PathLike,
    image_paths: Sequence[PathLike],
    subsample: int = 8,
    desc_conf: str = "desc_conf",
    lazy: bool = True,
) -> Sequence[PairPrediction]:
    """Predictions of every pair of ``image_paths`` found complete in a naver MASt3R cache folder.

    A pair (a, b) is complete when both ``forward`` directions and a correspondence file (either direction) exist.
    Images not in ``image_paths`` and ``canon_views/`` are ignored; incomplete pairs are skipped with a warning.

    Args:
        cache_dir: the folder given to naver's ``sparse_global_alignment`` as ``cache_path``.
        image_paths: the image path strings exactly as naver's tools got them (their md5 names the files).
        subsample, desc_conf: matching parameters naming the correspondence folder.
        lazy: return a :class:`CachedPairSequence` that maps each pair's pointmaps from disk when indexed (the
            default: memory does not grow with the number of pairs); ``False`` reads everything into a list and
            rejects NaN values at once.

    Returns:
        One :class:`PairPrediction` per unordered pair, ``i < j`` being positions in ``image_paths``, sorted by
        (i, j); float32 arrays, int64 pixels.

    Raises:
        InputError: missing folder, no complete pair, or a corrupt/unsafe file (named in the message).
    """
    root = Path(cache_dir)
    hashes = _hashes(image_paths)
    if not root.is_dir():
        raise InputError(f"MASt3R cache folder {root} not found")
    forward = root / "forward"
    if not forward.is_dir():
        raise InputError(f"{root} is not a MASt3R cache folder: it has no forward/ folder")
    corres_dir = root / corres_dirname(subsample, desc_conf)
    if not corres_dir.is_dir():
        found = sorted(p.name for p in root.glob("corres_conf=*") if p.is_dir())
        hint = f" (found: {', '.join(found)})" if found else ""
        raise InputError(f"{corres_dir} not found: no matches for subsample={subsample}, desc_conf={desc_conf!r}{hint}")

    index = {h: k for k, h in enumerate(hashes)}
    directions: set[tuple[int, int]] = set()
    for sub in forward.iterdir():
        a = index.get(sub.name)
        if a is None or not sub.is_dir():
            continue
        for f in sub.iterdir():
            b = index.get(f.stem) if f.suffix == ".pth" else None
            if b is not None and b != a and f.is_file():
                directions.add((a, b))

    preds: list[PairPrediction] = []
    records: list = []
    shapes: list[tuple[tuple[int, int], tuple[int, int]]] = []
    incomplete: list[str] = []
    for i, j in sorted({(min(a, b), max(a, b)) for a, b in directions}):
        hi, hj = hashes[i], hashes[j]
        if (i, j) not in directions or (j, i) not in directions:
            incomplete.append(f"({i}, {j}) has one forward direction only")
            continue
        direct, reverse = corres_dir / f"{hi}-{hj}.pth", corres_dir / f"{hj}-{hi}.pth"
        if direct.is_file():
            score, xy1, xy2, conf = _read_corres(direct)
            corres_path = direct
        elif reverse.is_file():
            score, xy2, xy1, conf = _read_corres(reverse)
            corres_path = reverse
        else:
            incomplete.append(f"({i}, {j}) has no correspondence file")
            continue
        path_ij, path_ji = forward / hi / f"{hj}.pth", forward / hj / f"{hi}.pth"
        record = (i, j, path_ij, path_ji, corres_path, score, xy1, xy2, conf)
        pred = _load_pair(record, lazy)  # structure and shapes checked now, in both modes
        if lazy:  # keep only the names, shapes and matches; the maps are mapped again on access
            shapes.append((pred.shape1, pred.shape2))
            del pred
            records.append(record)
        else:
            preds.append(pred)

    if incomplete:
        logger.warning(
            "MASt3R cache %s: skipped %d incomplete pair(s): %s",
            root,
            len(incomplete),
            "; ".join(incomplete[:10]) + ("; ..." if len(incomplete) > 10 else ""),
        )
    if lazy:
        out: Sequence[PairPrediction] = CachedPairSequence(records, shapes)
    else:
        out = preds
    if not len(out):
        raise InputError(
            f"no complete pair of the {len(hashes)} given images in MASt3R cache {root} "
            "(paths must be the exact strings given to naver's tools)"
        )
    logger.info("read %d pair(s) from MASt3R cache %s", len(out), root)
    return out


# ------------------------------------------------------------------ writing
def _torch_save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file next to ``path``, then rename (no half-written file on a crash)."""
    import torch

    from ..fsutil import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(obj, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except Exception as exc:  # CacheError: reported as a bad output path here
        raise InputError(f"cannot write {path}: {exc}") from exc


def _tensor(arr: np.ndarray, dtype: Any) -> Any:
    """An owned torch tensor copy of ``arr`` as ``dtype``."""
    import torch

    return torch.from_numpy(np.array(arr, dtype=dtype, copy=True, order="C"))


def pair_score(pred: PairPrediction) -> tuple[float, float, int]:
    """Reference pair score: ((mean C11 * mean C12 * mean C21 * mean C22)^(1/4), sum of match conf, M)."""
    means = [float(np.mean(c, dtype=np.float64)) for c in (pred.conf11, pred.conf12, pred.conf21, pred.conf22)]
    return float(np.prod(means) ** 0.25), float(np.sum(pred.match_conf, dtype=np.float64)), int(pred.n_matches)


def write_mast3r_cache(
    cache_dir: PathLike,
    image_paths: Sequence[PathLike],
    predictions: Sequence[PairPrediction],
    subsample: int = 8,
    desc_conf: str = "desc_conf",
) -> None:
    """Write ``predictions`` in naver's cache layout (inverse of :func:`read_mast3r_cache`).

    ``pred.i``/``pred.j`` index ``image_paths``; the correspondence file is written for the (i, j) order only, as
    naver's tools do. A missing ``pred.score`` is computed with :func:`pair_score`. Existing files are replaced.
    """
    root = Path(cache_dir)
    hashes = _hashes(image_paths)
    corres_dir = root / corres_dirname(subsample, desc_conf)
    for pred in predictions:
        if not (0 <= pred.i < len(hashes) and 0 <= pred.j < len(hashes)) or pred.i == pred.j:
            raise InputError(f"pair ({pred.i}, {pred.j}): indices must be distinct and < {len(hashes)}")
        pred.validate()
        ha, hb = hashes[pred.i], hashes[pred.j]
        f32, i64 = np.float32, np.int64
        _torch_save_atomic(
            (_tensor(pred.pts11, f32), _tensor(pred.conf11, f32), _tensor(pred.pts21, f32), _tensor(pred.conf21, f32)),
            root / "forward" / ha / f"{hb}.pth",
        )
        _torch_save_atomic(
            (_tensor(pred.pts22, f32), _tensor(pred.conf22, f32), _tensor(pred.pts12, f32), _tensor(pred.conf12, f32)),
            root / "forward" / hb / f"{ha}.pth",
        )
        s = pred.score if pred.score is not None else pair_score(pred)
        score = (float(s[0]), float(s[1]), int(s[2]))
        corres = (_tensor(pred.xy1, i64), _tensor(pred.xy2, i64), _tensor(pred.match_conf, f32))
        _torch_save_atomic((score, corres), corres_dir / f"{ha}-{hb}.pth")
        stale = corres_dir / f"{hb}-{ha}.pth"
        if stale.exists():  # would disagree with the file just written if the matches changed
            stale.unlink()


__all__ = ["read_mast3r_cache", "CachedPairSequence", "write_mast3r_cache", "path_hash", "corres_dirname", "pair_score"]
