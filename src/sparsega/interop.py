"""Interoperability with naver's tools: read and write a MASt3R cache folder (``forward/`` pair predictions and
``corres_conf=.../`` matches, named by the md5 of the image paths). The stable entry point the shared benchmark's
adapter uses; the implementation is :mod:`sparsega.io.mast3r_cache`."""

from __future__ import annotations

from .io.mast3r_cache import read_mast3r_cache, write_mast3r_cache

__all__ = ["read_mast3r_cache", "write_mast3r_cache"]
