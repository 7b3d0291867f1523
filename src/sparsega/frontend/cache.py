"""Content-addressed on-disk store for pair predictions and other arrays.

Why: network inference is the expensive stage, so its outputs are kept on disk and reused across runs, processes
and machines (e.g. Ray workers sharing a folder). The store is built so that a bad file can never do harm:

- entries are safetensors files (tensors + string metadata), a format that cannot carry code; nothing is unpickled;
- every entry carries a sha256 of its content (metadata, tensor names, dtypes, shapes and bytes) checked on read:
  a corrupt, truncated or foreign file is logged, deleted and reported as a miss, so the caller recomputes;
- writes are atomic (temporary file in the same folder, fsync, ``os.replace``): readers see the old entry, the new
  one or none, never half a file; concurrent writers of one key are safe (the last rename wins, both are valid);
- a cache folder remembers which checkpoint wrote it (:class:`CacheDir`), so predictions of another network are
  never mixed in silently.

Layout: ``root/meta.json`` and ``root/<namespace>/<key[:2]>/<key>.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheError
from ..fsutil import TEMP_SUFFIX, atomic_write_bytes
from ..types import PairPrediction

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of both ``meta.json`` and the entry files; bumped when either changes incompatibly."""

ENTRY_SUFFIX = ".safetensors"
META_FILE = "meta.json"
STALE_TEMP_AGE_S = 3600.0
"""A temporary file older than this is the leftover of a crashed writer and may be removed."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,199}$")
_META_KEY = "sparsega.meta"
_SHA_KEY = "sparsega.sha256"
_VERSION_KEY = "sparsega.format_version"
_PAIR_KIND = "PairPrediction"
PAIR_FIELDS = (
    "pts11",
    "conf11",
    "pts21",
    "conf21",
    "pts22",
    "conf22",
    "pts12",
    "conf12",
    "xy1",
    "xy2",
    "match_conf",
)


def _check_name(name: str, what: str) -> str:
    """A key or namespace must be a plain file name (no separators, no leading dot) to stay inside the root."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith(TEMP_SUFFIX):
        raise CacheError(f"invalid cache {what} {name!r}: use letters, digits and _ . = - only")
    return name


def _native(arr: np.ndarray) -> np.ndarray:
    """C-contiguous, native byte order version of ``arr`` (safetensors 0.8 silently mis-stores other layouts)."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray would make 0-d 1-d)


def _content_digest(arrays: Mapping[str, np.ndarray], meta_json: str) -> str:
    """sha256 over the metadata JSON and every tensor's (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    h.update(f"sparsega-entry-v{FORMAT_VERSION}\0".encode())
    h.update(len(meta_json.encode()).to_bytes(8, "little"))
    h.update(meta_json.encode())
    for name in sorted(arrays):
        arr = arrays[name]
        head = json.dumps([name, arr.dtype.str, list(arr.shape)]).encode()
        h.update(len(head).to_bytes(8, "little"))
        h.update(head)
        h.update(arr.tobytes(order="C"))
    return h.hexdigest()


