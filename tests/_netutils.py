"""Helpers for the network-front-end tests: seeded photos, call counting on a network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sparsega.frontend.model import MASt3RNet


def write_images(folder: Path, shapes: list[tuple[int, int]], seed: int = 0) -> list[str]:
    """Smooth seeded RGB PNGs of the given (H, W) shapes; returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for k, (h, w) in enumerate(shapes):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        f = rng.uniform(2, 9, size=(3, 2))
        img = np.stack([127 + 100 * np.sin(f[c, 0] * xx + f[c, 1] * yy + k) for c in range(3)], axis=-1)
        path = folder / f"img{k}.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


class CallCounter:
    """Wraps a network's encode/decode_pair to count calls and encoded images."""

    def __init__(self, net: MASt3RNet, monkeypatch: pytest.MonkeyPatch) -> None:
        self.encode_calls = 0
        self.encoded_images = 0
        self.decode_calls = 0
        encode, decode = net.encode, net.decode_pair

        def counted_encode(img: torch.Tensor) -> Any:
            self.encode_calls += 1
            self.encoded_images += img.shape[0]
            return encode(img)

        def counted_decode(*args: Any) -> Any:
            self.decode_calls += 1
            return decode(*args)

        monkeypatch.setattr(net, "encode", counted_encode)
        monkeypatch.setattr(net, "decode_pair", counted_decode)
