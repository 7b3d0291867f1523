"""Interoperability with other tools' files: naver's MASt3R cache folder (read and write)."""

from __future__ import annotations

from ..io.mast3r_cache import read_mast3r_cache, write_mast3r_cache

__all__ = ["read_mast3r_cache", "write_mast3r_cache"]
