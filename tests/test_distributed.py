"""run_pairs_ray: bit-identical to run_pairs, a killed worker loses nothing, clear errors; batch partition."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparsega.errors import ConfigError
from sparsega.frontend.cache import CacheDir
from sparsega.frontend.distributed import RAY_MISSING, partition_batches, run_pairs_ray
from sparsega.frontend.images import LoadedImage, load_images
from sparsega.frontend.inference import CACHE_NAMESPACE, _batches, pair_cache_key, run_pairs
from sparsega.frontend.model import MASt3RNet, load_checkpoint
from sparsega.frontend.pairs import make_pairs
from sparsega.types import PairPrediction

CKPT = Path(__file__).parent / "data" / "golden" / "model_tiny_a.pth"
FIELDS = ("pts11", "conf11", "pts21", "conf21", "pts22", "conf22", "pts12", "conf12", "xy1", "xy2", "match_conf")


def _write_images(folder: Path, shapes: list[tuple[int, int]]) -> list[str]:
    """Smooth seeded RGB PNGs of the given (H, W) shapes."""
    rng = np.random.default_rng(3)
    paths = []
    for k, (h, w) in enumerate(shapes):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        f = rng.uniform(2, 9, size=(3, 2))
        img = np.stack([127 + 100 * np.sin(f[c, 0] * xx + f[c, 1] * yy + k) for c in range(3)], axis=-1)
        paths.append(str(folder / f"img{k}.png"))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(paths[-1])
    return paths


def _assert_identical(a: list[PairPrediction], b: list[PairPrediction]) -> None:
    assert [(p.i, p.j) for p in a] == [(p.i, p.j) for p in b]
    for p, q in zip(a, b):
        for name in FIELDS:
            x, y = getattr(p, name), getattr(q, name)
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert x.tobytes() == y.tobytes(), f"pair ({p.i}, {p.j}): {name} differs"
        assert p.score == q.score


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    """One local Ray cluster of 2 CPUs for the module (startup takes 10-30 s on a small machine)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'sparsega[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def net() -> MASt3RNet:
    return load_checkpoint(CKPT)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[LoadedImage]:
    # two landscape, one portrait: decoder batches [(1, 0)] and [(2, 0), (2, 1)] for the complete graph
    return load_images(_write_images(tmp_path_factory.mktemp("imgs"), [(48, 64), (48, 64), (64, 48)]), size=64)


@pytest.fixture(scope="module")
def local(net: MASt3RNet, images: list[LoadedImage]) -> list[PairPrediction]:
    return run_pairs(net, images, make_pairs(3, "complete"), progress=False)


def test_ray_equals_local_bit_for_bit(
    ray_cluster: object, images: list[LoadedImage], local: list[PairPrediction], tmp_path: Path
) -> None:
    stats: dict = {}
    preds = run_pairs_ray(
        CKPT, images, make_pairs(3, "complete"), cache_dir=tmp_path / "c", num_workers=2, progress=False, stats=stats
    )
    _assert_identical(local, preds)
    assert stats["computed"] == 3 and stats["written"] == 3 and sorted(stats["groups"]) == [1, 2]
    again: dict = {}  # everything cached now: no network work; image paths are loaded at `size` like load_images
    _assert_identical(
        local,
        run_pairs_ray(
            CKPT,
            [im.path for im in images],
            make_pairs(3, "complete"),
            size=64,
            cache_dir=tmp_path / "c",
            progress=False,
            stats=again,
        ),
    )
    assert again["cache_hits"] == 3 and again["computed"] == 0


def test_killed_worker_loses_nothing(
    ray_cluster: object,
    net: MASt3RNet,
    images: list[LoadedImage],
    local: list[PairPrediction],
    tmp_path: Path,
    monkeypatch,
) -> None:
    from sparsega.frontend import distributed

    marker = tmp_path / "crashed"
    monkeypatch.setattr(distributed._fault_injection, "crash_after", (str(marker), 1))
    cache = tmp_path / "c"
    stats: dict = {}
    # the first worker process to save a pair exits hard right after (the marker lists what it had saved)
    preds = run_pairs_ray(
        CKPT, images, make_pairs(3, "complete"), cache_dir=cache, num_workers=2, progress=False, stats=stats
    )
    assert marker.is_file(), "the fault was not injected"
    _assert_identical(local, preds)
    saved_before_crash = marker.read_text().split()
    assert len(saved_before_crash) == 1
    # nothing written twice: the entry saved before the crash was not rewritten by the retry, and the retried
    # calls wrote exactly the other pairs
    store = CacheDir(cache, net.identity).store(CACHE_NAMESPACE)
    for key in saved_before_crash:
        assert store.path(key).stat().st_mtime_ns <= marker.stat().st_mtime_ns
    assert stats["written"] + len(saved_before_crash) == 3
    keys = {pair_cache_key(images[p.i], images[p.j], net.identity, 8, "desc_conf", "compact") for p in local}
    assert set(store.keys()) == keys


