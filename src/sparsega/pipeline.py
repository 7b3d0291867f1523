"""``sparsega.reconstruct``: photos + checkpoint -> :class:`~sparsega.scene.Scene`.

Stages (each timed in ``scene.info["timings_s"]``): load the images at the network size, run the network over the
scene graph (:func:`~sparsega.frontend.inference.run_pairs`, optionally cached on disk), align
(:func:`~sparsega.align`).
The scene stays in network pixels; ``scene.net_to_orig`` and ``scene.original_sizes`` carry the map back to the
original photos for exports.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .alignment.components import ComponentResult
from .devices import resolve_device
from .errors import ConfigError, InputError
from .frontend.images import LoadedImage, collect_image_paths, load_images, photo_frames
from .scene import Scene
from .types import AlignConfig, PairPrediction

logger = logging.getLogger(__name__)

DEFAULT_SIZE = 512


def _old_scene(extend: Any, known_intrinsics: Any, known_poses: Any) -> Scene | None:
    """The scene to extend (a Scene or an output folder), its photos checked to exist."""
    if extend is None:
        return None
    if known_intrinsics or known_poses:
        raise ConfigError("extend: known cameras are not supported when adding photos to a saved scene")
    if isinstance(extend, Scene):
        old = extend
    else:
        folder = Path(extend)
        old = Scene.load(folder / "scene" if (folder / "scene").is_dir() else folder)
    missing = [p for p in old.image_paths if not os.path.isfile(p)]
    if missing:
        raise InputError(f"extend: the saved scene's photo {missing[0]} is not there (its photos are re-read)")
    return old


def _dedupe(images: list[LoadedImage]) -> tuple[list[LoadedImage], dict[str, int]]:
    """Drop images whose content repeats an earlier one (warning); map every given path to its kept index."""
    kept: list[LoadedImage] = []
    by_hash: dict[str, int] = {}
    index: dict[str, int] = {}
    for im in images:
        k = by_hash.get(im.content_hash)
        if k is None:
            k = by_hash[im.content_hash] = len(kept)
            kept.append(im)
        else:
            warnings.warn(f"{im.path}: same content as {kept[k].path}; using it once", stacklevel=3)
        index[im.path] = k
    return kept, index


def _lookup(key: Any, index: Mapping[str, int], n: int, what: str) -> int:
    """Image index of a ``known_*`` key: a path as given (or the same file spelled differently) or an int index."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if not 0 <= int(key) < n:
            raise InputError(f"{what}: image index {key} out of range for {n} images")
        return int(key)
    name = os.fspath(key) if isinstance(key, (str, os.PathLike)) else None
    if name is not None:
        if name in index:
            return index[name]
        real = os.path.realpath(name)
        for path, k in index.items():
            if os.path.realpath(path) == real:
                return k
    raise InputError(f"{what}: {key!r} is not one of the input images")


def _known(values: Mapping[Any, Any] | None, index: Mapping[str, int], n: int, what: str) -> dict[int, np.ndarray]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise InputError(f"{what} must be a dict keyed by image path, got {type(values).__name__}")
    out: dict[int, np.ndarray] = {}
    for key, value in values.items():
        out[_lookup(key, index, n, what)] = np.asarray(value, dtype=np.float64)
    return out


