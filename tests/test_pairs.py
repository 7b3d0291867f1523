"""Tests of sparsega.frontend.pairs: reference scene graphs (golden), structure for other sizes, errors,
unique_pairs."""

from __future__ import annotations

import numpy as np
import pytest

from sparsega.errors import ConfigError, InputError
from sparsega.frontend.pairs import make_pairs, parse_scene_graph, unique_pairs

from conftest import load_golden

GOLDEN = load_golden("blocks/make_pairs.npz")
MODES = [k[len("pairs_") :] for k in GOLDEN if k.startswith("pairs_")]


def _as_set(p: np.ndarray) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in p}


@pytest.mark.parametrize("mode", MODES)
def test_golden_pairs(mode: str) -> None:
    ref = GOLDEN[f"pairs_{mode}"]
    got = make_pairs(int(GOLDEN["n_images"]), mode)
    assert got.dtype == np.int64 and got.shape == ref.shape
    assert _as_set(got) == _as_set(ref)
    half = len(got) // 2
    np.testing.assert_array_equal(got[half:], got[:half, ::-1])  # second half = first half swapped
    if mode.startswith(("complete", "oneref")):
        np.testing.assert_array_equal(got, ref)  # deterministic order


@pytest.mark.parametrize("mode", MODES)
def test_golden_order_matches_set_iteration(mode: str) -> None:
    # swin/logwin: the reference order is CPython's set iteration order, which we reproduce
    np.testing.assert_array_equal(make_pairs(int(GOLDEN["n_images"]), mode), GOLDEN[f"pairs_{mode}"])


def _cyc(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    d = np.abs(i - j)
    return np.minimum(d, n - d)


@pytest.mark.parametrize("n", [2, 3, 5, 20])
def test_structure(n: int) -> None:
    full = {(i, j) for i in range(n) for j in range(n) if i != j}
    assert _as_set(make_pairs(n, "complete")) == full
    for k in (1, 2, 3, 5):
        cyc = make_pairs(n, f"swin-{k}", symmetrize=False)
        assert _as_set(cyc) == {(i, j) for i, j in full if i < j and _cyc(np.array(i), np.array(j), n) <= k}
        non = make_pairs(n, f"swin-{k}-noncyclic", symmetrize=False)
        assert _as_set(non) == {(i, j) for i, j in full if i < j and j - i <= k}
        offs = {2**e for e in range(k)}
        lw = make_pairs(n, f"logwin-{k}-noncyclic", symmetrize=False)
        assert _as_set(lw) == {(i, j) for i, j in full if i < j and j - i in offs}
        lwc = make_pairs(n, f"logwin-{k}", symmetrize=False)
        assert _as_set(lwc) == {
            (i, j) for i, j in full if i < j and any((j - i - o) % n == 0 or (i - j - o) % n == 0 for o in offs)
        }
        for p in (cyc, non, lw, lwc):
            assert (p[:, 0] != p[:, 1]).all()  # no self pairs, even for windows >= n
            assert len(_as_set(p)) == len(p)
    one = make_pairs(n, f"oneref-{n - 1}")
    assert _as_set(one) == {(n - 1, j) for j in range(n - 1)} | {(j, n - 1) for j in range(n - 1)}


def test_single_image_pairs_with_itself() -> None:
    for mode in ("complete", "swin-5", "logwin", "oneref"):
        np.testing.assert_array_equal(make_pairs(1, mode), [[0, 0]])


@pytest.mark.parametrize(
    "bad", ["full", "swin-x", "swin-0", "logwin-3-cyclic", "oneref-a", "complete-2", "", "swin-3-4", "Swin-3"]
)
def test_bad_names(bad: str) -> None:
    with pytest.raises(ConfigError, match=repr(bad).strip("'") or "scene graph"):
        make_pairs(5, bad)


def test_bad_counts_and_refs() -> None:
    with pytest.raises(ConfigError, match="oneref-7"):
        make_pairs(5, "oneref-7")
    with pytest.raises(InputError):
        make_pairs(0, "complete")
    assert parse_scene_graph("swin-noncyclic") == parse_scene_graph("swin-3-noncyclic")


def test_unique_pairs() -> None:
    pairs = make_pairs(6, "complete")
    u = unique_pairs(pairs)
    np.testing.assert_array_equal(u, pairs[: len(pairs) // 2])  # first orientation, reference order
    a = unique_pairs(pairs, ascending=True)
    np.testing.assert_array_equal(a, [(i, j) for i in range(6) for j in range(i + 1, 6)])
    mixed = np.array([[2, 1], [0, 3], [1, 2], [3, 0], [0, 0], [2, 1]])
    np.testing.assert_array_equal(unique_pairs(mixed), [[2, 1], [0, 3], [0, 0]])
    assert unique_pairs(np.zeros((0, 2), dtype=np.int64)).shape == (0, 2)
    with pytest.raises(InputError):
        unique_pairs(np.zeros((3, 3), dtype=np.int64))
