"""Which device runs the network and the alignment: ``"auto"`` (the default everywhere) is CUDA when present, else
Apple MPS when present, else the CPU; explicit ``"cpu"``, ``"cuda"``, ``"cuda:k"`` and ``"mps"`` are checked
against what this machine has, with a clear error instead of a failure deep inside torch. torch is imported only
when a device is resolved, so that configs stay cheap to build."""

from __future__ import annotations

import logging
import re

from .errors import ConfigError

log = logging.getLogger(__name__)

DEVICE_HELP = "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:k or mps"
_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_announced: set[str] = set()


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def best_device() -> str:
    """``"cuda"`` if a CUDA device is usable, else ``"mps"`` if Apple's Metal backend is, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


def check_device(spec: object) -> str:
    """``spec`` as a device string, validated by form only (``auto`` stays ``auto``); for configs."""
    text = str(spec).strip().lower()
    if not _PATTERN.match(text):
        raise ConfigError(f"device={spec!r}: must be {DEVICE_HELP}")
    return text


def resolve_device(spec: object = "auto") -> str:
    """The concrete device for ``spec``: ``auto`` becomes :func:`best_device` (logged once per process and
    choice); an explicit device this machine lacks is a :class:`ConfigError`."""
    text = check_device(spec)
    if text == "auto":
        text = best_device()
        if text not in _announced:
            _announced.add(text)
            log.info("device: %s (auto)", text)
        return text
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec!r}: CUDA is not available here (use 'auto' or 'cpu')")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if text == "mps" and not _mps_available():
        raise ConfigError(f"device={spec!r}: Apple MPS is not available here (use 'auto' or 'cpu')")
    return text


__all__ = ["DEVICE_HELP", "best_device", "check_device", "resolve_device"]