class ArrayStore:
    """A folder of named entries, each a dict of numpy arrays plus a JSON-able ``meta`` dict.

    Args:
        root: cache root folder (created on first write).
        namespace: sub-folder separating kinds of entries (e.g. ``"pairs"``).
        clean_stale_after_s: on opening, delete temporary files older than this (crashed writers); None = never.

    ``get`` verifies the checksum; ``has`` and ``keys`` only look at file names (cheap), so a listed entry can still
    turn out corrupt, in which case ``get`` returns None.
    """

    def __init__(
        self, root: str | os.PathLike[str], namespace: str, clean_stale_after_s: float | None = STALE_TEMP_AGE_S
    ) -> None:
        self.root = Path(root)
        self.namespace = _check_name(namespace, "namespace")
        self.dir = self.root / namespace
        if clean_stale_after_s is not None:
            self.clean_temp_files(clean_stale_after_s)

    def __repr__(self) -> str:
        return f"ArrayStore({str(self.root)!r}, {self.namespace!r})"

    def path(self, key: str) -> Path:
        """File of entry ``key`` (sharded on its first two characters)."""
        _check_name(key, "key")
        return self.dir / key[:2] / f"{key}{ENTRY_SUFFIX}"

    # ---------------------------------------------------------------- writing
    def put(self, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
        """Store ``arrays`` (name -> ndarray, any safetensors dtype, empty arrays allowed) and ``meta`` under ``key``.

        ``meta`` must be JSON-serialisable; it comes back through JSON (tuples become lists).
        """
        import safetensors.numpy

        path = self.path(key)
        clean: dict[str, np.ndarray] = {}
        for name, arr in arrays.items():
            if not isinstance(name, str) or not name or name.startswith("__"):
                raise CacheError(f"cache entry {key}: invalid array name {name!r}")
            if not isinstance(arr, np.ndarray):
                raise CacheError(f"cache entry {key}: {name} is a {type(arr).__name__}, expected a numpy array")
            if arr.dtype.kind not in "biuf" or arr.dtype.itemsize > 8:
                raise CacheError(f"cache entry {key}: {name} has unsupported dtype {arr.dtype}")
            clean[name] = _native(arr)
        try:
            meta_json = json.dumps(dict(meta or {}), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise CacheError(f"cache entry {key}: meta is not JSON-serialisable ({exc})") from exc
        header = {
            _VERSION_KEY: str(FORMAT_VERSION),
            _META_KEY: meta_json,
            _SHA_KEY: _content_digest(clean, meta_json),
        }
        atomic_write_bytes(path, safetensors.numpy.save(clean, metadata=header))

    def delete(self, key: str) -> None:
        """Remove entry ``key`` if present."""
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass

    # ---------------------------------------------------------------- reading
    def has(self, key: str) -> bool:
        """Whether a file exists for ``key`` (not verified; see :meth:`get`)."""
        return self.path(key).is_file()

    def keys(self) -> list[str]:
        """Keys of the entries present, sorted; temporary files of writers are never listed."""
        out: list[str] = []
        if not self.dir.is_dir():
            return out
        for shard in self.dir.iterdir():
            if not shard.is_dir():
                continue
            for f in shard.iterdir():
                name = f.name
                if name.startswith(".") or not name.endswith(ENTRY_SUFFIX):
                    continue
                out.append(name[: -len(ENTRY_SUFFIX)])
        return sorted(out)

    def __contains__(self, key: str) -> bool:
        return self.has(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, meta)`` of ``key``, or None when absent or unusable (corrupt entries are deleted)."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cache entry %s cannot be read (%s); ignoring it", path, exc)
            return None
        result = _decode_entry(data)
        if isinstance(result, str):
            self._discard(path, stat, result)
            return None
        return result

    def _discard(self, path: Path, stat: os.stat_result, why: str) -> None:
        """Warn about and delete a bad entry, unless another writer has replaced it since we read it."""
        logger.warning("cache entry %s is unusable (%s): deleting it, it will be recomputed", path, why)
        try:
            now = os.stat(path)
            if (now.st_ino, now.st_size, now.st_mtime_ns) == (stat.st_ino, stat.st_size, stat.st_mtime_ns):
                os.unlink(path)
        except OSError:
            pass

    # ---------------------------------------------------------------- housekeeping
    def clean_temp_files(self, older_than_s: float = STALE_TEMP_AGE_S) -> int:
        """Delete writers' temporary files older than ``older_than_s`` seconds (crash leftovers); return the count.

        Young temporary files are kept: they may belong to a writer still running.
        """
        if not self.dir.is_dir():
            return 0
        limit = time.time() - older_than_s
        removed = 0
        for shard in self.dir.iterdir():
            if not shard.is_dir():
                continue
            for f in shard.iterdir():
                if not (f.name.startswith(".") and f.name.endswith(TEMP_SUFFIX)):
                    continue
                try:
                    if f.stat().st_mtime <= limit:
                        f.unlink()
                        removed += 1
                except OSError:
                    pass
        if removed:
            logger.info("removed %d stale temporary file(s) from %s", removed, self.dir)
        return removed


def _decode_entry(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]] | str:
    """Parse and verify one entry file; return ``(arrays, meta)`` or a string saying what is wrong."""
    import safetensors.numpy

    if len(data) < 8:
        return f"{len(data)} bytes, too short"
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        return "not a safetensors file (bad header length)"
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "not a safetensors file (unreadable header)"
    head_meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(head_meta, dict) or _SHA_KEY not in head_meta or _META_KEY not in head_meta:
        return "not a sparsega cache entry (no checksum)"
    if head_meta.get(_VERSION_KEY) != str(FORMAT_VERSION):
        return f"unknown entry format version {head_meta.get(_VERSION_KEY)!r}"
    try:
        arrays = dict(safetensors.numpy.load(data))
    except Exception as exc:  # noqa: BLE001 - any parser failure means a damaged file
        return f"damaged tensor data ({type(exc).__name__})"
    meta_json = head_meta[_META_KEY]
    if _content_digest(arrays, meta_json) != head_meta[_SHA_KEY]:
        return "checksum mismatch"
    try:
        meta = json.loads(meta_json)
    except ValueError:
        return "unreadable meta"
    if not isinstance(meta, dict):
        return "meta is not a mapping"
    return arrays, meta


