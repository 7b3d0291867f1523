"""The Ray actor of distributed pair inference (:mod:`.distributed` is the driver): one network per worker
process, running its group of decoder batches through the very functions of :mod:`.inference` and writing every
pair into the shared cache as soon as it is done."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .images import LoadedImage

logger = logging.getLogger(__name__)

Batch = list[tuple[int, int]]


class PairWorker:
    """Ray actor body: one network per worker process, groups of batches computed into the shared cache.

    ``threads``: torch intra-op threads (CPU kernels split their sums by thread count, so bit-identical results
    need the count of the run they are compared with). ``crash_after`` is a fault-injection hook for tests
    (``_fault_injection``): ``(marker_path, n)``; the first process to save its n-th pair creates ``marker_path``
    (listing the keys it saved) and exits hard, as a killed worker would.
    """

    def __init__(
        self,
        checkpoint_path: str,
        device: str = "cpu",
        threads: int | None = None,
        crash_after: tuple[str, int] | None = None,
    ) -> None:
        import torch

        from .model import load_checkpoint

        if threads is not None:
            torch.set_num_threads(threads)
        self.net = load_checkpoint(Path(checkpoint_path), device=device)
        self.crash_after = crash_after
        self.saved_here: list[str] = []
        logger.info("worker %d: loaded %s", os.getpid(), checkpoint_path)

    def identity(self) -> str:
        """Cache identity of the loaded network."""
        return str(self.net.identity)

    def _saved(self, key: str) -> None:
        self.saved_here.append(key)
        if self.crash_after is None or len(self.saved_here) < self.crash_after[1]:
            return
        try:
            fd = os.open(self.crash_after[0], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, "\n".join(self.saved_here).encode())
        os.fsync(fd)
        os.close(fd)
        os._exit(1)

    def run(
        self,
        images: list[LoadedImage],
        batches: list[Batch],
        cache_root: str,
        subsample: int,
        desc_conf: str,
        batch_size: int,
        autocast: str | None,
        storage: str = "compact",
    ) -> dict[str, Any]:
        """Compute the batches not complete in the cache; returns counts and the keys written."""
        import torch

        from .cache import CacheDir, PairKeys, save_pair
        from .inference import CACHE_NAMESPACE, _autocast_ctx, _decode_batch, _FeatureBank, predict_pair

        net = self.net
        identity = net.identity
        store = CacheDir(cache_root, identity).store(CACHE_NAMESPACE)

        keys = PairKeys(identity, subsample, desc_conf, storage)

        def key(i: int, j: int) -> str:
            return keys.key(images[i], images[j])

        def cached(i: int, j: int) -> bool:
            return store.has(key(i, j)) or store.has(key(j, i))

        todo = [b for b in batches if not all(cached(i, j) for i, j in b)]
        written: list[str] = []
        if not todo:
            return {"written": written, "computed": 0, "skipped_batches": len(batches), "encoded": 0}
        pending = np.array([p for b in todo for p in b], dtype=np.int64).reshape(-1, 2)
        bank = _FeatureBank(net, images, pending, batch_size)
        computed = 0
        with torch.inference_mode(), _autocast_ctx(autocast, net.device):
            for batch in todo:
                shape1, shape2 = images[batch[0][0]].true_shape, images[batch[0][1]].true_shape
                outs = _decode_batch(net, bank, batch, shape1, shape2)
                for (i, j), (r11, r21, r22, r12) in zip(batch, outs):
                    pred = predict_pair(i, j, r11, r21, r22, r12, subsample=subsample, desc_conf=desc_conf)
                    computed += 1
                    bank.release(i, j)
                    if not cached(i, j):  # a batch cut by a crash: only its missing members are written
                        save_pair(store, key(i, j), pred, storage)
                        written.append(key(i, j))
                        self._saved(key(i, j))
        return {
            "written": written,
            "computed": computed,
            "skipped_batches": len(batches) - len(todo),
            "encoded": len(bank.encoded),
        }
