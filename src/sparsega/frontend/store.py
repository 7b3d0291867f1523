"""The array store under the prediction cache: content-checked safetensors entries, written atomically.

- entries are safetensors files (tensors + string metadata), a format that cannot carry code; nothing is unpickled;
- every entry carries a sha256 of its content (metadata, tensor names, dtypes, shapes and bytes) checked on read:
  a corrupt, truncated or foreign file is logged, deleted and reported as a miss, so the caller recomputes;
- writes are atomic (temporary file in the same folder, fsync, ``os.replace``): readers see the old entry, the new
  one or none, never half a file; concurrent writers of one key are safe (the last rename wins, both are valid).

Layout: ``<root>/<namespace>/<key[:2]>/<key>.safetensors``. Content hashes of files and arrays live here too.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheError
from ..fsutil import TEMP_SUFFIX, atomic_write_bytes

logger = logging.getLogger("sparsega.frontend.cache")  # one logger for the cache and its store

FORMAT_VERSION = 1
"""Version of both ``meta.json`` and the entry files; bumped when either changes incompatibly."""

ENTRY_SUFFIX = ".safetensors"
STALE_TEMP_AGE_S = 3600.0
"""A temporary file older than this is the leftover of a crashed writer and may be removed."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,199}$")
_META_KEY = "sparsega.meta"
_SHA_KEY = "sparsega.sha256"
_VERSION_KEY = "sparsega.format_version"


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

    def peek(
        self, key: str, names: tuple[str, ...]
    ) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]], dict[str, Any]]:
        """Arrays ``names`` of entry ``key``, the shapes of all its arrays and its meta, reading only the file's
        header and those arrays' bytes (an index of a large entry without loading it). Not checksum-verified:
        :meth:`get` verifies the whole entry when it is used. :class:`~sparsega.errors.CacheError` if the entry is
        absent or its header is unreadable."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = _read_header(f.read, size)
                if isinstance(head, str):
                    raise CacheError(f"cache entry {path} is unusable ({head})")
                header, head_meta, base = head
                meta = _parse_meta(head_meta[_META_KEY])
                if isinstance(meta, str):
                    raise CacheError(f"cache entry {path} is unusable ({meta})")
                arrays: dict[str, np.ndarray] = {}
                for name in names:
                    info = header.get(name)
                    if not isinstance(info, dict) or info.get("dtype") not in _ST_DTYPES:
                        raise CacheError(f"cache entry {path} has no readable array {name!r}")
                    begin, end = (int(v) for v in info["data_offsets"])
                    dtype = np.dtype(_ST_DTYPES[info["dtype"]])
                    shape = tuple(int(v) for v in info["shape"])
                    nbytes = dtype.itemsize * int(np.prod(shape))
                    if not 0 <= begin <= end or base + end > size or end - begin != nbytes:
                        raise CacheError(f"cache entry {path}: array {name!r} lies outside the file")
                    f.seek(base + begin)
                    arrays[name] = np.frombuffer(f.read(end - begin), dtype=dtype).reshape(shape)
        except FileNotFoundError:
            raise CacheError(f"cache entry {path} is missing") from None
        except OSError as exc:
            raise CacheError(f"cache entry {path} cannot be read ({exc})") from exc
        shapes = {k: tuple(int(v) for v in info["shape"]) for k, info in header.items() if isinstance(info, dict)}
        return arrays, shapes, meta

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


# safetensors dtype names -> numpy (the kinds ArrayStore.put accepts)
_ST_DTYPES = {
    "BOOL": "?", "U8": "u1", "I8": "i1", "U16": "<u2", "I16": "<i2", "F16": "<f2", "U32": "<u4", "I32": "<i4",
    "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8",
}  # fmt: skip


def _read_header(read: Callable[[int], bytes], size: int) -> tuple[dict[str, Any], dict[str, Any], int] | str:
    """The header of an entry of ``size`` bytes whose bytes ``read(n)`` returns in order (a file's or a buffer's):
    ``(tensor table, sparsega metadata, data offset)``, or a string saying what is wrong. The one parser behind
    :func:`_decode_entry` (whole entry, verified) and :meth:`ArrayStore.peek` (header and a few arrays)."""
    first = read(8)
    if len(first) < 8:
        return f"{len(first)} bytes, too short"
    n = int.from_bytes(first, "little")
    if n <= 0 or 8 + n > size:
        return "not a safetensors file (bad header length)"
    try:
        header = json.loads(read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "not a safetensors file (unreadable header)"
    head_meta = header.pop("__metadata__", None) if isinstance(header, dict) else None
    if not isinstance(head_meta, dict) or _SHA_KEY not in head_meta or _META_KEY not in head_meta:
        return "not a sparsega cache entry (no checksum)"
    if head_meta.get(_VERSION_KEY) != str(FORMAT_VERSION):
        return f"unknown entry format version {head_meta.get(_VERSION_KEY)!r}"
    return header, head_meta, 8 + n


def _parse_meta(meta_json: str) -> dict[str, Any] | str:
    """The entry's meta dict from its JSON, or a string saying what is wrong."""
    try:
        meta = json.loads(meta_json)
    except ValueError:
        return "unreadable meta"
    return meta if isinstance(meta, dict) else "meta is not a mapping"


def _decode_entry(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]] | str:
    """Parse and verify one entry file; return ``(arrays, meta)`` or a string saying what is wrong."""
    import safetensors.numpy

    head = _read_header(io.BytesIO(data).read, len(data))
    if isinstance(head, str):
        return head
    head_meta = head[1]
    try:
        arrays = dict(safetensors.numpy.load(data))
    except Exception as exc:  # noqa: BLE001 - any parser failure means a damaged file
        return f"damaged tensor data ({type(exc).__name__})"
    meta_json = head_meta[_META_KEY]
    if _content_digest(arrays, meta_json) != head_meta[_SHA_KEY]:
        return "checksum mismatch"
    meta = _parse_meta(meta_json)
    return meta if isinstance(meta, str) else (arrays, meta)


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
