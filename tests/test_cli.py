"""The ``sparsega`` command line, run as a subprocess: demo end to end, export/eval on saved scenes, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _scenes import plane_scene

SMALL_DEMO = ["--n-views", "4", "--height", "96", "--width", "128", "--niter1", "100", "--niter2", "100"]


def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sparsega", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def _one_error_line(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsega: error: "), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """An output folder holding only scene/ (a saved exact plane scene)."""
    out = tmp_path_factory.mktemp("saved") / "out"
    plane_scene().save(out / "scene")
    return out


# ------------------------------------------------------------------------------------------------ demo
@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("demo") / "out"
    res = run("demo", "-o", str(out), "--quiet", "--json", *SMALL_DEMO)
    return res, out


def test_demo_small_writes_everything(small_demo):
    res, out = small_demo
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)  # --json: exactly one JSON object on stdout
    assert summary["command"] == "demo" and Path(summary["output"]) == out
    for entry in (
        "scene/scene.npz",
        "scene.glb",
        "points.ply",
        "colmap/sparse/0/cameras.bin",
        "colmap/sparse/0/images.bin",
        "colmap/sparse/0/points3D.bin",
        "transforms.json",
        "cameras.json",
        "depth",
        "preview.png",
        "report.json",
        "images/view_000.png",
        "ground_truth.json",
    ):
        assert (out / entry).exists(), entry
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["n_images"] == 4 and report["counts"]["n_pairs"] == 6
    assert report["config"]["niter1"] == 100 and report["config"]["progress"] is False
    assert [s["niter"] for s in report["losses"]] == [100, 100]
    assert {"align", "export", "simulate_predictions"} <= set(report["timings_s"])
    m = report["metrics"]
    assert m == summary["metrics"]
    # tiny images and short schedules: loose sanity only (the strict bounds are the default-demo test)
    assert m["rra15"] >= 0.8 and m["ate_rel"] < 0.1 and m["focal_err_med"] < 0.1
    # transforms.json points at the demo images inside the folder, relative paths
    meta = json.loads((out / "transforms.json").read_text())
    assert [f["file_path"] for f in meta["frames"]] == [f"images/view_{k:03d}.png" for k in range(4)]


def test_demo_outputs_reread_by_consumers(small_demo):
    import pycolmap
    import trimesh
    from plyfile import PlyData

    from sparsega.scene import Scene

    res, out = small_demo
    assert res.returncode == 0, res.stderr
    scene = Scene.load(out / "scene")
    rec = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    assert rec.num_reg_images() == 4 and rec.num_points3D() > 0
    for k in range(4):
        img = rec.find_image_with_name(f"view_{k:03d}.png")
        np.testing.assert_allclose(
            img.cam_from_world().matrix(), np.linalg.inv(scene.cam2w[k].astype(float))[:3], atol=1e-6
        )
        K = scene.intrinsics[k].astype(float)
        np.testing.assert_allclose(
            rec.cameras[img.camera_id].params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], atol=1e-6
        )
    glb = trimesh.load(out / "scene.glb", file_type="glb")
    assert sum(isinstance(g, trimesh.PointCloud) for g in glb.geometry.values()) == 1
    ply = PlyData.read(str(out / "points.ply"))
    assert ply["vertex"].count == json.loads((out / "report.json").read_text())["counts"]["n_points_dense"]
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == 4


def test_eval_demo_against_its_ground_truth(small_demo):
    """eval recomputes the demo's metrics from ground_truth.json (same numbers as the demo's own report)."""
    res, out = small_demo
    assert res.returncode == 0, res.stderr
    demo_metrics = json.loads((out / "report.json").read_text())["metrics"]
    ev = run("eval", str(out), "--gt", str(out / "ground_truth.json"), "--json", "--no-save")
    assert ev.returncode == 0, ev.stderr
    got = json.loads(ev.stdout)["metrics"]
    for key in ("ate_rel", "rra5", "rta5", "rot_err_med", "focal_err_med"):
        assert got[key] == pytest.approx(demo_metrics[key], rel=1e-6, abs=1e-9), key


def test_demo_default_meets_accuracy_bounds(tmp_path):
    """`sparsega demo` with its defaults (what `make demo` runs) meets the alignment accuracy bounds."""
    out = tmp_path / "demo_out"
    res = run("demo", "-o", str(out), "--quiet", timeout=900)
    assert res.returncode == 0, res.stderr
    m = json.loads((out / "report.json").read_text())["metrics"]
    assert m["rra5"] >= 0.95 and m["rta5"] >= 0.90
    assert m["rot_err_med"] <= 1.0 and m["ate_rel"] <= 0.02 and m["focal_err_med"] <= 0.03
    assert "RRA@5" in res.stdout  # the table


# -------------------------------------------------------------------------------------- export / eval
def test_export_in_place_and_to_new_folder(saved, tmp_path):
    res = run("export", str(saved), "--format", "ply,colmap", "--min-conf", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    assert (saved / "points.ply").is_file() and (saved / "colmap" / "sparse" / "0" / "images.bin").is_file()
    assert not (saved / "scene.glb").exists()
    dest = tmp_path / "dest"
    res = run("export", str(saved), "--format", "all", "-o", str(dest), "--json")
    assert res.returncode == 0, res.stderr
    assert set(json.loads(res.stdout)["formats"]) >= {"glb", "nerfstudio", "preview", "scene"}
    assert (dest / "scene" / "scene.json").is_file() and (dest / "preview.png").is_file()
    _one_error_line(run("export", str(saved), "-o", str(dest)), "exists", "--overwrite")
    _one_error_line(run("export", str(saved), "--format", "obj"), "obj")


def test_eval_gt_formats_exact_scene(saved, tmp_path):
    """The scene's own cameras as ground truth (JSON of cam2w, COLMAP model): perfect metrics."""
    from sparsega.io.writers import write_colmap
    from sparsega.scene import Scene

    scene = Scene.load(saved / "scene")
    gt_json = tmp_path / "gt.json"
    gt_json.write_text(json.dumps({f"img_{k}.png": scene.cam2w[k].tolist() for k in range(scene.n_images)}))
    write_colmap(scene, tmp_path / "model")
    for gt in (gt_json, tmp_path / "model"):
        res = run("eval", str(saved), "--gt", str(gt), "--json", "--no-save")
        assert res.returncode == 0, res.stderr
        m = json.loads(res.stdout)["metrics"]
        assert m["rra5"] == 1.0 and m["rta5"] == 1.0 and m["ate"] < 1e-5 and m["n_evaluated"] == 4
    assert (
        json.loads(run("eval", str(saved), "--gt", str(tmp_path / "model"), "--json", "--no-save").stdout)["metrics"][
            "focal_err_med"
        ]
        < 1e-6
    )
    _one_error_line(run("eval", str(saved), "--gt", str(tmp_path / "nope.json")), "nope.json")
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"zzz.png": np.eye(4).tolist()}))
    _one_error_line(run("eval", str(saved), "--gt", str(bad)), "matches 0")


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args,needles",
    [
        (["demo", "-o", "{tmp}/x", "--niter1", "-1"], ["niter1"]),
        (["demo", "-o", "{tmp}/x", "--scene-graph", "star-3"], ["star-3"]),
        (["demo", "-o", "{tmp}/x", "--lr1", "0"], ["lr1"]),
        (["demo", "-o", "{tmp}/x", "--kinematic-mode", "tree"], ["--kinematic-mode"]),
        (["demo", "-o", "{tmp}/x", "--subsample", "3"], ["subsample"]),
        (["demo", "-o", "{tmp}/x", "--niter1", "ten"], ["--niter1"]),
        (["reconstruct", "{tmp}/missing.jpg", "-c", "{tmp}/w.pth", "-o", "{tmp}/x"], ["missing.jpg"]),
        (["reconstruct", "{tmp}/img.png", "-c", "{tmp}/w.pth", "-o", "{tmp}/x"], ["w.pth"]),
        (["reconstruct", "{tmp}/img.png", "-o", "{tmp}/x"], ["--checkpoint"]),
        (["align-cache", "{tmp}/nocache", "--images", "{tmp}/img.png", "-o", "{tmp}/x"], ["nocache"]),
        (["export", "{tmp}/nothing"], ["nothing"]),
        (["bogus"], ["bogus"]),
        ([], ["COMMAND"]),
    ],
)
def test_bad_options_exit_2_one_line(tmp_path, args, needles):
    (tmp_path / "img.png").write_bytes(b"not really a png")
    res = run(*[a.format(tmp=tmp_path) for a in args])
    _one_error_line(res, *needles)
    assert not (tmp_path / "x").exists()


