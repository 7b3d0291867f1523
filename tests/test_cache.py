"""On-disk cache: exact round trips, corruption detection, refusal of pickles, identity checks, atomicity."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from sparsega.errors import CacheError, ConfigError
from sparsega.frontend.cache import (
    FORMAT_VERSION,
    ArrayStore,
    CacheDir,
    CachedPredictions,
    as_stored,
    check_storage,
    hash_array,
    hash_file,
    load_pair,
    pair_key,
    save_pair,
)
from sparsega.types import PairPrediction

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal((5, 7, 3)).astype(np.float32)
    f32[0, 0, 0] = np.nan
    f32[0, 0, 1] = -np.inf
    f32[0, 0, 2] = -0.0
    return {
        "f32": f32,
        "f64": rng.standard_normal((4, 2)),
        "f16": rng.standard_normal(6).astype(np.float16),
        "i64": rng.integers(-(2**62), 2**62, size=(3, 2), dtype=np.int64),
        "u8": rng.integers(0, 256, size=(2, 3, 3), dtype=np.uint8),
        "bool": rng.random(5) > 0.5,
        "empty": np.zeros((0, 2), np.int64),
        "scalar": np.array(3.5, np.float32),
    }


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality including dtype and shape (NaN and -0.0 included)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _pred(m: int = 9, seed: int = 1) -> PairPrediction:
    rng = np.random.default_rng(seed)
    h1, w1, h2, w2 = 6, 8, 8, 5

    def pts(h: int, w: int) -> np.ndarray:
        return rng.standard_normal((h, w, 3)).astype(np.float32)

    def conf(h: int, w: int) -> np.ndarray:
        return (1 + rng.random((h, w))).astype(np.float32)

    return PairPrediction(
        i=0,
        j=1,
        pts11=pts(h1, w1),
        conf11=conf(h1, w1),
        pts21=pts(h2, w2),
        conf21=conf(h2, w2),
        pts22=pts(h2, w2),
        conf22=conf(h2, w2),
        pts12=pts(h1, w1),
        conf12=conf(h1, w1),
        xy1=np.stack([rng.integers(0, w1, m), rng.integers(0, h1, m)], 1).astype(np.int64),
        xy2=np.stack([rng.integers(0, w2, m), rng.integers(0, h2, m)], 1).astype(np.int64),
        match_conf=(1 + rng.random(m)).astype(np.float32),
        score=(1.2345678901234567, 17.25, m),
    )


# ------------------------------------------------------------------ round trips
def test_round_trip_exact(tmp_path: Path) -> None:
    store = ArrayStore(tmp_path, "arrays")
    arrays = _arrays()
    meta = {"name": "x", "nested": {"a": [1, 2.5, None]}, "unicode": "éà"}
    assert store.get("k1") is None and not store.has("k1")
    store.put("k1", arrays, meta)
    got = store.get("k1")
    assert got is not None
    out, meta_out = got
    assert meta_out == meta
    assert set(out) == set(arrays)
    for name, arr in arrays.items():
        assert _same(out[name], arr), name
    assert store.has("k1") and store.keys() == ["k1"] and "k1" in store


def test_round_trip_non_native_layouts(tmp_path: Path) -> None:
    """Big-endian and strided arrays come back with the same values (safetensors alone would scramble them)."""
    store = ArrayStore(tmp_path, "arrays")
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    big = np.arange(5, dtype=">f4") * 1.5
    store.put("k", {"strided": base[:, ::2], "transposed": base.T, "big": big}, {})
    out, _ = store.get("k")  # type: ignore[misc]
    np.testing.assert_array_equal(out["strided"], base[:, ::2])
    np.testing.assert_array_equal(out["transposed"], base.T)
    np.testing.assert_array_equal(out["big"], big)
    assert out["big"].dtype == np.float32


def test_overwrite_and_keys(tmp_path: Path) -> None:
    store = ArrayStore(tmp_path, "ns")
    store.put("aa1", {"x": np.zeros(2)}, {"v": 1})
    store.put("aa1", {"x": np.ones(3)}, {"v": 2})
    store.put("bb2", {"x": np.ones(1)}, {})
    out, meta = store.get("aa1")  # type: ignore[misc]
    assert meta == {"v": 2} and _same(out["x"], np.ones(3))
    assert store.keys() == ["aa1", "bb2"]
    store.delete("aa1")
    assert store.keys() == ["bb2"] and store.get("aa1") is None
    # namespaces are separate
    assert ArrayStore(tmp_path, "other").keys() == []


@pytest.mark.parametrize("bad", ["../evil", "a/b", ".hidden", "", "x.tmp", "a\\b"])
def test_bad_keys_refused(tmp_path: Path, bad: str) -> None:
    store = ArrayStore(tmp_path, "ns")
    with pytest.raises(CacheError):
        store.put(bad, {"x": np.zeros(1)}, {})


def test_bad_values_refused(tmp_path: Path) -> None:
    store = ArrayStore(tmp_path, "ns")
    with pytest.raises(CacheError, match="numpy"):
        store.put("k", {"x": [1, 2]}, {})  # type: ignore[dict-item]
    with pytest.raises(CacheError, match="dtype"):
        store.put("k", {"x": np.array(["a"], dtype=object)}, {})
    with pytest.raises(CacheError, match="JSON"):
        store.put("k", {"x": np.zeros(1)}, {"f": object()})
    assert not store.has("k")


def test_pair_prediction_round_trip(tmp_path: Path) -> None:
    store = ArrayStore(tmp_path, "pairs")
    for m, score in ((9, (1.2345678901234567, 17.25, 9)), (0, None)):
        pred = dataclasses.replace(_pred(m), score=score)
        save_pair(store, f"p{m}", pred)
        back = load_pair(store, f"p{m}", 4, 2)
        assert back is not None
        assert (back.i, back.j) == (4, 2)  # indices come from the caller, not the cache
        for name in [f.name for f in dataclasses.fields(PairPrediction) if f.name not in ("i", "j", "score")]:
            assert _same(getattr(back, name), getattr(pred, name)), name
        assert back.score == score
        if score is not None:
            assert isinstance(back.score[2], int)
        back.validate()
    assert load_pair(store, "absent", 0, 1) is None


def _bits(p: PairPrediction) -> list[bytes]:
    names = [f.name for f in dataclasses.fields(PairPrediction) if f.name not in ("i", "j", "score")]
    return [np.ascontiguousarray(getattr(p, n)).tobytes() for n in names]


@pytest.mark.parametrize("shape", [(6, 8, 8, 5), (96, 128, 128, 96)])
def test_compact_pair_storage(tmp_path: Path, shape: tuple[int, int, int, int]) -> None:
    """Compact entries: own-frame maps to float16 precision, cross-frame maps exact (to float16) on every 4th pixel
    and constant over each 4x4 block, matches and score exact; what load_pair returns is as_stored's result; a
    quarter of the float32 entry's bytes or less."""
    h1, w1, h2, w2 = shape
    rng = np.random.default_rng(3)
    m = 11

    def pts(h: int, w: int) -> np.ndarray:
        return (rng.standard_normal((h, w, 3)) + [0, 0, 3]).astype(np.float32)

    def conf(h: int, w: int) -> np.ndarray:
        return (1 + 50 * rng.random((h, w))).astype(np.float32)

    pred = PairPrediction(
        0, 1, pts(h1, w1), conf(h1, w1), pts(h2, w2), conf(h2, w2), pts(h2, w2), conf(h2, w2), pts(h1, w1),
        conf(h1, w1), np.stack([rng.integers(0, w1, m), rng.integers(0, h1, m)], 1),
        np.stack([rng.integers(0, w2, m), rng.integers(0, h2, m)], 1), rng.random(m).astype(np.float32) + 1,
        (2.5, 7.0, m),
    )  # fmt: skip
    store = ArrayStore(tmp_path, "pairs")
    save_pair(store, "full", pred)
    save_pair(store, "compact", pred, "compact")
    back = load_pair(store, "compact", 0, 1)
    assert back is not None
    back.validate()
    assert _bits(back) == _bits(as_stored(pred, "compact"))
    assert _bits(as_stored(back, "compact")) == _bits(back)  # storing a stored prediction again changes nothing
    for name in ("pts11", "conf11", "pts22", "conf22"):
        a, b = getattr(pred, name), getattr(back, name)
        assert b.dtype == np.float32 and b.shape == a.shape
        np.testing.assert_allclose(b, a, rtol=2.0**-11, atol=2.0**-24)  # float16 subnormals: absolute
    for name in ("pts21", "conf21", "pts12", "conf12"):
        a, b = getattr(pred, name), getattr(back, name)
        assert b.dtype == np.float32 and b.shape == a.shape
        np.testing.assert_array_equal(b[::4, ::4], a[::4, ::4].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(b[3::4, 1::4], b[0::4, 0::4][: b[3::4].shape[0], : b[:, 1::4].shape[1]])
    for name in ("xy1", "xy2", "match_conf"):
        assert _same(getattr(back, name), getattr(pred, name))
    assert back.score == pred.score
    if h1 >= 96:
        ratio = store.path("compact").stat().st_size / store.path("full").stat().st_size
        assert ratio < 0.28, ratio


def test_compact_storage_keeps_float32_where_float16_cannot_hold(tmp_path: Path) -> None:
    pred = _pred()
    big = pred.pts11 * np.float32(1e6)  # overflows float16
    tiny = pred.pts22 * np.float32(1e-4)  # depths below float16's normal range
    huge_conf = pred.conf11 * np.float32(1e5)
    pred = dataclasses.replace(pred, pts11=big, pts22=tiny, conf11=huge_conf)
    store = ArrayStore(tmp_path, "pairs")
    save_pair(store, "k", pred, "compact")
    back = load_pair(store, "k", 0, 1)
    assert back is not None
    for name in ("pts11", "pts22", "conf11"):
        assert _same(getattr(back, name), getattr(pred, name)), name
    assert back.conf22.tobytes() != pred.conf22.tobytes()  # the others are compact


def test_storage_choice_checked(tmp_path: Path) -> None:
    assert check_storage("compact") == "compact"
    with pytest.raises(ConfigError, match="storage='f16'"):
        check_storage("f16")
    with pytest.raises(ConfigError, match="storage"):
        save_pair(ArrayStore(tmp_path, "pairs"), "k", _pred(), "half")


def test_load_pair_rejects_malformed_compact_entries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ArrayStore(tmp_path, "pairs")
    save_pair(store, "k", _pred(), "compact")
    got = store.get("k")
    assert got is not None
    arrays, meta = got
    bad_grid = dict(arrays, pts21=arrays["pts21"][:1])
    store.put("grid", bad_grid, meta)
    store.put("step", arrays, dict(meta, cross_step=0))
    store.put("form", arrays, dict(meta, storage="jpeg"))
    with caplog.at_level(logging.WARNING, logger="sparsega.frontend.cache"):
        for key in ("grid", "step", "form"):
            assert load_pair(store, key, 0, 1) is None, key
    assert caplog.text.count("not a pair prediction") == 3


def test_load_pair_rejects_other_entries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ArrayStore(tmp_path, "pairs")
    store.put("k", {"x": np.zeros(1)}, {"kind": "something"})
    with caplog.at_level(logging.WARNING, logger="sparsega.frontend.cache"):
        assert load_pair(store, "k", 0, 1) is None
    assert "not a pair prediction" in caplog.text


# ------------------------------------------------------------------ keys
def test_pair_key_stable_and_sensitive() -> None:
    args = ("a" * 64, "b" * 64, "size=512,crop=center", "sha256:1234", "subsample=8,desc_conf=desc_conf")
    key = pair_key(*args)
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    # pinned: a key must never change between versions of the same cache format
    assert key == "ea0a02712a9825e741c5e227ecedc62334eccd3b6c9195f7642d1c393d7bdaec"
    assert pair_key(*args) == key
    for k in range(len(args)):
        changed = list(args)
        changed[k] = changed[k] + "x"
        assert pair_key(*changed) != key
    assert pair_key(args[1], args[0], *args[2:]) != key  # ordered pair
    # no ambiguity from concatenation
    assert pair_key("ab", "c", "p", "m") != pair_key("a", "bc", "p", "m")


def test_content_hashes(tmp_path: Path) -> None:
    f = tmp_path / "img.bin"
    f.write_bytes(b"hello")
    assert hash_file(f) == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert hash_array(a) == hash_array(a.copy()) == hash_array(np.asfortranarray(a))
    assert hash_array(a) != hash_array(a.reshape(3, 2)) and hash_array(a) != hash_array(a.astype(np.float64))


# ------------------------------------------------------------------ corruption
def _corrupt_cases(data: bytes) -> dict[str, bytes]:
    n = int.from_bytes(data[:8], "little")
    flip = lambda pos: data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]  # noqa: E731
    return {
        "flip_data_first": flip(8 + n),
        "flip_data_last": flip(len(data) - 1),
        "flip_header": flip(8 + n // 2),
        "flip_header_length": flip(0),
        "truncate_half": data[: len(data) // 2],
        "truncate_one": data[:-1],
        "zero_byte": b"",
        "garbage": os.urandom(len(data)),
    }


@pytest.mark.parametrize(
    "case",
    [
        "flip_data_first",
        "flip_data_last",
        "flip_header",
        "flip_header_length",
        "truncate_half",
        "truncate_one",
        "zero_byte",
        "garbage",
    ],
)
def test_corruption_detected_deleted_and_recomputable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    store = ArrayStore(tmp_path, "pairs")
    arrays = _arrays()
    store.put("key1", arrays, {"m": 1})
    path = store.path("key1")
    path.write_bytes(_corrupt_cases(path.read_bytes())[case])
    with caplog.at_level(logging.WARNING, logger="sparsega.frontend.cache"):
        assert store.get("key1") is None
    assert str(path) in caplog.text  # the warning names the file
    assert not path.exists()  # deleted so that the caller recomputes
    store.put("key1", arrays, {"m": 1})  # recompute
    out, _ = store.get("key1")  # type: ignore[misc]
    assert _same(out["f32"], arrays["f32"])


def test_every_single_bit_flip_is_detected(tmp_path: Path) -> None:
    """Flipping any one bit anywhere in a (small) entry file is always caught."""
    store = ArrayStore(tmp_path, "ns")
    store.put("k", {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7], np.int64)}, {"s": "t"})
    path = store.path("k")
    original = path.read_bytes()
    logging.getLogger("sparsega.frontend.cache").disabled = True
    try:
        for pos in range(len(original)):
            for bit in (0x01, 0x80):
                path.write_bytes(original[:pos] + bytes([original[pos] ^ bit]) + original[pos + 1 :])
                assert store.get("k") is None, (pos, bit)
    finally:
        logging.getLogger("sparsega.frontend.cache").disabled = False
    path.write_bytes(original)
    assert store.get("k") is not None


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_pickle_in_place_of_entry_is_never_executed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, writer: str
) -> None:
    marker = tmp_path / "PWNED"
    payload = {"pts11": _Evil(marker)}
    # sanity: unpickling this payload really would create the marker
    pickle.loads(pickle.dumps(_Evil(tmp_path / "sanity")))
    assert (tmp_path / "sanity").exists()

    store = ArrayStore(tmp_path / "cache", "pairs")
    path = store.path("deadbeef")
    path.parent.mkdir(parents=True)
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        import torch

        torch.save(payload, path)
    assert store.has("deadbeef")
    with caplog.at_level(logging.WARNING, logger="sparsega.frontend.cache"):
        assert load_pair(store, "deadbeef", 0, 1) is None
        assert store.get("deadbeef") is None
    assert not marker.exists()
    assert str(path) in caplog.text and not path.exists()


