"""run_pairs: encoder reuse, batching invariance, on-disk cache (hits, orientation, resume), option errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparsega.errors import CacheError, ConfigError, InputError
from sparsega.frontend.cache import CacheDir
from sparsega.frontend.images import LoadedImage, load_images
from sparsega.frontend.inference import CachedPredictions, run_pairs
from sparsega.frontend.model import MASt3RNet, load_checkpoint
from sparsega.frontend.pairs import make_pairs

from _netutils import CallCounter, write_images

GOLDEN = Path(__file__).parent / "data" / "golden"
ARRAYS = ("pts11", "conf11", "pts21", "conf21", "pts22", "conf22", "pts12", "conf12")


@pytest.fixture(scope="module")
def net() -> MASt3RNet:
    return load_checkpoint(GOLDEN / "model_tiny_a.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[LoadedImage]:
    folder = tmp_path_factory.mktemp("imgs")
    # three landscape 64x48 images and one portrait: two shape groups
    return load_images(write_images(folder, [(48, 64), (48, 64), (64, 48), (48, 64)]), size=64)


def assert_same(a: list[Any], b: list[Any], exact: bool) -> None:
    assert [(p.i, p.j) for p in a] == [(p.i, p.j) for p in b]
    for p, q in zip(a, b):
        for name in ARRAYS:
            if exact:
                np.testing.assert_array_equal(getattr(p, name), getattr(q, name))
            else:
                x, y = getattr(p, name), getattr(q, name)
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4 * np.abs(y).max())
        if exact:
            for name in ("xy1", "xy2", "match_conf"):
                np.testing.assert_array_equal(getattr(p, name), getattr(q, name))
            assert p.score == q.score


def test_one_prediction_per_unordered_pair_each_image_encoded_once(
    net: MASt3RNet, images: list[LoadedImage], monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = CallCounter(net, monkeypatch)
    stats: dict[str, Any] = {}
    preds = run_pairs(net, images, make_pairs(4, "complete"), batch_size=4, progress=False, stats=stats)
    assert [(p.i, p.j) for p in preds] == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert counter.encoded_images == 4  # the reference would encode 12 images
    assert counter.encode_calls <= 3  # lazily, per shape group as batches need them
    assert {k: stats[k] for k in ("n_pairs", "cache_hits", "computed", "encoded")} == {
        "n_pairs": 6,
        "cache_hits": 0,
        "computed": 6,
        "encoded": 4,
    }
    assert min(stats["encode_s"], stats["decode_s"], stats["matching_s"]) > 0
    for p in preds:
        p.validate()
        assert p.shape1 == images[p.i].true_shape and p.shape2 == images[p.j].true_shape
        assert p.score is not None and p.score[2] == p.n_matches
        assert (p.match_conf > 0).all()


def test_matches_symmetric_inference(net: MASt3RNet, images: list[LoadedImage]) -> None:
    """The batched, feature-reusing path gives the outputs of net.symmetric_inference on the pair: to 1e-4 with
    float32 storage; with compact storage, the own-frame maps to float16 precision and the cross-frame maps exactly
    (to float16) on every 4th pixel, which is all the alignment reads of them."""
    pairs = np.array([[0, 2], [1, 3]])
    full = run_pairs(net, images, pairs, batch_size=2, progress=False, storage="float32")
    compact = run_pairs(net, images, pairs, batch_size=2, progress=False)
    for p, c in zip(full, compact):
        r11, r21, r22, r12 = net.symmetric_inference(images[p.i].tensor(), images[p.j].tensor())
        for name, res in (("11", r11), ("21", r21), ("22", r22), ("12", r12)):
            for key, field in (("pts3d", "pts"), ("conf", "conf")):
                ref = res[key][0].numpy()
                scale = np.abs(ref).max()
                np.testing.assert_allclose(getattr(p, field + name), ref, rtol=1e-4, atol=1e-4 * scale)
                got = getattr(c, field + name)
                assert got.dtype == np.float32 and got.shape == ref.shape
                if name in ("11", "22"):
                    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * scale)
                else:
                    np.testing.assert_allclose(got[::4, ::4], ref[::4, ::4], rtol=1e-3, atol=1e-3 * scale)
        np.testing.assert_array_equal(p.xy1, c.xy1)  # matching runs before storage
        np.testing.assert_array_equal(p.match_conf, c.match_conf)
        assert p.score == c.score


def test_batching_does_not_change_results(net: MASt3RNet, images: list[LoadedImage]) -> None:
    pairs = make_pairs(4, "complete")
    one = run_pairs(net, images, pairs, batch_size=1, progress=False, storage="float32")
    four = run_pairs(net, images, pairs, batch_size=4, progress=False, storage="float32")
    assert_same(one, four, exact=False)
    for p, q in zip(one, four):  # same matches (no near-ties at this size)
        np.testing.assert_array_equal(p.xy1, q.xy1)
        np.testing.assert_array_equal(p.xy2, q.xy2)


def test_cache_hit_skips_network(
    net: MASt3RNet, images: list[LoadedImage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CacheDir(tmp_path / "cache", net.identity)
    pairs = make_pairs(4, "swin-2")
    first = run_pairs(net, images, pairs, cache=cache, progress=False)
    counter = CallCounter(net, monkeypatch)
    stats: dict[str, Any] = {}
    again = run_pairs(net, images, pairs, cache=CacheDir(tmp_path / "cache", net.identity), progress=False, stats=stats)
    assert counter.encode_calls == 0 and counter.decode_calls == 0
    assert stats["cache_hits"] == len(first) and stats["computed"] == 0
    assert_same(first, again, exact=True)
    # the other orientation is served by the same entries, swapped
    flipped = run_pairs(net, images, pairs[:, ::-1], cache=cache, progress=False)
    assert counter.decode_calls == 0
    assert_same([p.swapped() for p in first], flipped, exact=True)


def test_stream_reads_predictions_back_from_the_cache(
    net: MASt3RNet, images: list[LoadedImage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stream=True keeps nothing in memory: a lazy sequence over the cache entries, equal to the eager list bit for
    bit, on the first run (computed) and on a rerun (all hits, in the other orientation too)."""
    pairs = make_pairs(4, "swin-2")
    eager = run_pairs(net, images, pairs, progress=False)
    cache = CacheDir(tmp_path / "cache", net.identity)
    lazy = run_pairs(net, images, pairs, cache=cache, progress=False, stream=True)
    assert isinstance(lazy, CachedPredictions) and len(lazy) == len(eager)
    assert_same(eager, list(lazy), exact=True)
    counter = CallCounter(net, monkeypatch)
    again = run_pairs(net, images, pairs[:, ::-1], cache=cache, progress=False, stream=True)
    assert counter.decode_calls == 0
    assert_same([p.swapped() for p in eager], list(again), exact=True)
    np.testing.assert_array_equal(again.pairs, pairs[:, ::-1][: len(again)])
    # an entry removed while the sequence is in use: a clear error, not a silent gap
    cache_store = lazy.store
    cache_store.delete(lazy.entries[0][2])
    with pytest.raises(CacheError, match="disappeared from the cache"):
        lazy[0]
    with pytest.raises(ConfigError, match="needs a cache"):
        run_pairs(net, images, pairs, progress=False, stream=True)


