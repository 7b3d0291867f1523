"""The MASt3R / DUSt3R two-view network: own implementation, loads the official checkpoints."""

from __future__ import annotations

from .checkpoint import build_net, config_from_constructor, load_checkpoint, parse_constructor, read_checkpoint
from .net import MASt3RNet, NetConfig

__all__ = [
    "MASt3RNet",
    "NetConfig",
    "build_net",
    "config_from_constructor",
    "load_checkpoint",
    "parse_constructor",
    "read_checkpoint",
]