def test_safetensors_file_without_checksum_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A valid safetensors file not written by the store (no checksum) is not trusted."""
    import safetensors.numpy

    store = ArrayStore(tmp_path, "ns")
    path = store.path("k")
    path.parent.mkdir(parents=True)
    path.write_bytes(safetensors.numpy.save({"x": np.zeros(3, np.float32)}))
    with caplog.at_level(logging.WARNING, logger="sparsega.frontend.cache"):
        assert store.get("k") is None
    assert "checksum" in caplog.text


# ------------------------------------------------------------------ cache root identity
def test_cache_dir_identity(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = CacheDir(root, "ckptA")
    meta = json.loads((root / "meta.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["model_identity"] == "ckptA" and meta["created"]
    cache.store("pairs").put("k", {"x": np.ones(2)}, {})

    again = CacheDir(root, "ckptA")  # same checkpoint: entries kept
    assert again.store("pairs").has("k") and again.info.created == meta["created"]

    with pytest.raises(CacheError) as err:
        CacheDir(root, "ckptB")
    msg = str(err.value)
    assert msg == (
        f"cache folder {root} was written by checkpoint ckptA, not ckptB: use another --cache-dir or --overwrite-cache"
    )
    assert ArrayStore(root, "pairs").has("k")  # refusing destroys nothing

    (root / "notes.txt").write_text("user file")
    (root / "forward").mkdir()
    (root / "forward" / "x.pth").write_bytes(b"naver")
    reset = CacheDir(root, "ckptB", reset=True)
    assert reset.model_identity == "ckptB"
    assert not reset.store("pairs").has("k")
    assert json.loads((root / "meta.json").read_text())["model_identity"] == "ckptB"
    assert (root / "notes.txt").exists() and (root / "forward" / "x.pth").exists()  # not ours: kept
    CacheDir(root, "ckptB")


def test_cache_dir_bad_meta(tmp_path: Path) -> None:
    root = tmp_path / "c"
    CacheDir(root, "A")
    meta = json.loads((root / "meta.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="format version"):
        CacheDir(root, "A")
    (root / "meta.json").write_text("{not json")
    with pytest.raises(CacheError, match="unreadable"):
        CacheDir(root, "A")
    CacheDir(root, "A", reset=True)
    CacheDir(root, "A")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="not a folder"):
        CacheDir(tmp_path / "file", "A")


# ------------------------------------------------------------------ atomicity and concurrency
def _run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_crash_between_write_and_rename(tmp_path: Path) -> None:
    """A writer killed after writing its temp file but before the rename leaves no visible entry."""
    store = ArrayStore(tmp_path, "pairs")
    store.put("old", {"x": np.zeros(4)}, {"v": "old"})
    code = f"""
        import os, numpy as np
        from sparsega.frontend.store import ArrayStore
        store = ArrayStore({str(tmp_path)!r}, "pairs")
        os.replace = lambda src, dst: os._exit(3)   # the process dies right before the rename
        store.put("new", {{"x": np.ones(1000)}}, {{}})
        store.put("old", {{"x": np.ones(1000)}}, {{"v": "new"}})
    """
    res = _run_python(code)
    assert res.returncode == 3, res.stderr
    temps = [p for p in store.dir.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].stat().st_size > 0
    assert not store.has("new") and store.get("new") is None
    assert store.keys() == ["old"]
    assert store.get("old")[1] == {"v": "old"}  # type: ignore[index]

    # a young temp file may belong to a live writer: kept; an old one is a crash leftover: removed
    ArrayStore(tmp_path, "pairs")
    assert temps[0].exists()
    old = time.time() - 2 * 3600
    os.utime(temps[0], (old, old))
    ArrayStore(tmp_path, "pairs")
    assert not temps[0].exists()
    assert store.keys() == ["old"]


def test_concurrent_writers_threads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ArrayStore(tmp_path, "pairs")
    payloads = [np.full(50_000, w, np.float32) for w in range(8)]

    def write(w: int) -> None:
        for _ in range(5):
            store.put("same", {"x": payloads[w]}, {"w": w})

    def read(_: int) -> list[int]:
        seen = []
        for _ in range(40):
            got = store.get("same")
            if got is not None:
                arr, meta = got
                assert _same(arr["x"], payloads[meta["w"]])
                seen.append(meta["w"])
        return seen

    with caplog.at_level(logging.WARNING, logger="sparsega.frontend.cache"):
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(write, w) for w in range(8)] + [pool.submit(read, r) for r in range(4)]
            for f in futures:
                f.result()
    assert "unusable" not in caplog.text
    arr, meta = store.get("same")  # type: ignore[misc]
    assert _same(arr["x"], payloads[meta["w"]])
    assert not [p for p in store.dir.rglob("*.tmp")]


def test_concurrent_writers_processes(tmp_path: Path) -> None:
    """Several processes (think Ray workers) writing the same key: every read sees one complete entry."""
    code = """
        import numpy as np
        from sparsega.frontend.store import ArrayStore
        store = ArrayStore({root!r}, "pairs")
        for it in range(15):
            store.put("same", {{"x": np.full(200_000, {w}, np.float32)}}, {{"w": {w}}})
    """
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code).format(root=str(tmp_path), w=w)], env=env)
        for w in range(3)
    ]
    store = ArrayStore(tmp_path, "pairs", clean_stale_after_s=None)
    reads = 0
    while any(p.poll() is None for p in procs):
        got = store.get("same")
        if got is not None:
            arr, meta = got
            assert (arr["x"] == meta["w"]).all() and arr["x"].shape == (200_000,)
            reads += 1
    assert all(p.wait(timeout=60) == 0 for p in procs)
    logging.getLogger(__name__).info("%d concurrent reads", reads)
    arr, meta = store.get("same")  # type: ignore[misc]
    assert meta["w"] in (0, 1, 2) and (arr["x"] == meta["w"]).all()
    assert not list(store.dir.rglob("*.tmp"))


@pytest.mark.parametrize("storage", ["float32", "compact"])
def test_pair_header_reads_the_matches_without_the_maps(tmp_path: Path, storage: str) -> None:
    """CachedPredictions.pair_header: the matches, shapes and score of the full load, in both orientations, from the
    entry's header and match arrays alone; a damaged header is a CacheError naming the pair."""
    store = ArrayStore(tmp_path, "pairs")
    pred = dataclasses.replace(_pred(9), score=(1.5, 3.25, 9))
    save_pair(store, "k", pred, storage)
    seq = CachedPredictions(store, [(0, 1, "k", False), (1, 0, "k", True)])
    for k in range(2):
        full, head = seq[k], seq.pair_header(k)
        assert (head.i, head.j, head.shape1, head.shape2) == (full.i, full.j, full.shape1, full.shape2)
        for name in ("xy1", "xy2", "match_conf"):
            np.testing.assert_array_equal(getattr(head, name), getattr(full, name))
            assert getattr(head, name).dtype == getattr(full, name).dtype
        assert head.score == full.score
        head.validate()
    path = store.path("k")
    path.write_bytes(b"\x10" + path.read_bytes()[1:])  # header length now points past the header
    with pytest.raises(CacheError, match=r"pair \(0, 1\).*unusable"):
        seq.pair_header(0)
    path.unlink()
    with pytest.raises(CacheError, match="missing"):
        seq.pair_header(0)


