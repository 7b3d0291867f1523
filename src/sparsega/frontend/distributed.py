"""Pair inference spread over a Ray cluster, with the same results as a single-process run, bit for bit.

How it works:

- the driver checks the shared cache first; what is missing is cut into the decoder batches a local
  :func:`~sparsega.frontend.inference.run_pairs` would use (same batch size, same order), so every pair is decoded
  in the same company as in a local run; equal batches give equal floating-point results;
- the batches are partitioned into one group per worker by a greedy partition of the scene graph (each batch goes
  to the group whose images it shares most, within an even share of the pairs), so few images are encoded by more
  than one worker;
- each worker is a Ray actor that loads the checkpoint ONCE and runs its group through the very functions of
  :mod:`sparsega.frontend.inference` (encoder bank, batched symmetric decoding, matching, score), encoding each of its
  images once; every pair is written to the shared content-addressed cache as soon as it is done (atomic writes),
  and only keys and counts travel back;
- the driver then loads every pair from the cache, in graph order.

Faults: actors are restarted (``max_restarts``) and their calls retried (``max_task_retries``). A retried group
skips the batches already complete in the cache and recomputes the others whole (a batch cut by the crash is
decoded again with the same members, so its results do not change); an entry already on disk is never written
again. Nothing finished is lost, nothing is written twice.

Requirements: the cache folder must be visible to every worker under the same path (a shared file system on a
multi-machine cluster), and so must the checkpoint. With a local cluster (``ray_address=None``) and no cache folder,
a temporary one is used and removed afterwards.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheError, ConfigError, InputError, SparsegaError
from ..types import PairPrediction
from .images import LoadedImage, load_images
from .ray_worker import Batch, PairWorker

logger = logging.getLogger(__name__)

RAY_MISSING = "distributed inference needs Ray: pip install 'sparsega[ray]'"
DEFAULT_WORKERS = 2
MAX_RESTARTS = 3
"""Restarts of a worker actor (and retries of its call) before the run fails."""


def _import_ray() -> Any:
    """The ``ray`` module, or :class:`ConfigError` telling how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


# -------------------------------------------------------------------- partition
def partition_batches(batches: Sequence[Batch], n_groups: int) -> list[list[int]]:
    """Split decoder batches into at most ``n_groups`` groups of about equal pair counts sharing few images.

    Greedy: batches are visited by the median of their image indices (scene graphs of sequences put neighbours at
    neighbouring indices) and each joins the group, among those with room left under ``ceil(P / n_groups)`` pairs,
    that already holds most of its images (ties: lightest group); when none has room, the lightest one.
    Returns the batch indices of each non-empty group, ascending (the original order).
    """
    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 1:
        raise ConfigError(f"num_workers={n_groups!r}: must be an integer >= 1")
    total = sum(len(b) for b in batches)
    n_groups = max(1, min(int(n_groups), len(batches)))
    cap = math.ceil(total / n_groups) if total else 0
    members: list[list[int]] = [[] for _ in range(n_groups)]
    imgs: list[set[int]] = [set() for _ in range(n_groups)]
    load = np.zeros(n_groups, dtype=np.int64)
    order = sorted(range(len(batches)), key=lambda b: (float(np.median(np.asarray(batches[b]))), b))
    for b in order:
        batch = batches[b]
        need = {k for pair in batch for k in pair}
        room = [g for g in range(n_groups) if load[g] + len(batch) <= cap]
        cands = room if room else [int(np.argmin(load))]
        g = max(cands, key=lambda c: (len(need & imgs[c]), -load[c], -c))
        members[g].append(b)
        imgs[g] |= need
        load[g] += len(batch)
    return [sorted(m) for m in members if m]


def _localise(images: Sequence[LoadedImage], batches: Sequence[Batch]) -> tuple[list[LoadedImage], list[Batch]]:
    """The images a group uses (first-use order) and its batches re-indexed into that list (orientation kept)."""
    index: dict[int, int] = {}
    for batch in batches:
        for pair in batch:
            for k in pair:
                index.setdefault(k, len(index))
    local = [[(index[i], index[j]) for i, j in batch] for batch in batches]
    return [images[k] for k in index], local


# -------------------------------------------------------------------- worker
# -------------------------------------------------------------------- driver
_ERROR_LINE = re.compile(r"sparsega\.errors\.(\w+): (.+)")


