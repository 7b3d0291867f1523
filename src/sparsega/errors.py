"""Exception types.

Every error a user can cause (bad files, bad options, a wrong checkpoint, a scene that cannot be aligned)
is a :class:`SparsegaError` with a one-line message naming the culprit; the CLI turns those into exit code 2.
Anything else escaping the library is a bug (exit code 1).
"""

from __future__ import annotations


class SparsegaError(Exception):
    """Base class of the errors a user can cause and fix."""


class InputError(SparsegaError, ValueError):
    """A bad input: missing/corrupt file, wrong shape, non-finite values, unknown image name."""


class ConfigError(SparsegaError, ValueError):
    """A bad option: unknown name, value out of range, unknown mode."""


class CheckpointError(SparsegaError):
    """A file that is not a usable MASt3R/DUSt3R checkpoint."""


class GraphError(SparsegaError):
    """The views cannot be aligned together (e.g. the match graph is disconnected)."""


class CacheError(SparsegaError):
    """A cache folder that cannot be used (e.g. written by another checkpoint)."""


def one_line(msg: object) -> str:
    """``msg`` as one line of text (whitespace runs collapsed), for error messages and the CLI."""
    return " ".join(str(msg).split()) or "unknown error"