def test_cache_key_depends_on_matching_parameters(
    net: MASt3RNet, images: list[LoadedImage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CacheDir(tmp_path / "cache", net.identity)
    run_pairs(net, images[:2], np.array([[0, 1]]), cache=cache, progress=False)
    counter = CallCounter(net, monkeypatch)
    run_pairs(net, images[:2], np.array([[0, 1]]), cache=cache, subsample=4, progress=False)
    run_pairs(net, images[:2], np.array([[0, 1]]), cache=cache, desc_conf="conf", progress=False)
    assert counter.decode_calls == 2


def test_interrupted_run_resumes(
    net: MASt3RNet, images: list[LoadedImage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CacheDir(tmp_path / "cache", net.identity)
    pairs = make_pairs(3, "complete")  # (1, 0): one decoder call; (2, 0) and (2, 1): two each (shapes differ)
    decode: Callable[..., Any] = net.decode_pair
    calls = {"n": 0}

    def failing_decode(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return decode(*args)

    monkeypatch.setattr(net, "decode_pair", failing_decode)
    with pytest.raises(KeyboardInterrupt):
        run_pairs(net, images[:3], pairs, cache=cache, batch_size=1, progress=False)
    monkeypatch.setattr(net, "decode_pair", decode)
    stats: dict[str, Any] = {}
    preds = run_pairs(net, images[:3], pairs, cache=cache, batch_size=1, progress=False, stats=stats)
    assert len(preds) == 3
    assert stats["cache_hits"] == 1 and stats["computed"] == 2  # (1, 0) was stored before the interruption


def test_single_image_pairs_with_itself(net: MASt3RNet, images: list[LoadedImage]) -> None:
    (p,) = run_pairs(net, images[:1], make_pairs(1, "swin-5"), progress=False)
    assert (p.i, p.j) == (0, 0) and p.n_matches > 0


def test_option_errors(net: MASt3RNet, images: list[LoadedImage]) -> None:
    pairs = np.array([[0, 1]])
    with pytest.raises(ConfigError, match="batch_size"):
        run_pairs(net, images, pairs, batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="desc_conf"):
        run_pairs(net, images, pairs, desc_conf="bogus", progress=False)
    with pytest.raises(ConfigError, match="autocast"):
        run_pairs(net, images, pairs, autocast="int8", progress=False)
    with pytest.raises(InputError, match="self-pair"):
        run_pairs(net, images, np.array([[1, 1]]), progress=False)
    with pytest.raises(InputError, match="outside"):
        run_pairs(net, images, np.array([[0, 9]]), progress=False)
    with pytest.warns(UserWarning, match="running cpu in float32"):
        run_pairs(net, images[:2], pairs, autocast="fp16", progress=False)


def test_bf16_autocast_on_cpu_stays_close_to_float32(
    net: MASt3RNet, images: list[LoadedImage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU bf16 autocast runs the backbone in bfloat16 (heads float32): results differ from float32, but only by
    bfloat16 rounding; without native bf16 a warning says it is emulated."""
    from sparsega.frontend import inference

    pairs = np.array([[0, 1]])
    full = run_pairs(net, images, pairs, progress=False, storage="float32")[0]
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        half = run_pairs(net, images, pairs, progress=False, storage="float32", autocast="bf16")[0]
    scale = np.abs(full.pts11).max()
    diff = np.abs(half.pts11 - full.pts11).max() / scale
    assert 0 < diff < 0.1, diff
    assert np.isfinite(half.conf11).all() and half.n_matches > 0
