"""sparsega.reconstruct end to end with the tiny checkpoints: shapes, cache rerun, DUSt3R, known cameras, errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sparsega
from sparsega.errors import CacheError, ConfigError, InputError
from sparsega.frontend.model import MASt3RNet, load_checkpoint

from _netutils import CallCounter, write_images

GOLDEN = Path(__file__).parent / "data" / "golden"
FAST = {"niter1": 15, "niter2": 15, "progress": False}


@pytest.fixture(scope="module")
def net() -> MASt3RNet:
    return load_checkpoint(GOLDEN / "model_tiny_a.pth")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: inference runs once per pair, later tests reuse it (results are the same)."""
    return tmp_path_factory.mktemp("cache") / "c"


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three photos of 128x96 (landscape, landscape, portrait): network images 64x48 / 48x64 at size 64."""
    return write_images(tmp_path_factory.mktemp("photos"), [(96, 128), (96, 128), (128, 96)], seed=3)


def test_reconstruct_scene_and_cached_rerun(
    net: MASt3RNet, paths: list[str], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.rmtree(cache, ignore_errors=True)
    scene = sparsega.reconstruct(paths, net, "complete", size=64, cache_dir=cache, **FAST)
    assert scene.cam2w.shape == (3, 4, 4) and scene.intrinsics.shape == (3, 3, 3)
    assert [d.shape for d in scene.depthmaps] == [(48, 64), (48, 64), (64, 48)]
    assert scene.image_paths == paths
    assert np.isfinite(scene.cam2w).all() and np.isfinite(scene.intrinsics).all()
    assert scene.original_sizes.tolist() == [[128, 96], [128, 96], [96, 128]]
    # network pixel (x, y) -> original pixel: scale 2 with the pixel-centre convention, x0 = 2 x + 0.5
    np.testing.assert_allclose(scene.net_to_orig[0], [[2, 0, 0.5], [0, 2, 0.5], [0, 0, 1]])
    assert {"load", "inference", "align"} <= set(scene.info["timings_s"])
    assert scene.info["inference"]["computed"] == 3 and scene.info["inference"]["encoded"] == 3

    counter = CallCounter(net, monkeypatch)
    again = sparsega.reconstruct(paths, net, "complete", size=64, cache_dir=cache, **FAST)
    assert counter.encode_calls == 0 and counter.decode_calls == 0  # no forward pass at all
    assert again.info["inference"]["cache_hits"] == 3
    np.testing.assert_array_equal(again.cam2w, scene.cam2w)
    np.testing.assert_array_equal(again.intrinsics, scene.intrinsics)
    for a, b in zip(again.depthmaps, scene.depthmaps):
        np.testing.assert_array_equal(a, b)


def test_storage_forms_keep_their_own_entries(net: MASt3RNet, paths: list[str], tmp_path: Path) -> None:
    """A float32 run and a compact run of the same pairs do not serve each other's entries; each rerun hits."""
    cache = tmp_path / "c"
    full = sparsega.reconstruct(paths[:2], net, "complete", size=64, cache_dir=cache, storage="float32", **FAST)
    compact = sparsega.reconstruct(paths[:2], net, "complete", size=64, cache_dir=cache, **FAST)
    assert full.info["inference"]["computed"] == 1 and compact.info["inference"]["computed"] == 1
    again = sparsega.reconstruct(paths[:2], net, "complete", size=64, cache_dir=cache, storage="float32", **FAST)
    assert again.info["inference"]["cache_hits"] == 1
    np.testing.assert_array_equal(again.cam2w, full.cam2w)
    entries = sorted((cache / "pairs").rglob("*.safetensors"))
    assert len(entries) == 2
    sizes = sorted(e.stat().st_size for e in entries)
    assert sizes[0] < 0.5 * sizes[1]  # the compact entry


def test_cache_of_another_checkpoint_is_refused(net: MASt3RNet, paths: list[str], cache: Path) -> None:
    sparsega.reconstruct(paths[:2], net, "complete", size=64, cache_dir=cache, **FAST)
    with pytest.raises(CacheError, match="written by checkpoint"):
        sparsega.reconstruct(paths[:2], GOLDEN / "dust3r_tiny.pth", "complete", size=64, cache_dir=cache, **FAST)


def test_dust3r_checkpoint_path_uses_3d_matching(paths: list[str]) -> None:
    scene = sparsega.reconstruct(paths[:2], str(GOLDEN / "dust3r_tiny.pth"), "swin-5", size=64, **FAST)
    assert scene.cam2w.shape == (2, 4, 4)
    assert scene.info["inference"]["has_descriptors"] is False
    assert scene.info["stats"]["n_matches"] > 0