def _worker_error(exc: BaseException, what: str) -> SparsegaError:
    """A one-line sparsega error for a failure inside a worker (Ray wraps the original exception)."""
    from .. import errors

    found = _ERROR_LINE.findall(str(exc))
    if found:
        cls = getattr(errors, found[-1][0], SparsegaError)
        if isinstance(cls, type) and issubclass(cls, SparsegaError):
            return cls(found[-1][1].strip())
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return SparsegaError(f"{what} failed after {MAX_RESTARTS} retries: {first}")


def _start_ray(ray: Any, ray_address: str | None, num_workers: int) -> bool:
    """Connect to (or start) a cluster; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    if ray_address is None:
        ray.init(num_cpus=num_workers, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    return True


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name}={value!r}: must be an integer >= {low}")
    return int(value)


class _FaultInjection:
    """Test-only hook, never set by library code: ``crash_after = (marker_path, n)`` makes the first worker process
    to save its n-th pair exit hard (see :class:`PairWorker`). Set it with ``monkeypatch``."""

    crash_after: tuple[str, int] | None = None


_fault_injection = _FaultInjection()


def run_pairs_ray(
    checkpoint_path: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]] | Sequence[LoadedImage],
    pairs: Any,
    *,
    cache_dir: str | os.PathLike[str] | None,
    ray_address: str | None = None,
    num_workers: int = DEFAULT_WORKERS,
    subsample: int = 8,
    desc_conf: str = "desc_conf",
    size: int = 512,
    batch_size: int = 4,
    autocast: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = True,
    stats: dict[str, Any] | None = None,
    storage: str = "compact",
) -> list[PairPrediction]:
    """Network predictions + matches for the pairs of a scene graph, computed by Ray workers.

    Same arguments and result as :func:`~sparsega.frontend.inference.run_pairs` (bit-identical predictions for the same
    ``batch_size``), plus:

    Args:
        checkpoint_path: checkpoint file, loaded once by each worker (same path on every node).
        images: image paths (loaded at ``size``) or already loaded images.
        cache_dir: the shared cache the results travel through (same path on every node). None is allowed only
            for a local cluster: a temporary folder is used, then removed.
        ray_address: ``"host:port"`` (or ``"auto"``) of a running cluster; None starts a local one with
            ``num_workers`` CPUs and shuts it down afterwards. An already initialised Ray session is reused.
        num_workers: worker actors (one logical CPU each; one GPU each when ``device`` is CUDA).
        threads: torch CPU threads per worker; None = this process's count, which the bit-for-bit equality with a
            local run needs (CPU kernels sum in an order that depends on it). 1 avoids oversubscribing cores
            when workers share a machine, at the price of last-bit differences from a multi-threaded local run.
        stats: receives ``n_pairs``, ``cache_hits``, ``computed``, ``encoded`` (summed over workers),
            ``groups`` (pairs per worker group), ``written`` (entries written).

    Raises:
        ConfigError: Ray is not installed; bad options; no cache folder with a remote cluster.
        SparsegaError: a worker kept failing after its retries.
    """
    import torch

    from .cache import CacheDir, PairKeys, check_storage
    from .inference import CACHE_NAMESPACE, DESC_CONF_CHOICES, _batches, _cache_lookup, _check_pairs

    ray = _import_ray()
    threads = torch.get_num_threads() if threads is None else _check_int("threads", threads, 1)
    num_workers = _check_int("num_workers", num_workers, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    subsample = _check_int("subsample", subsample, 1)
    if desc_conf not in DESC_CONF_CHOICES:
        raise ConfigError(f"desc_conf={desc_conf!r}: must be one of {', '.join(DESC_CONF_CHOICES)}")
    check_storage(storage)
    ckpt = Path(checkpoint_path)
    if not ckpt.is_file():
        raise InputError(f"checkpoint {ckpt} does not exist")
    if cache_dir is None and ray_address is not None:
        raise ConfigError(
            "distributed inference on a remote Ray cluster needs a cache_dir shared by all workers "
            "(--cache-dir on a shared file system)"
        )
    if len(images) == 0:
        raise InputError("no images given")
    loaded = (
        list(images)
        if all(isinstance(im, LoadedImage) for im in images)
        else load_images([os.fspath(p) for p in images], size=size)
    )  # type: ignore[arg-type]
    todo_all = _check_pairs(pairs, len(loaded))

    tmp = tempfile.TemporaryDirectory(prefix="sparsega-ray-cache-") if cache_dir is None else None
    cache_root = os.path.abspath(tmp.name if tmp is not None else os.fspath(cache_dir))  # type: ignore[arg-type]
    started = _start_ray(ray, ray_address, num_workers)
    actors: list[Any] = []
    try:
        opts: dict[str, Any] = {"num_cpus": 1, "max_restarts": MAX_RESTARTS, "max_task_retries": MAX_RESTARTS}
        if device.startswith("cuda"):
            opts["num_gpus"] = 1
        actor_cls = ray.remote(**opts)(PairWorker)
        actors += [
            actor_cls.remote(str(ckpt.resolve()), device, threads, _fault_injection.crash_after)
            for _ in range(num_workers)
        ]
        try:
            identity = ray.get(actors[0].identity.remote())
        except ray.exceptions.RayError as exc:
            raise _worker_error(exc, "starting the ray workers") from None
        store = CacheDir(cache_root, identity).store(CACHE_NAMESPACE)
        keys = PairKeys(identity, subsample, desc_conf, storage)

        def lookup(i: int, j: int) -> PairPrediction | None:
            return _cache_lookup(store, loaded, i, j, keys)

        done = {(i, j): lookup(i, j) for i, j in todo_all.tolist()}
        done = {ij: pred for ij, pred in done.items() if pred is not None}
        todo = np.array([p for p in todo_all.tolist() if tuple(p) not in done], dtype=np.int64).reshape(-1, 2)
        batches = list(_batches(todo, loaded, batch_size))
        groups = partition_batches(batches, num_workers) if batches else []
        logger.info(
            "%d pairs: %d from the cache, %d to compute in %d group(s) on %d worker(s)",
            len(todo_all),
            len(done),
            len(todo),
            len(groups),
            num_workers,
        )
        results = _run_groups(
            ray,
            actors,
            loaded,
            batches,
            groups,
            cache_root,
            (subsample, desc_conf, batch_size, autocast, storage),
            progress,
            len(todo_all),
            len(done),
        )

        preds: list[PairPrediction] = []
        for i, j in todo_all.tolist():
            pred = done.get((i, j)) or lookup(i, j)
            if pred is None:
                raise CacheError(
                    f"pair ({i}, {j}) is missing from the cache {cache_root} after the workers finished "
                    "(deleted or corrupted meanwhile?): run again"
                )
            preds.append(pred)
    finally:
        for actor in actors:  # processes and the network copies they hold
            ray.kill(actor)
        if started:
            ray.shutdown()
        if tmp is not None:
            tmp.cleanup()
    if stats is not None:
        stats.update(
            n_pairs=len(todo_all),
            cache_hits=len(done),
            computed=sum(r["computed"] for r in results),
            encoded=sum(r["encoded"] for r in results),
            written=sum(len(r["written"]) for r in results),
            groups=[sum(len(batches[b]) for b in g) for g in groups],
            workers=num_workers,
        )
    return preds


def _run_groups(
    ray: Any,
    actors: list[Any],
    images: list[LoadedImage],
    batches: list[Batch],
    groups: list[list[int]],
    cache_root: str,
    params: tuple[int, str, int, str | None, str],
    progress: bool,
    total: int,
    initial: int,
) -> list[dict[str, Any]]:
    """One call per group (group g on actor g); waits for all, with a progress bar counting pairs.

    ``params``: (subsample, desc_conf, batch_size, autocast, storage) passed to :meth:`PairWorker.run`.
    """
    from tqdm.auto import tqdm

    refs: dict[Any, int] = {}
    for g, members in enumerate(groups):
        sub, local = _localise(images, [batches[b] for b in members])
        refs[actors[g % len(actors)].run.remote(sub, local, cache_root, *params)] = g
    out: list[dict[str, Any]] = []
    bar = tqdm(total=total, initial=initial, desc="network (ray)", unit="pair", disable=not progress)
    try:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            g = refs[ready[0]]
            try:
                res = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                raise _worker_error(exc, f"ray worker of pair group {g}") from None
            out.append(res)
            bar.update(sum(len(batches[b]) for b in groups[g]))
    finally:
        bar.close()
    return out


__all__ = ["run_pairs_ray", "partition_batches", "PairWorker", "RAY_MISSING"]
