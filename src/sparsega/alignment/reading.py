"""How :func:`.problem.build_problem` reads the pairs of a lazy prediction sequence (e.g. the on-disk cache): each
pair once if possible (its second image's maps kept until that image is fused, within a budget), and ahead of use
on a background thread where the sequence allows it."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..types import PairPrediction

# bytes of maps kept between the fusions of a pair's two images (LaterMaps): a window graph in index order needs a
# few pairs' worth; long-range pairs beyond the budget are read again when their second image is fused
STASH_BYTES = 512 << 20


class LaterMaps:
    """A pair's second-image maps ``(pts, conf)``, kept from the moment the pair is read for its first image until
    its second image is fused, up to ``budget`` bytes (beyond it, nothing is kept and the pair is read again)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def put(self, key: int, pts: np.ndarray, conf: np.ndarray) -> None:
        size = int(np.asarray(pts).nbytes + np.asarray(conf).nbytes)
        if self.used + size <= self.budget:
            self.maps[key] = (pts, conf)
            self.used += size

    def pop(self, key: int) -> tuple[np.ndarray, np.ndarray] | None:
        got = self.maps.pop(key, None)
        if got is not None:
            self.used -= int(np.asarray(got[0]).nbytes + np.asarray(got[1]).nbytes)
        return got


class ReadAhead:
    """``preds[k]`` for the keys of ``order``, read ``depth`` ahead of use on one background thread: a cached pair's
    file read, checksum and decoding (mostly outside the GIL) overlap the fusion of the image before. Keys asked
    for out of ``order`` are read directly. Only for sequences that declare ``thread_safe_reads``."""

    def __init__(self, preds: Sequence[PairPrediction], order: Sequence[int], depth: int = 4) -> None:
        self.preds, self.order, self.depth = preds, list(order), depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sparsega-read")
        self.pending: dict[int, Future[PairPrediction]] = {}
        self.next = 0
        self._fill()

    def _fill(self) -> None:
        while self.next < len(self.order) and len(self.pending) < self.depth:
            k = self.order[self.next]
            self.next += 1
            self.pending[k] = self.pool.submit(self.preds.__getitem__, k)

    def __getitem__(self, k: int) -> PairPrediction:
        fut = self.pending.pop(k, None)
        out = fut.result() if fut is not None else self.preds[k]
        self._fill()
        return out

    def close(self) -> None:
        for fut in self.pending.values():
            fut.cancel()
        self.pool.shutdown(wait=True)