def test_known_intrinsics_in_original_pixels(net: MASt3RNet, paths: list[str], cache: Path) -> None:
    K0 = np.array([[150.0, 0, 63.5], [0, 150.0, 47.5], [0, 0, 1]])  # of the 128x96 photo
    scene = sparsega.reconstruct(
        paths, net, "complete", size=64, known_intrinsics={paths[1]: K0}, cache_dir=cache, **FAST
    )
    # 128x96 -> 64x48 (no crop): focal halves; pixel centres: c = (c0 + 0.5) / 2 - 0.5
    np.testing.assert_allclose(scene.intrinsics[1], [[75, 0, 31.5], [0, 75, 23.5], [0, 0, 1]], atol=1e-4)
    np.testing.assert_allclose(scene.net_to_orig[1] @ scene.intrinsics[1], K0, atol=1e-3)
    with pytest.raises(InputError, match="not one of the input images"):
        sparsega.reconstruct(paths, net, "complete", size=64, known_intrinsics={"nope.png": K0}, **FAST)


def test_duplicates_and_single_image(net: MASt3RNet, paths: list[str], cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.png"
    shutil.copy(paths[0], copy)
    with pytest.warns(UserWarning, match="same content"):
        scene = sparsega.reconstruct([paths[0], paths[1], str(copy)], net, "complete", size=64, cache_dir=cache, **FAST)
    assert scene.image_paths == paths[:2]
    single = sparsega.reconstruct(paths[2], net, "swin-5", size=64, **FAST)
    assert single.cam2w.shape == (1, 4, 4) and single.depthmaps[0].shape == (64, 48)


def test_bad_options_fail_before_any_work(net: MASt3RNet, paths: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CallCounter(net, monkeypatch)
    bad: list[dict[str, Any]] = [{"scene_graph": "bogus"}, {"niter1": -1}, {"not_an_option": 1}, {"storage": "half"}]
    for kw in bad:
        with pytest.raises(ConfigError):
            sparsega.reconstruct(paths, net, **{"scene_graph": "complete", "size": 64, **kw})
    with pytest.raises(InputError):
        sparsega.reconstruct(paths, 42, "complete", size=64)
    with pytest.raises(ConfigError, match="executor"):
        sparsega.reconstruct(paths, net, "complete", size=64, executor="threads")
    with pytest.raises(ConfigError, match="checkpoint path|pip install"):
        sparsega.reconstruct(paths, net, "complete", size=64, executor="ray")
    assert counter.encode_calls == 0


@pytest.mark.parametrize("retrieval", ["encoder", "sift"])
def test_retrieval_graph_end_to_end(net: MASt3RNet, paths: list[str], retrieval: str) -> None:
    """A retrieval graph runs the pairs its similarity selects (connected by construction) and aligns them."""
    scene = sparsega.reconstruct(paths, net, "retrieval-1", size=64, retrieval=retrieval, **FAST)
    assert scene.n_images == 3 and np.isfinite(scene.cam2w).all()
    assert scene.info["inference"]["scene_graph"] == "retrieval-1"
    assert 2 <= scene.info["stats"]["n_pairs"] <= 3  # each image's nearest + the spanning tree
    with pytest.raises(ConfigError, match="retrieval"):
        sparsega.reconstruct(paths, net, "retrieval-1", size=64, retrieval="colour", **FAST)


def test_extend_a_saved_reconstruction(net: MASt3RNet, tmp_path: Path) -> None:
    """Photos added to a saved output: the old cameras are kept exactly, the union is written, the network only
    runs the pairs that touch a new photo; bad requests are clear errors."""
    from sparsega import cli

    (tmp_path / "photos").mkdir()
    photos = write_images(tmp_path / "photos", [(96, 128)] * 5, seed=7)
    old_out, new_out = tmp_path / "old", tmp_path / "new"
    fast = ["--image-size", "64", "--niter1", "15", "--niter2", "15", "--quiet", "-c", str(GOLDEN / "model_tiny_a.pth")]
    assert cli.main(["reconstruct", *photos[:3], "--scene-graph", "complete", "-o", str(old_out), *fast]) == 0
    old = sparsega.Scene.load(old_out / "scene")
    assert cli.main(["reconstruct", *photos[3:], "--extend", str(old_out), "--scene-graph", "complete", "-o",
                     str(new_out), *fast]) == 0  # fmt: skip
    union = sparsega.Scene.load(new_out / "scene")
    assert union.n_images == 5 and union.image_paths[:3] == old.image_paths
    np.testing.assert_array_equal(union.cam2w[:3], old.cam2w)
    assert union.info["inference"]["n_pairs"] == 7  # complete over 5 photos, minus the 3 old-old pairs
    with pytest.raises(InputError, match="no new photo"):
        sparsega.reconstruct(photos[:3], net, "complete", size=64, extend=old_out, **FAST)
