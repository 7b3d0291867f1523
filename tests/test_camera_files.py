"""sparsega.io.camera_files and sparsega.evaluate: every camera-file format read back exactly from the scene's own
exports, names matched to inputs, malformed files refused with the file named; evaluation by name and by index."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sparsega.errors import InputError
from sparsega.evaluate import evaluate_by_index, evaluate_scene
from sparsega.io.camera_files import load_ground_truth, load_intrinsics_file, match_image_names
from sparsega.io.common import original_intrinsics
from sparsega.io.writers import write_cameras_json, write_colmap, write_nerfstudio

from _scenes import plane_scene


@pytest.fixture()
def scene():
    return plane_scene(paths=[f"/data/img_{k}.png" for k in range(4)])


@pytest.mark.parametrize("fmt", ["cameras", "colmap", "nerfstudio", "plain"])
def test_ground_truth_formats_read_back_the_cameras(scene, tmp_path, fmt):
    if fmt == "cameras":
        path = write_cameras_json(scene, tmp_path / "cameras.json")
    elif fmt == "colmap":
        path = write_colmap(scene, tmp_path / "model")
    elif fmt == "nerfstudio":
        path = write_nerfstudio(scene, tmp_path / "transforms.json")
    else:
        path = tmp_path / "gt.json"
        path.write_text(json.dumps({f"img_{k}.png": scene.cam2w[k].tolist() for k in range(4)}))
    gt = load_ground_truth(path)
    assert len(gt) == 4
    for k, (name, cam) in enumerate(sorted(gt.items())):
        assert f"img_{k}" in name
        np.testing.assert_allclose(cam["cam2w"], scene.cam2w[k], atol=1e-5)
        if fmt != "plain":
            assert cam["focal"] == pytest.approx(float(original_intrinsics(scene)[k, 0, 0]), rel=1e-6)
    metrics = evaluate_scene(scene, gt)
    assert metrics["rra5"] == 1.0 and metrics["ate"] < 1e-5 and metrics["n_evaluated"] == 4


def test_malformed_and_missing_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.json"):
        load_ground_truth(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a.png": [[1, 2], [3, 4]]}))
    with pytest.raises(InputError, match="bad.json.*4x4"):
        load_ground_truth(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a COLMAP model folder"):
        load_ground_truth(tmp_path / "empty")
    with pytest.raises(InputError, match="not a COLMAP model folder"):
        load_intrinsics_file(tmp_path / "empty")
    notjson = tmp_path / "k.json"
    notjson.write_text("[1, 2]")
    with pytest.raises(InputError, match="malformed intrinsics"):
        load_intrinsics_file(notjson)


def test_known_camera_files_are_matched_to_inputs(tmp_path):
    K = [[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]
    f = tmp_path / "k.json"
    f.write_text(json.dumps({"a.jpg": K, "sub/b.jpg": {"K": K}}))
    table = load_intrinsics_file(f)
    paths = ["/data/x/a.jpg", "/data/sub/b.jpg", "/data/c.jpg"]
    got = match_image_names(table, paths, str(f))
    assert set(got) == {"/data/x/a.jpg", "/data/sub/b.jpg"} and np.allclose(got["/data/x/a.jpg"], K)
    with pytest.raises(InputError, match="unknown image name 'zz.jpg'"):
        match_image_names({"zz.jpg": K}, paths, "k.json")
    with pytest.raises(InputError, match="matches several"):
        match_image_names({"a.jpg": K}, ["/p/a.jpg", "/q/a.jpg"], "k.json")


def test_evaluate_by_index_follows_the_component_images(scene):
    """A component made of input images 1 and 3 is compared with those images' truth, not with 0 and 1."""
    gt_c2w, gt_f = scene.cam2w.astype(np.float64), scene.intrinsics[:, 0, 0].astype(np.float64)
    part = dataclasses.replace(scene, cam2w=scene.cam2w[[1, 3]], intrinsics=scene.intrinsics[[1, 3]],
                               depthmaps=scene.depthmaps[1::2], confidences=scene.confidences[1::2],
                               images=scene.images[1::2], image_paths=scene.image_paths[1::2],
                               sparse_xy=scene.sparse_xy[1::2], net_to_orig=scene.net_to_orig[[1, 3]],
                               image_index=np.array([1, 3]))  # fmt: skip
    good = evaluate_by_index(part, gt_c2w, gt_f, extent=1.0)
    assert good["rot_err_med"] < 1e-4 and good["focal_err_med"] < 1e-6
    wrong = evaluate_by_index(dataclasses.replace(part, image_index=np.array([0, 1])), gt_c2w, gt_f, extent=1.0)
    assert wrong["focal_err_med"] > 0.01
