"""Content-addressed on-disk cache of pair predictions (entries in an :class:`~.store.ArrayStore`).

Why: network inference is the expensive stage, so its outputs are kept on disk and reused across runs, processes
and machines (e.g. Ray workers sharing a folder). The store is built so that a bad file can never do harm:

- entries are content-checked safetensors files written atomically (:mod:`.store`): a bad file is a miss, never
  harm;
- a cache folder remembers which checkpoint wrote it (:class:`CacheDir`), so predictions of another network are
  never mixed in silently.

Layout: ``root/meta.json`` and ``root/<namespace>/<key[:2]>/<key>.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import CacheError
from ..fsutil import TEMP_SUFFIX, atomic_write_bytes
from ..types import PairPrediction
from .store import (
    ENTRY_SUFFIX,
    FORMAT_VERSION,
    ArrayStore,
    hash_array,
    hash_bytes,
    hash_file,
)

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
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