def test_remote_cluster_needs_a_cache_dir(images: list[LoadedImage]) -> None:
    pytest.importorskip("ray", reason="ray is not installed")
    with pytest.raises(ConfigError, match="cache_dir"):
        run_pairs_ray(
            CKPT, images, make_pairs(3, "complete"), cache_dir=None, ray_address="10.0.0.1:6379", progress=False
        )


def test_without_ray_clear_error(images: list[LoadedImage], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(ConfigError) as info:
        run_pairs_ray(CKPT, images, make_pairs(3, "complete"), cache_dir=tmp_path, progress=False)
    assert str(info.value) == RAY_MISSING == "distributed inference needs Ray: pip install 'sparsega[ray]'"


def test_bad_worker_count(images: list[LoadedImage], tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray is not installed")
    with pytest.raises(ConfigError, match="num_workers"):
        run_pairs_ray(CKPT, images, make_pairs(3, "complete"), cache_dir=tmp_path, num_workers=0, progress=False)


def _images_per_group(batches: list, groups: list[list[int]]) -> int:
    return sum(len({k for b in g for p in batches[b] for k in p}) for g in groups)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_partition_keeps_batches_whole_balanced_and_local(images: list[LoadedImage], batch_size: int) -> None:
    """Each batch in exactly one group, in order; even pair counts; a walk's groups share few images."""
    n, workers = 40, 4
    ims = [images[0]] * n  # one shape
    pairs = make_pairs(n, "swin-3-noncyclic")
    pairs = pairs[np.sort(np.unique(np.sort(pairs, axis=1), axis=0, return_index=True)[1])]
    batches = list(_batches(pairs, ims, batch_size))
    groups = partition_batches(batches, workers)
    assert sorted(b for g in groups for b in g) == list(range(len(batches)))
    assert all(g == sorted(g) for g in groups)
    sizes = [sum(len(batches[b]) for b in g) for g in groups]
    assert len(groups) == workers and max(sizes) <= -(-len(pairs) // workers) + batch_size - 1
    round_robin = [list(range(w, len(batches), workers)) for w in range(workers)]
    encoded = _images_per_group(batches, groups)
    assert encoded < _images_per_group(batches, round_robin)
    if batch_size == 1:  # single-pair batches: about one window of images shared at each of the 3 cuts
        assert encoded <= n + 3 * 3 * (workers - 1)
    assert sorted(partition_batches(batches[:2], 5)) == [[0], [1]]
    with pytest.raises(ConfigError):
        partition_batches(batches, 0)


def test_reconstruct_executor_checks(images: list[LoadedImage], monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsega.pipeline import reconstruct

    paths = [im.path for im in images]
    with pytest.raises(ConfigError, match="executor"):
        reconstruct(paths, str(CKPT), "complete", executor="dask", progress=False)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'sparsega\[ray\]'"):
        reconstruct(paths, str(CKPT), "complete", executor="ray", progress=False)


def test_cli_ray_flag_without_ray(
    images: list[LoadedImage], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sparsega.cli import build_parser, main

    args = build_parser().parse_args(["reconstruct", "a.png", "-c", "x.pth", "-o", "out", "--ray", "--workers", "3"])
    assert args.ray == "local" and args.workers == 3
    args = build_parser().parse_args(["reconstruct", "a.png", "-c", "x.pth", "-o", "out", "--ray", "10.0.0.1:6379"])
    assert args.ray == "10.0.0.1:6379"
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(
        ["reconstruct", *[im.path for im in images], "-c", str(CKPT), "-o", str(tmp_path / "out"), "--quiet", "--ray"]
    )
    assert code == 2
    assert "distributed inference needs Ray: pip install 'sparsega[ray]'" in capsys.readouterr().err
