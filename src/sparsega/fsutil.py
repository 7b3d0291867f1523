"""Atomic file-system updates shared by the cache, the scene store and the exporters: a file written through a
temp file and ``os.replace``, a folder staged next to its destination and renamed into place. A failed or
interrupted write never leaves a half-written file or folder behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import CacheError, InputError

PathLike = str | os.PathLike

TEMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``.

    Raises :class:`CacheError` naming the file when the disk refuses (full, read-only, permissions).
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as exc:
        raise CacheError(f"cannot write cache file {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def replace_dir(src: Path, dest: Path) -> None:
    """Move the folder ``src`` to ``dest``, replacing any existing ``dest`` without a moment where neither exists
    under ``dest``'s name: the old folder is renamed aside first and deleted after."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.replace(dest, old / dest.name)
    try:
        os.replace(src, dest)
    except BaseException:
        if old is not None:  # put the previous folder back
            os.replace(old / dest.name, dest)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out_dir: PathLike, overwrite: bool = False, merge: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder next to ``out_dir``; on success move its content into place, on failure delete
    it (``out_dir`` untouched).

    ``merge=False``: ``out_dir`` is replaced as a whole (refused if it exists, unless ``overwrite``).
    ``merge=True``: each produced entry replaces the same name inside the existing ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.exists() and not merge and not overwrite:
        raise InputError(f"{out}: output folder exists (use --overwrite to replace it)")
    if merge and not out.is_dir():
        raise InputError(f"{out}: no such folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        yield tmp
        if merge:
            for entry in sorted(tmp.iterdir()):
                dest = out / entry.name
                if dest.is_dir() and not dest.is_symlink():
                    old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old.", dir=out))
                    os.replace(dest, old / entry.name)
                    os.replace(entry, dest)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(entry, dest)
            tmp.rmdir()
        else:
            replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
