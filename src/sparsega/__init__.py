"""sparsega: MASt3R sparse global alignment, from photos to cameras, depth maps and point clouds.

Public API::

    scene = sparsega.reconstruct(image_paths, checkpoint_path)    # network + alignment
    scene = sparsega.align(pair_predictions, niter1=300)          # alignment only
    net = sparsega.load_checkpoint(path)                          # the MASt3R/DUSt3R network

Submodules are imported lazily so that ``import sparsega`` stays cheap.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from .errors import CacheError, CheckpointError, ConfigError, GraphError, InputError, SparsegaError
from .types import AlignConfig, PairPrediction

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "align": ("sparsega.alignment.api", "align"),
    "reconstruct": ("sparsega.pipeline", "reconstruct"),
    "load_checkpoint": ("sparsega.frontend.model", "load_checkpoint"),
    "Scene": ("sparsega.scene", "Scene"),
}

__all__ = [
    "AlignConfig",
    "PairPrediction",
    "Scene",
    "align",
    "reconstruct",
    "load_checkpoint",
    "SparsegaError",
    "InputError",
    "ConfigError",
    "CheckpointError",
    "GraphError",
    "CacheError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sparsega' has no attribute {name!r}")