def reconstruct(
    image_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    checkpoint_or_net: Any,
    scene_graph: str = "swin-5",
    *,
    size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite_cache: bool = False,
    device: str = "auto",
    batch_size: int = 4,
    desc_conf: str = "desc_conf",
    autocast: str | None = None,
    known_intrinsics: Mapping[Any, Any] | None = None,
    known_poses: Mapping[Any, Any] | None = None,
    progress: bool = True,
    executor: str = "local",
    ray_address: str | None = None,
    workers: int = 2,
    config: AlignConfig | None = None,
    components: bool = False,
    retrieval: str = "encoder",
    extend: Scene | str | os.PathLike[str] | None = None,
    storage: str = "compact",
    **align_overrides: Any,
) -> Scene | ComponentResult:
    """Reconstruct a scene from photos with a MASt3R (or DUSt3R) network and sparse global alignment.

    Args:
        image_paths: image files, folders or glob patterns (see :func:`~sparsega.frontend.images.collect_image_paths`).
            Images with identical content are used once (warning); a single image is paired with itself.
        checkpoint_or_net: path of an official checkpoint (.pth) or an already loaded network.
        scene_graph: pairs to run (``complete``, ``swin-k``, ``logwin-k``, ``oneref-i``, ``-noncyclic``).
        size: network image size (long side); default 512, or 224 for a 224 checkpoint.
        cache_dir: on-disk cache of the network predictions (bound to the checkpoint: another checkpoint's folder
            raises :class:`~sparsega.errors.CacheError` unless ``overwrite_cache``).
        device: for the network (when loading a path) and the alignment: ``"auto"`` (CUDA, else MPS, else CPU;
            logged once, stored in the report's config), ``"cpu"``, ``"cuda[:k]"`` or ``"mps"``.
        batch_size, desc_conf, autocast: see :func:`~sparsega.frontend.inference.run_pairs`.
        known_intrinsics: ``{path: K (3, 3)}`` in ORIGINAL image pixels (mapped to network pixels here).
        known_poses: ``{path: cam2w (4, 4)}`` (OpenCV convention, any frame and scale).
        progress: progress bars.
        executor: ``"local"`` (this process) or ``"ray"``: pair inference on ``workers`` Ray workers
            (:func:`~sparsega.frontend.distributed.run_pairs_ray`; same predictions bit for bit; needs a checkpoint
            path).
        ray_address: ``"host:port"`` of a Ray cluster (then ``cache_dir`` must be shared by all nodes); None: a
            local cluster.
        workers: Ray workers.
        config, align_overrides: alignment settings (:class:`AlignConfig` fields); ``subsample`` also sets the
            matching seed spacing.
        retrieval: the image similarity of ``retrieval-*`` scene graphs (:mod:`~sparsega.frontend.retrieval`):
            ``"encoder"`` (the network's own tokens; one extra encoder pass per image) or ``"sift"``.
        extend: a saved reconstruction (a Scene, or an output folder holding ``scene/``) to add the photos to:
            its photos are paired with the new ones (``scene_graph`` over old + new, keeping the pairs that touch a
            new photo), its cameras stay fixed, and the union is returned (:mod:`~sparsega.alignment.extend`).
        storage: how pair predictions are kept (``"compact"``: float16, cross-frame maps on every 4th pixel, a
            quarter of the bytes; ``"float32"``: lossless); see :func:`~sparsega.frontend.inference.run_pairs`.
        components: as :func:`~sparsega.alignment.api.align`: False raises
            :class:`~sparsega.errors.GraphError` when the photos split into unconnected groups, True returns a
            :class:`~sparsega.alignment.components.ComponentResult` (one Scene per group).

    Returns:
        Scene in network pixels, with ``net_to_orig`` (N, 3, 3), ``original_sizes`` ((W, H) per image),
        ``info["timings_s"]`` (load, inference, align, ...) and ``info["inference"]`` (pair/cache counts); or the
        ComponentResult of such scenes.
    """
    from .alignment.api import align
    from .frontend.cache import CacheDir, check_storage
    from .frontend.inference import run_pairs
    from .frontend.model import load_checkpoint
    from .frontend.pairs import make_pairs, needs_similarity, parse_scene_graph
    from .frontend.retrieval import SIMILARITIES, image_similarity

    device = resolve_device(device)
    cfg = (config or AlignConfig()).replace(device=device, progress=progress, **align_overrides)
    parse_scene_graph(scene_graph)  # fail on a bad name before any work
    if retrieval not in SIMILARITIES:
        raise ConfigError(f"retrieval={retrieval!r}: must be one of {', '.join(SIMILARITIES)}")
    check_storage(storage)
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor={executor!r}: must be 'local' or 'ray'")
    if executor == "ray":
        from .frontend.distributed import _import_ray

        _import_ray()  # the install hint before any work
        if not isinstance(checkpoint_or_net, (str, os.PathLike)):
            raise ConfigError("executor='ray' needs a checkpoint path (each worker loads it), not a loaded network")
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    if isinstance(checkpoint_or_net, (str, os.PathLike)):
        net = load_checkpoint(Path(checkpoint_or_net), device=device)
    elif hasattr(checkpoint_or_net, "encode") and hasattr(checkpoint_or_net, "decode_pair"):
        net = checkpoint_or_net
    else:
        raise InputError(
            f"checkpoint_or_net must be a checkpoint path or a network, got {type(checkpoint_or_net).__name__}"
        )
    timings["load_checkpoint"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if size is None:
        size = 224 if max(net.img_size) <= 224 else DEFAULT_SIZE
    paths = collect_image_paths(image_paths)
    old = _old_scene(extend, known_intrinsics, known_poses)
    old_paths = list(old.image_paths) if old is not None else []
    images, index = _dedupe(load_images(old_paths + [p for p in paths if p not in old_paths], size=size))
    n = len(images)
    n_old = len(old_paths)
    if old is not None and [im.true_shape for im in images[:n_old]] != [d.shape for d in old.depthmaps]:
        raise InputError("the saved scene's photos load at other network sizes than it was made with (--image-size)")
    if old is not None and n == n_old:
        raise InputError("no new photo to add: every input is already in the saved scene")
    k_orig = _known(known_intrinsics, index, n, "known_intrinsics")
    k_net = {k: images[k].intrinsics_from_original(K) for k, K in k_orig.items()}
    poses = _known(known_poses, index, n, "known_poses")
    similarity = image_similarity(images, retrieval, net) if needs_similarity(scene_graph) and n > 1 else None
    pairs = make_pairs(n, scene_graph, similarity=similarity)
    if old is not None:  # only the pairs that touch a new photo go through the network
        pairs = pairs[pairs.max(axis=1) >= n_old]
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cache = CacheDir(cache_dir, net.identity, reset=overwrite_cache) if cache_dir is not None else None
    stats: dict[str, Any] = {}
    preds: Sequence[PairPrediction]
    if executor == "ray":
        from .frontend.distributed import run_pairs_ray

        preds = run_pairs_ray(
            checkpoint_or_net,
            images,
            pairs,
            cache_dir=cache_dir,
            ray_address=ray_address,
            num_workers=workers,
            subsample=cfg.subsample,
            desc_conf=desc_conf,
            batch_size=batch_size,
            autocast=autocast,
            device=device,
            progress=progress,
            stats=stats,
            storage=storage,
        )
    else:
        # with a cache, predictions stream from disk into the aligner (memory independent of the number of pairs)
        preds = run_pairs(
            net,
            images,
            pairs,
            subsample=cfg.subsample,
            desc_conf=desc_conf,
            cache=cache,
            batch_size=batch_size,
            autocast=autocast,
            progress=progress,
            stats=stats,
            stream=cache is not None,
            storage=storage,
        )
    timings["inference"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if old is not None:
        from .alignment.extend import align_extend

        result: Any = align_extend(
            old, preds, cfg, images=[im.rgb for im in images[n_old:]], image_paths=[im.path for im in images[n_old:]]
        )
    else:
        result = align(
            preds,
            cfg,
            images=[im.rgb for im in images],
            image_paths=[im.path for im in images],
            n_images=n,
            known_intrinsics=k_net or None,
            known_poses=poses or None,
            components=components,
        )
    timings["align"] = time.perf_counter() - t0
    inference = {
        **stats,
        "scene_graph": scene_graph,
        "size": int(size),
        "executor": executor,
        "model": net.identity,
        "has_descriptors": bool(net.has_descriptors),
    }

    def finish(scene: Scene) -> Scene:
        """The photos' frames and the run record on one aligned scene."""
        align_t = {f"align_{k}": v for k, v in scene.info.get("timings_s", {}).items()}
        info = {**scene.info, "inference": inference, "timings_s": {**align_t, **timings}}
        net_to_orig, sizes = photo_frames([images[int(i)] for i in scene.image_index])
        return dataclasses.replace(scene, info=info, net_to_orig=net_to_orig, original_sizes=sizes)

    logger.info(
        "reconstruct: %d images, %d pairs (%d cached); load %.2fs, inference %.2fs, align %.2fs",
        n,
        stats.get("n_pairs", 0),
        stats.get("cache_hits", 0),
        timings["load"],
        timings["inference"],
        timings["align"],
    )
    if isinstance(result, Scene):  # an extended scene, or align without components
        return ComponentResult([finish(result)], []) if components else finish(result)
    return ComponentResult([finish(sc) for sc in result.scenes], result.unregistered)


__all__ = ["reconstruct"]
