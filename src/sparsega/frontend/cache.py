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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import CacheError
from ..fsutil import TEMP_SUFFIX, atomic_write_bytes
from ..types import PairPrediction
from .images import LoadedImage
from .pair_entry import (
    CROSS_STEP,
    STORAGE_CHOICES,
    as_stored,
    check_storage,
    load_pair,
    load_pair_header,
    save_pair,
)
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


# -------------------------------------------------------------------- pair entries of a scene graph
def _preprocess_tag(im: LoadedImage) -> str:
    """Everything about an image's preparation that changes the network input (besides the file content)."""
    return f"size={im.size},resized={im.resized_size[0]}x{im.resized_size[1]},crop={','.join(map(str, im.crop_box))}"


@dataclass(frozen=True)
class PairKeys:
    """What a pair entry's key depends on besides the two images: the checkpoint, the matching parameters and the
    storage form. One per run; :meth:`key` names the entry of an ordered image pair."""

    model_identity: str
    subsample: int
    desc_conf: str
    storage: str = "float32"

    def key(self, im_a: LoadedImage, im_b: LoadedImage) -> str:
        """Cache key of the ordered pair (a, b): content hashes and preprocessing of both images, and this
        object's fields (``float32`` entries keep the keys they had before the compact form existed)."""
        preprocess = json.dumps([_preprocess_tag(im_a), _preprocess_tag(im_b)])
        extra = f"subsample={int(self.subsample)},desc_conf={self.desc_conf}"
        if check_storage(self.storage) != "float32":
            extra += f",storage={self.storage}"
        return pair_key(im_a.content_hash, im_b.content_hash, preprocess, self.model_identity, extra)


def pair_cache_key(
    im_a: LoadedImage,
    im_b: LoadedImage,
    model_identity: str,
    subsample: int,
    desc_conf: str,
    storage: str = "float32",
) -> str:
    """Cache key of the ordered pair (a, b) (:meth:`PairKeys.key`)."""
    return PairKeys(model_identity, subsample, desc_conf, storage).key(im_a, im_b)


def _cache_find(
    store: ArrayStore, images: Sequence[LoadedImage], i: int, j: int, keys: PairKeys
) -> tuple[str, bool, PairPrediction] | None:
    """The readable cache entry of (i, j) in either orientation: ``(key, swapped, prediction as stored)``
    (``swapped``: stored as (j, i)), or None."""
    key = keys.key(images[i], images[j])
    pred = load_pair(store, key, i, j)
    if pred is not None:
        return key, False, pred
    if i != j:
        key = keys.key(images[j], images[i])
        pred = load_pair(store, key, j, i)
        if pred is not None:
            return key, True, pred
    return None


def _cache_lookup(
    store: ArrayStore, images: Sequence[LoadedImage], i: int, j: int, keys: PairKeys
) -> PairPrediction | None:
    """The cached prediction of (i, j), stored in either orientation."""
    hit = _cache_find(store, images, i, j, keys)
    if hit is None:
        return None
    return hit[2].swapped() if hit[1] else hit[2]


class CachedPredictions(Sequence[PairPrediction]):
    """Pair predictions read from the on-disk cache on access: only the pair being used is in memory, so a
    thousand-view scene's full-resolution maps are streamed, never held together (``run_pairs(stream=True)``).

    ``entries``: one ``(i, j, key, swapped)`` per pair (``swapped``: stored as (j, i)). Reads share no state, so
    the alignment may read ahead on a background thread (``thread_safe_reads``)."""

    thread_safe_reads = True

    def __init__(self, store: ArrayStore, entries: Sequence[tuple[int, int, str, bool]]) -> None:
        self.store = store
        self.entries = list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, k: int) -> PairPrediction:  # type: ignore[override]
        i, j, key, swapped = self.entries[k]
        pred = load_pair(self.store, key, j, i) if swapped else load_pair(self.store, key, i, j)
        if pred is None:
            raise CacheError(
                f"pair ({i}, {j}) disappeared from the cache {self.store.root} while in use "
                "(deleted or corrupted meanwhile?): run again"
            )
        return pred.swapped() if swapped else pred

    def pair_header(self, k: int) -> PairPrediction:
        """Pair ``k``'s matches and map shapes, read from its entry's header and match arrays only (the
        :class:`~sparsega.types.PairPrediction` header protocol: the alignment indexes a cached scene without
        loading and decoding every pointmap once more)."""
        i, j, key, swapped = self.entries[k]
        try:
            head = load_pair_header(self.store, key, j, i) if swapped else load_pair_header(self.store, key, i, j)
        except CacheError as exc:
            raise CacheError(f"pair ({i}, {j}): {exc}: run again to recompute it") from None
        return head.swapped() if swapped else head

    @property
    def pairs(self) -> np.ndarray:
        """(P, 2) image indices of the pairs, in order."""
        return np.array([(i, j) for i, j, _, _ in self.entries], dtype=np.int64).reshape(-1, 2)


__all__ = [
    "ArrayStore",
    "CachedPredictions",
    "CROSS_STEP",
    "STORAGE_CHOICES",
    "as_stored",
    "check_storage",
    "CacheDir",
    "CacheInfo",
    "FORMAT_VERSION",
    "atomic_write_bytes",
    "hash_array",
    "hash_bytes",
    "hash_file",
    "load_pair",
    "load_pair_header",
    "PairKeys",
    "pair_cache_key",
    "pair_key",
    "save_pair",
]