def test_align_from_cache_refuses_an_entry_whose_matches_were_damaged(tmp_path: Path) -> None:
    """The pair index reads matches without the checksum (pair_header); the full read of every pair before the
    optimisation verifies it, so damaged match bytes stop the alignment with a CacheError, never a wrong scene."""
    from sparsega import align, sim

    sc = sim.make_scene("orbit", n_views=3, height=64, width=96, seed=1)
    preds = sim.simulate_predictions(sc, [(0, 1), (0, 2), (1, 2)], seed=1)
    store = ArrayStore(tmp_path, "pairs")
    for p in preds:
        save_pair(store, f"p{p.i}{p.j}", p, "compact")
    seq = CachedPredictions(store, [(p.i, p.j, f"p{p.i}{p.j}", False) for p in preds])
    assert align(seq, progress=False, niter1=5, niter2=5).n_images == 3
    path = store.path("p12")
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    begin = json.loads(data[8 : 8 + header_len])["xy1"]["data_offsets"][0]
    data[8 + header_len + begin] ^= 0x01  # one bit of the first match's x
    path.write_bytes(bytes(data))
    assert seq.pair_header(2).xy1[0, 0] != preds[2].xy1[0, 0]  # the index sees the damaged value...
    with pytest.raises(CacheError, match=r"pair \(1, 2\)"):  # ...and the alignment refuses it
        align(seq, progress=False, niter1=5, niter2=5)