# -------------------------------------------------------------------- keys
def pair_key(image_hash_a: str, image_hash_b: str, preprocess: str, model_identity: str, extra: str = "") -> str:
    """Stable sha256 hex key of the prediction of the ordered pair (a, b).

    Args:
        image_hash_a, image_hash_b: content hashes of the two images (e.g. :func:`hash_file`), not their paths, so
            renaming or moving photos keeps the cache valid.
        preprocess: description of the preprocessing (e.g. ``"size=512,crop=center16"``).
        model_identity: checkpoint identity (e.g. sha256 of the checkpoint file).
        extra: matching parameters (e.g. ``"subsample=8,desc_conf=desc_conf"``).

    (a, b) and (b, a) get different keys; callers wanting one entry per unordered pair should order the hashes and
    use :meth:`PairPrediction.swapped`.
    """
    fields = ["sparsega-pair", FORMAT_VERSION, image_hash_a, image_hash_b, preprocess, model_identity, extra]
    for value in fields[2:]:
        if not isinstance(value, str):
            raise CacheError(f"pair_key: expected strings, got {type(value).__name__}")
    return hashlib.sha256(json.dumps(fields).encode("utf-8")).hexdigest()


def hash_bytes(data: bytes) -> str:
    """sha256 hex of ``data``."""
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 hex of a file's content (streamed), e.g. an image or a checkpoint."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_array(arr: np.ndarray) -> str:
    """sha256 hex of an array's dtype, shape and bytes (e.g. a preprocessed image)."""
    arr = _native(arr)
    h = hashlib.sha256(json.dumps([arr.dtype.str, list(arr.shape)]).encode())
    h.update(arr.tobytes(order="C"))
    return h.hexdigest()


# -------------------------------------------------------------------- cache root
@dataclass(frozen=True)
class CacheInfo:
    """Content of ``root/meta.json``."""

    format_version: int
    model_identity: str
    created: str


_UNREADABLE = -1


