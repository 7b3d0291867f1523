"""Exports re-read by the library that consumes them (pycolmap, trimesh, plyfile, json), on exact scenes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparsega.errors import ConfigError, InputError
from sparsega.io import export
from sparsega.io.preview import render_preview

from _scenes import plane_scene, scale_crop_map


@pytest.fixture(scope="module")
def scene():
    return plane_scene()


@pytest.fixture(scope="module")
def mapped_scene():
    return plane_scene(net_to_orig=scale_crop_map(4, scale=2.0, left=8, top=4))


def _read_colmap(folder: Path):
    import pycolmap

    return pycolmap.Reconstruction(str(folder))


@pytest.mark.parametrize("which", ["identity", "scale2_crop"])
def test_colmap_roundtrip_poses_intrinsics(tmp_path, scene, mapped_scene, which):
    s = scene if which == "identity" else mapped_scene
    export.write_colmap(s, tmp_path / "sparse" / "0")
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (tmp_path / "sparse" / "0" / name).is_file()
    rec = _read_colmap(tmp_path / "sparse" / "0")
    assert rec.num_images() == s.n_images and rec.num_cameras() == s.n_images
    A = s.net_to_orig
    for k in range(s.n_images):
        img = rec.find_image_with_name(f"img_{k}.png")
        # poses: world-to-camera = inverse of the Scene's cam2w, exactly (float64 of the float32 values)
        w2c = np.linalg.inv(s.cam2w[k].astype(np.float64))
        np.testing.assert_allclose(img.cam_from_world().matrix(), w2c[:3], atol=1e-6, rtol=0)
        # intrinsics: A @ K in original pixels, principal point + 0.5 (COLMAP's corner origin)
        K0 = A[k] @ s.intrinsics[k].astype(np.float64)
        cam = rec.cameras[img.camera_id]
        assert cam.model_name == "PINHOLE"
        np.testing.assert_allclose(cam.params, [K0[0, 0], K0[1, 1], K0[0, 2] + 0.5, K0[1, 2] + 0.5], atol=1e-6, rtol=0)
        assert (cam.width, cam.height) == ((64, 48) if which == "identity" else (160, 112))


def test_colmap_mapping_is_scale_and_offset(tmp_path, mapped_scene):
    """Scale 2 + crop (8, 4): fx doubles, cx_orig = 2 * cx + 2 * 8.5 - 0.5 (then + 0.5 for COLMAP)."""
    export.write_colmap(mapped_scene, tmp_path)
    cam = _read_colmap(tmp_path).cameras[1]
    K = mapped_scene.intrinsics[0].astype(np.float64)
    np.testing.assert_allclose(cam.params, [2 * K[0, 0], 2 * K[1, 1], 2 * K[0, 2] + 17.0, 2 * K[1, 2] + 9.0], atol=1e-6)


@pytest.mark.parametrize("which", ["identity", "scale2_crop"])
def test_colmap_points_and_tracks_reproject(tmp_path, scene, mapped_scene, which):
    s = scene if which == "identity" else mapped_scene
    export.write_colmap(s, tmp_path)
    rec = _read_colmap(tmp_path)
    assert rec.num_points3D() == sum(len(xy) for xy in s.sparse_xy)
    # every observation is where pycolmap projects the point (own image: the sparse pixel mapped to original)
    n_obs, multi = 0, 0
    for p in rec.points3D.values():
        assert p.track.length() >= 1
        multi += p.track.length() > 1
        for el in p.track.elements:
            img = rec.images[el.image_id]
            proj = img.project_point(p.xyz)
            np.testing.assert_allclose(proj, img.points2D[el.point2D_idx].xy, atol=1e-3)
            n_obs += 1
    assert multi > 0.5 * rec.num_points3D()  # overlapping views: most points seen twice or more
    assert rec.compute_mean_reprojection_error() < 1e-3
    # own observation of image 0's first sparse pixel, in original pixels + 0.5
    img0 = rec.find_image_with_name("img_0.png")
    xy = s.sparse_xy[0][0].astype(np.float64)
    A = s.net_to_orig[0]
    np.testing.assert_allclose(img0.points2D[0].xy, A[:2, :2] @ xy + A[:2, 2] + 0.5, atol=1e-9)


def test_glb_loads_with_trimesh(tmp_path, scene):
    import trimesh

    path = export.write_glb(scene, tmp_path / "scene.glb", min_conf=1.0)
    loaded = trimesh.load(path, file_type="glb")
    clouds = [g for g in loaded.geometry.values() if isinstance(g, trimesh.PointCloud)]
    paths = [g for g in loaded.geometry.values() if isinstance(g, trimesh.path.Path3D)]
    assert len(clouds) == 1 and len(paths) == scene.n_images
    pts, cols, _ = scene.point_cloud(min_conf=1.0)
    assert len(clouds[0].vertices) == len(pts)
    # glTF y-up: vertices = world points with y and z negated
    np.testing.assert_allclose(clouds[0].vertices, pts * [1, -1, -1], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(clouds[0].colors)[:, :3], cols)


def test_ply_reads_with_plyfile(tmp_path, scene):
    from plyfile import PlyData

    scene2 = plane_scene()
    scene2.confidences[1][:10] = 0.5  # below threshold: dropped
    export.write_ply(scene2, tmp_path / "p.ply", min_conf=1.0)
    v = PlyData.read(str(tmp_path / "p.ply"))["vertex"]
    names = [p.name for p in v.properties]
    assert names == ["x", "y", "z", "red", "green", "blue", "confidence"]
    pts, cols, conf = scene2.point_cloud(min_conf=1.0)
    assert v.count == len(pts) == sum(d.size for d in scene2.depthmaps) - 10 * 64
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], -1), pts)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], -1), cols)
    np.testing.assert_array_equal(v["confidence"], conf)


def test_nerfstudio_transforms(tmp_path, mapped_scene):
    path = export.write_nerfstudio(mapped_scene, tmp_path / "transforms.json", ply_file_path="points.ply")
    meta = json.loads(path.read_text())
    assert len(meta["frames"]) == mapped_scene.n_images and meta["ply_file_path"] == "points.ply"
    for k, fr in enumerate(meta["frames"]):
        c2w = np.asarray(fr["transform_matrix"]) @ np.diag([1, -1, -1, 1])  # back to OpenCV axes
        np.testing.assert_allclose(c2w, mapped_scene.cam2w[k], atol=1e-7)
        K0 = mapped_scene.net_to_orig[k] @ mapped_scene.intrinsics[k].astype(np.float64)
        assert fr["fl_x"] == pytest.approx(K0[0, 0]) and fr["fl_y"] == pytest.approx(K0[1, 1])
        assert fr["cx"] == pytest.approx(K0[0, 2] + 0.5) and fr["cy"] == pytest.approx(K0[1, 2] + 0.5)
        assert (fr["w"], fr["h"]) == (160, 112)
        assert Path(fr["file_path"]).is_absolute()  # images outside the folder: absolute paths


def test_cameras_json_and_depths(tmp_path, mapped_scene):
    doc = json.loads(export.write_cameras_json(mapped_scene, tmp_path / "cameras.json").read_text())
    assert [im["name"] for im in doc["images"]] == [f"img_{k}.png" for k in range(4)]
    im = doc["images"][2]
    np.testing.assert_allclose(im["cam2w"], mapped_scene.cam2w[2], atol=1e-7)
    np.testing.assert_allclose(im["K"], mapped_scene.net_to_orig[2] @ mapped_scene.intrinsics[2], atol=1e-5)
    assert im["network_size"] == [64, 48] and (im["width"], im["height"]) == (160, 112)
    export.write_depths(mapped_scene, tmp_path / "depth")
    for k in range(4):
        np.testing.assert_array_equal(np.load(tmp_path / "depth" / f"{k:04d}_img_{k}.npy"), mapped_scene.depthmaps[k])
        with Image.open(tmp_path / "depth" / f"{k:04d}_img_{k}.png") as png:
            assert png.size == (64, 48) and png.mode == "RGB"


def test_colorize_depth_orders_near_to_far():
    d = np.tile(np.linspace(1, 10, 50, dtype=np.float32), (4, 1))
    d[0, 0] = np.nan
    rgb = export.colorize_depth(d)
    assert rgb.shape == (4, 50, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 0).all()  # invalid -> black
    assert rgb[1, 0, 2] > rgb[1, 0, 0] and rgb[1, -1, 0] > rgb[1, -1, 2]  # near blue, far red


def test_original_sizes_prefers_the_scene_field(mapped_scene):
    np.testing.assert_array_equal(export.original_sizes(mapped_scene), [[160, 112]] * 4)
    s = dataclasses.replace(plane_scene(net_to_orig=scale_crop_map(4)), original_sizes=[[161, 113]] * 4)
    # e.g. an odd resized width: the known size wins over the estimate, and survives save/load
    np.testing.assert_array_equal(export.original_sizes(s), [[161, 113]] * 4)


def test_scene_is_frozen_and_saves_atomically(tmp_path):
    s = plane_scene()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.net_to_orig = None  # type: ignore[misc]
    path = s.save(tmp_path / "scene")
    (path / "marker").write_text("old")
    s2 = dataclasses.replace(s, original_sizes=[[64, 48]] * s.n_images)
    s2.save(path)  # replaces the old folder as a whole
    assert not (path / "marker").exists()
    back = type(s).load(path)
    np.testing.assert_array_equal(back.original_sizes, [[64, 48]] * s.n_images)
    np.testing.assert_array_equal(back.image_index, np.arange(s.n_images))
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]  # no temp folder left behind


def test_preview_png(tmp_path, scene):
    path = tmp_path / "preview.png"
    img = render_preview(scene, path, min_conf=1.0)
    with Image.open(path) as png:
        png.verify()
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == img.size
        w, h = png.size
        assert w == 1200 and 600 <= h <= 1400
        arr = np.asarray(png.convert("RGB"))
    # the top row shows points (checkerboard colours) and the frusta (camera 0 is drawn in pure-ish red)
    top = arr[20 : 20 + 450]
    assert (np.abs(top.astype(int) - (230, 150, 55)).sum(-1) < 4).any()  # an orange checker point
    assert ((top[..., 0] > 200) & (top[..., 1] < 30) & (top[..., 2] < 30)).any()  # camera 0's red frustum
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50


def test_export_all_layout_and_refusals(tmp_path, scene):
    out = tmp_path / "out"
    timings = export.export_all(scene, out, "all", min_conf=1.0)
    assert set(timings) == set(export.FORMATS)
    for entry in (
        "scene/scene.npz",
        "scene.glb",
        "points.ply",
        "colmap/sparse/0/images.bin",
        "transforms.json",
        "cameras.json",
        "depth/0000_img_0.npy",
        "preview.png",
    ):
        assert (out / entry).exists(), entry
    with pytest.raises(InputError, match="exists"):
        export.export_all(scene, out, "ply")
    export.export_all(scene, out, "ply", overwrite=True)  # replaced as a whole
    assert sorted(p.name for p in out.iterdir()) == ["points.ply"]
    export.export_all(scene, out, "cameras", merge=True)  # merged into the existing folder
    assert sorted(p.name for p in out.iterdir()) == ["cameras.json", "points.ply"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


def test_failed_export_leaves_nothing(tmp_path, scene, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(export, "write_colmap", boom)
    with pytest.raises(RuntimeError):
        export.export_all(scene, tmp_path / "new", "all")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    export.export_all(scene, old, "cameras")
    with pytest.raises(RuntimeError):
        export.export_all(scene, old, "all", overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == ["cameras.json"]  # the previous output is intact
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_parse_formats():
    assert export.parse_formats("ply, glb") == ["glb", "ply"]
    assert export.parse_formats("all") == list(export.FORMATS)
    with pytest.raises(ConfigError, match="obj"):
        export.parse_formats("ply,obj")


def test_image_names_unique():
    s = plane_scene(n=3, paths=["a/x.png", "b/x.png", "b/y.png"])
    assert export.image_names(s) == ["a/x.png", "b/x.png", "b/y.png"]