def test_existing_output_refused_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _one_error_line(run("demo", "-o", str(out), *SMALL_DEMO), "exists", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_view_without_viser_is_a_clear_error(saved):
    pytest.importorskip("PIL")
    try:
        import viser  # noqa: F401
    except ImportError:
        _one_error_line(run("view", str(saved)), "viser", "sparsega[viewer]")
    else:  # pragma: no cover - viser installed: the server would block
        pytest.skip("viser is installed")


def test_internal_error_exit_1_without_traceback(monkeypatch, capsys, saved):
    from sparsega import cli
    from sparsega.cli import files

    def boom(args):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(files, "run_export", boom)
    assert cli.main(["export", str(saved)]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: unexpected" in err and "--debug" in err and "Traceback" not in err
    assert cli.main(["export", str(saved), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_version_and_help():
    res = run("--version")
    assert res.returncode == 0 and res.stdout.startswith("sparsega ")
    res = run("demo", "--help")
    assert res.returncode == 0 and "--n-views" in res.stdout and "--scene-graph" in res.stdout


def test_align_cache_maps_back_to_original_pixels(tmp_path):
    """naver cache of simulated predictions for 128x96 network images whose files are 256x192: the outputs are in
    the files' pixels (COLMAP size and focals x2) and eval against the true cameras passes."""
    from PIL import Image

    from sparsega import sim
    from sparsega.frontend.pairs import make_pairs
    from sparsega.interop import write_mast3r_cache

    gt = sim.make_scene("orbit", n_views=4, height=96, width=128, seed=3)
    paths = []
    for k, im in enumerate(gt.images):
        p = tmp_path / f"im{k}.png"
        Image.fromarray(np.asarray(im)).resize((256, 192), Image.NEAREST).save(p)
        paths.append(str(p))
    preds = sim.simulate_predictions(gt, make_pairs(4, "complete"), seed=3)
    write_mast3r_cache(tmp_path / "cache", paths, preds)
    gt_json = tmp_path / "gt.json"
    gt_json.write_text(
        json.dumps(
            {
                "extent": float(gt.extent),
                "images": [
                    {
                        "name": f"im{k}.png",
                        "cam2w": np.asarray(gt.cam2w[k]).tolist(),
                        "K": (np.diag([2.0, 2.0, 1.0]) @ np.asarray(gt.intrinsics[k])).tolist(),
                    }
                    for k in range(4)
                ],
            }
        )
    )
    out = tmp_path / "out"
    res = run(
        "align-cache",
        str(tmp_path / "cache"),
        "--images",
        *paths,
        "--image-size",
        "128",
        "-o",
        str(out),
        "--niter1",
        "100",
        "--niter2",
        "100",
        "--gt",
        str(gt_json),
        "--quiet",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)["metrics"]
    assert m["rra15"] >= 0.8 and m["focal_err_med"] < 0.1 and m["ate_rel"] < 0.1
    cams = json.loads((out / "cameras.json").read_text())["images"]
    assert all((c["width"], c["height"]) == (256, 192) and c["network_size"] == [128, 96] for c in cams)
    for c in cams:
        K, Kn = np.asarray(c["K"]), np.asarray(c["K_network"])
        np.testing.assert_allclose(K[0, 0], 2 * Kn[0, 0], rtol=1e-12)
        np.testing.assert_allclose(K[0, 2], 2 * Kn[0, 2] + 0.5, rtol=1e-12)  # pixel-centre convention