class CacheDir:
    """A cache root bound to one checkpoint: ``root/meta.json`` records who wrote it.

    Args:
        root: the folder (created if missing).
        model_identity: identity of the checkpoint whose predictions go in (e.g. its sha256).
        reset: wipe the entries of an existing cache (``--overwrite-cache``) instead of refusing a mismatch.

    Raises:
        CacheError: the folder was written by another checkpoint or with an unknown format version (unless
            ``reset``), or it cannot be created.
    """

    def __init__(self, root: str | os.PathLike[str], model_identity: str, reset: bool = False) -> None:
        self.root = Path(root)
        if not isinstance(model_identity, str) or not model_identity:
            raise CacheError("CacheDir: model_identity must be a non-empty string")
        self.model_identity = model_identity
        if self.root.exists() and not self.root.is_dir():
            raise CacheError(f"cache folder {self.root} is a file, not a folder: use another --cache-dir")
        info = self._read_info()
        if info is not None and not reset:
            if info.format_version == _UNREADABLE:
                raise CacheError(
                    f"cache folder {self.root} has an unreadable {META_FILE}: use another --cache-dir or "
                    "--overwrite-cache"
                )
            if info.format_version != FORMAT_VERSION:
                raise CacheError(
                    f"cache folder {self.root} has format version {info.format_version}, this sparsega uses "
                    f"{FORMAT_VERSION}: use another --cache-dir or --overwrite-cache"
                )
            if info.model_identity != model_identity:
                raise CacheError(
                    f"cache folder {self.root} was written by checkpoint {info.model_identity}, not "
                    f"{model_identity}: use another --cache-dir or --overwrite-cache"
                )
            self.info = info
            return
        if reset:
            self._wipe()
        self.info = CacheInfo(FORMAT_VERSION, model_identity, datetime.now(timezone.utc).isoformat())
        data = json.dumps(
            {
                "format_version": self.info.format_version,
                "model_identity": self.info.model_identity,
                "created": self.info.created,
            },
            indent=1,
        )
        atomic_write_bytes(self.root / META_FILE, data.encode("utf-8"))

    def __repr__(self) -> str:
        return f"CacheDir({str(self.root)!r}, {self.model_identity!r})"

    def _read_info(self) -> CacheInfo | None:
        """The recorded identity, None if there is no meta.json; CacheError when it is unreadable."""
        path = self.root / META_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError):
            raw = None
        if not isinstance(raw, dict):
            return CacheInfo(_UNREADABLE, "", "")
        version = raw.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            version = _UNREADABLE
        return CacheInfo(version, str(raw.get("model_identity")), str(raw.get("created", "")))

    def _wipe(self) -> None:
        """Delete the stores (folders holding only entry/temporary files) and meta.json; keep anything else."""
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child.is_dir() and _looks_like_store(child):
                shutil.rmtree(child, ignore_errors=True)
            elif child.is_dir() or child.name != META_FILE:
                logger.warning("cache reset: keeping %s, which was not written by sparsega", child)
        try:
            (self.root / META_FILE).unlink()
        except FileNotFoundError:
            pass

    def store(self, namespace: str) -> ArrayStore:
        """The :class:`ArrayStore` of ``namespace`` in this root."""
        return ArrayStore(self.root, namespace)


def _looks_like_store(folder: Path) -> bool:
    """True if ``folder`` only holds shard folders of entry or temporary files (what ArrayStore writes)."""
    for shard in folder.iterdir():
        if not shard.is_dir():
            return False
        for f in shard.iterdir():
            if not f.is_file() or not (f.name.endswith(ENTRY_SUFFIX) or f.name.endswith(TEMP_SUFFIX)):
                return False
    return True


# -------------------------------------------------------------------- PairPrediction helpers
def save_pair(store: ArrayStore, key: str, pred: PairPrediction) -> None:
    """Store ``pred`` losslessly under ``key`` (arrays as given; ``pred.i``/``pred.j`` are not stored)."""
    arrays = {name: getattr(pred, name) for name in PAIR_FIELDS}
    score = None if pred.score is None else [float(pred.score[0]), float(pred.score[1]), int(pred.score[2])]
    store.put(key, arrays, {"kind": _PAIR_KIND, "score": score})


def load_pair(store: ArrayStore, key: str, i: int, j: int) -> PairPrediction | None:
    """The prediction stored under ``key`` as pair ``(i, j)``, or None (absent, corrupt or not a pair entry)."""
    got = store.get(key)
    if got is None:
        return None
    arrays, meta = got
    missing = [name for name in PAIR_FIELDS if name not in arrays]
    if meta.get("kind") != _PAIR_KIND or missing:
        logger.warning("cache entry %s is not a pair prediction; ignoring it", store.path(key))
        return None
    score = meta.get("score")
    pred = PairPrediction(
        i=int(i),
        j=int(j),
        **{name: arrays[name] for name in PAIR_FIELDS},
        score=None if score is None else (float(score[0]), float(score[1]), int(score[2])),
    )
    return pred


__all__ = [
    "ArrayStore",
    "CacheDir",
    "CacheInfo",
    "FORMAT_VERSION",
    "atomic_write_bytes",
    "hash_array",
    "hash_bytes",
    "hash_file",
    "load_pair",
    "pair_key",
    "save_pair",
]
