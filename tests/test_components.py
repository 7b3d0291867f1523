"""Disconnected views: components of the match graph, each aligned as its own Scene; isolated images reported."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from sparsega import sim
from sparsega.alignment.api import align, align_components
from sparsega.alignment.components import self_pair, split_components, subset_predictions
from sparsega.errors import ConfigError, GraphError
from sparsega.frontend.pairs import make_pairs
from sparsega.types import AlignConfig, PairPrediction

CFG = AlignConfig(niter1=40, niter2=40, progress=False)
H, W = 48, 64


def _offset(preds: list[PairPrediction], k: int) -> list[PairPrediction]:
    return [dataclasses.replace(p, i=p.i + k, j=p.j + k) for p in preds]


def _no_matches(p: PairPrediction, i: int, j: int) -> PairPrediction:
    z = np.zeros((0, 2), np.int64)
    return dataclasses.replace(
        p, i=i, j=j, xy1=z, xy2=z.copy(), match_conf=np.zeros(0, np.float32), score=(1.0, 0.0, 0)
    )


@pytest.fixture(scope="module")
def two_scenes() -> dict:
    """Scene A (4 views, images 0-3), scene B (3 views, images 4-6), image 7 whose only pairs have zero matches;
    A-B also joined by a zero-match pair (3, 4)."""
    a = sim.make_scene("orbit", n_views=4, height=H, width=W, seed=1)
    b = sim.make_scene("walk", n_views=3, height=H, width=W, seed=2)
    c = sim.make_scene("hemisphere", n_views=2, height=H, width=W, seed=3)
    pa = sim.simulate_predictions(a, make_pairs(4, "complete"), seed=1)
    pb = sim.simulate_predictions(b, make_pairs(3, "complete"), seed=2)
    pc = sim.simulate_predictions(c, [[0, 1]], seed=3)[0]
    cross = [_no_matches(pa[0], 3, 4), _no_matches(pc, 7, 0), _no_matches(pc, 7, 5)]
    preds = pa + _offset(pb, 4) + cross
    images = list(a.images) + list(b.images) + [c.images[0]]
    return {"a": pa, "b": pb, "preds": preds, "images": images, "paths": [f"im{k}.png" for k in range(8)]}


def test_split_zero_match_pairs_do_not_link(two_scenes):
    split = split_components(two_scenes["preds"])
    assert [g.tolist() for g in split.groups] == [[0, 1, 2, 3], [4, 5, 6]]
    assert split.isolated == [7] and not split.connected and split.n_images == 8
    # an image referenced by no prediction is isolated too
    assert split_components(two_scenes["a"], n_images=6).isolated == [4, 5]
    assert split_components(two_scenes["a"]).connected


def test_trusted_link_mode_is_stricter(two_scenes):
    by_pair = {(min(p.i, p.j), max(p.i, p.j)): p for p in two_scenes["a"]}
    weak = dataclasses.replace(by_pair[(0, 1)], match_conf=np.minimum(by_pair[(0, 1)].match_conf, 4.0))
    strong = by_pair[(2, 3)]
    assert strong.match_conf.max() > 5.0
    split = split_components([weak, strong])
    assert [g.tolist() for g in split.groups] == [[0, 1], [2, 3]] and split.isolated == []
    split = split_components([weak, strong], link="trusted", matching_conf_thr=5.0)
    assert [g.tolist() for g in split.groups] == [[2, 3]] and split.isolated == [0, 1]
    with pytest.raises(ConfigError, match="link"):
        split_components([weak], link="sometimes")  # type: ignore[arg-type]


def test_subset_predictions_remaps_indices(two_scenes):
    sub = subset_predictions(two_scenes["preds"], [4, 5, 6])
    assert [(p.i, p.j) for p in sub] == [(q.i, q.j) for q in two_scenes["b"]]
    for p, q in zip(sub, two_scenes["b"]):
        assert p.pts11 is q.pts11 and p.xy1 is q.xy1  # no copies


def test_align_raises_graph_error_listing_groups(two_scenes):
    """Without any pair between the groups, align() refuses with the groups named (never an assertion)."""
    preds = two_scenes["a"] + _offset(two_scenes["b"], 4)
    with pytest.raises(GraphError, match=r"disconnected.*\[0, 1, 2, 3\], \[4, 5, 6\]"):
        align(preds, CFG)


def test_align_components_each_scene_equals_its_own_alignment(two_scenes, caplog):
    with caplog.at_level(logging.WARNING, logger="sparsega"):
        scenes, unregistered = align_components(
            two_scenes["preds"], CFG, images=two_scenes["images"], image_paths=two_scenes["paths"]
        )
    assert unregistered == [7]
    assert "unregistered" in caplog.text and "im7.png" in caplog.text
    assert [s.image_index.tolist() for s in scenes] == [[0, 1, 2, 3], [4, 5, 6]]
    assert scenes[0].image_paths == ["im0.png", "im1.png", "im2.png", "im3.png"]
    assert scenes[1].image_paths == ["im4.png", "im5.png", "im6.png"]
    np.testing.assert_array_equal(scenes[1].images[0], two_scenes["images"][4])
    # each component is exactly the alignment of that scene's predictions alone (cross pairs dropped)
    ref_a = align(two_scenes["a"], CFG)
    ref_b = align(two_scenes["b"], CFG)
    for got, ref in ((scenes[0], ref_a), (scenes[1], ref_b)):
        np.testing.assert_array_equal(got.cam2w, ref.cam2w)
        np.testing.assert_array_equal(got.intrinsics, ref.intrinsics)
        for d1, d2 in zip(got.depthmaps, ref.depthmaps):
            np.testing.assert_array_equal(d1, d2)
        assert np.isfinite(got.cam2w).all()


def test_isolated_image_from_self_pair(two_scenes):
    scenes, unregistered = align_components(two_scenes["preds"], CFG, isolated="self-pair")
    assert unregistered == [] and len(scenes) == 3
    single = scenes[2]
    assert single.image_index.tolist() == [7] and single.n_images == 1
    np.testing.assert_allclose(single.cam2w[0, :3, :3], np.eye(3), atol=1e-6)
    assert np.isfinite(single.depthmaps[0]).all() and (single.depthmaps[0] > 0).all()
    sp = self_pair(two_scenes["preds"], 7)
    assert sp is not None and (sp.i, sp.j) == (0, 0) and sp.n_matches == 0
    assert self_pair(two_scenes["a"], 9) is None


def test_connected_graph_gives_one_scene_equal_to_align(two_scenes):
    scenes, unregistered = align_components(two_scenes["a"], CFG)
    assert unregistered == [] and len(scenes) == 1
    np.testing.assert_array_equal(scenes[0].cam2w, align(two_scenes["a"], CFG).cam2w)


def test_bad_isolated_mode(two_scenes):
    with pytest.raises(ConfigError, match="isolated"):
        align_components(two_scenes["a"], CFG, isolated="drop")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- CLI
def test_align_cache_writes_one_folder_per_component(two_scenes, tmp_path, capsys):
    """naver cache of the two scenes + the isolated image: OUT/component_0 (4 views), OUT/component_1 (3 views),
    a top-level report saying which images went where and that im7 is unregistered."""
    import json

    from PIL import Image

    from sparsega import cli
    from sparsega.interop import write_mast3r_cache

    paths = []
    for k, im in enumerate(two_scenes["images"]):
        p = tmp_path / f"im{k}.png"
        Image.fromarray(np.asarray(im, np.uint8)).save(p)
        paths.append(str(p))
    write_mast3r_cache(tmp_path / "cache", paths, two_scenes["preds"])
    out = tmp_path / "out"
    rc = cli.main(
        [
            "align-cache",
            str(tmp_path / "cache"),
            "--images",
            *paths,
            "--image-size",
            "64",
            "-o",
            str(out),
            "--niter1",
            "40",
            "--niter2",
            "40",
            "--quiet",
            "--json",
        ]
    )
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "unregistered" in cap.err and "im7.png" in cap.err
    summary = json.loads(cap.out)
    assert [c["folder"] for c in summary["components"]] == ["component_0", "component_1"]
    report = json.loads((out / "report.json").read_text())
    assert [c["image_indices"] for c in report["components"]] == [[0, 1, 2, 3], [4, 5, 6]]
    assert report["components"][1]["images"] == paths[4:7] and report["unregistered"] == [paths[7]]
    for k, n in ((0, 4), (1, 3)):
        sub = out / f"component_{k}"
        for entry in ("scene/scene.npz", "points.ply", "cameras.json", "colmap/sparse/0/images.bin", "report.json"):
            assert (sub / entry).exists(), (k, entry)
        cams = json.loads((sub / "cameras.json").read_text())["images"]
        assert len(cams) == n
    assert sorted(p.name for p in out.iterdir()) == ["component_0", "component_1", "report.json"]
    # the component is the alignment of its scene alone (same predictions, same config)
    from sparsega.scene import Scene

    got = Scene.load(out / "component_1" / "scene")
    np.testing.assert_allclose(got.cam2w, align(two_scenes["b"], CFG).cam2w, atol=1e-6)


# ------------------------------------------------------------------------------- one policy, every entry point
EXPECTED = ([[0, 1, 2, 3], [4, 5, 6]], [7])


def _files(two_scenes, folder):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    paths = []
    for k, im in enumerate(two_scenes["images"]):
        p = folder / f"im{k}.png"
        Image.fromarray(np.asarray(im, np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _from_report(out, paths):
    import json

    report = json.loads((out / "report.json").read_text())
    return [c["image_indices"] for c in report["components"]], [paths.index(u) for u in report["unregistered"]]


@pytest.mark.parametrize("entry", ["align", "reconstruct", "cli-demo", "cli-reconstruct", "cli-align-cache"])
def test_disconnected_graph_same_outcome_everywhere(entry, two_scenes, tmp_path, monkeypatch, capsys):
    """The same split predictions through the API and every CLI command: the same components (input indices) and
    the same unregistered image; without ``components=True`` the API refuses with a GraphError naming the fix."""
    from sparsega import cli
    from sparsega.frontend import inference
    from sparsega.pipeline import reconstruct

    from conftest import GOLDEN

    preds = two_scenes["preds"]
    ckpt = str(GOLDEN / "model_tiny_a.pth")
    monkeypatch.setattr(inference, "run_pairs", lambda *a, **k: list(preds))  # the network, replaced
    out = tmp_path / "out"
    fast = ["--niter1", "40", "--niter2", "40", "--quiet"]
    if entry == "align":
        res = align(preds, CFG, components=True)
        assert ([s.image_index.tolist() for s in res.scenes], res.unregistered) == EXPECTED
        with pytest.raises(GraphError, match="components=True"):
            align(preds, CFG)
        return
    paths = _files(two_scenes, tmp_path / "img")
    if entry == "reconstruct":
        res = reconstruct(paths, ckpt, "complete", size=64, components=True, config=CFG, progress=False)
        assert ([s.image_index.tolist() for s in res.scenes], res.unregistered) == EXPECTED
        assert [s.image_paths for s in res.scenes] == [paths[:4], paths[4:7]]
        assert res.scenes[1].original_sizes.tolist() == [[W, H]] * 3
        with pytest.raises(GraphError, match="components=True"):
            reconstruct(paths, ckpt, "complete", size=64, config=CFG, progress=False)
        return
    if entry == "cli-demo":
        monkeypatch.setattr(sim, "simulate_predictions", lambda *a, **k: list(preds))
        argv = ["demo", "--n-views", "8", "--height", str(H), "--width", str(W), "-o", str(out), *fast]
        paths = [str(out.resolve() / "images" / f"view_{k:03d}.png") for k in range(8)]
    elif entry == "cli-reconstruct":
        argv = [
            "reconstruct",
            *paths,
            "-c",
            ckpt,
            "--image-size",
            "64",
            "--scene-graph",
            "complete",
            "-o",
            str(out),
            *fast,
        ]
    else:
        from sparsega.interop import write_mast3r_cache

        write_mast3r_cache(tmp_path / "cache", paths, preds)
        argv = ["align-cache", str(tmp_path / "cache"), "--images", *paths, "--image-size", "64", "-o", str(out), *fast]
    rc = cli.main(argv)
    assert rc == 0, capsys.readouterr().err
    assert _from_report(out, paths) == EXPECTED
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("component_")) == ["component_0", "component_1"]
