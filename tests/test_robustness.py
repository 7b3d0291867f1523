"""Robustness (issue 4): bad inputs give one clear line and exit code 2 with nothing written; numerical faults
are masked / fall back / stop at the last finite state; disconnected graphs are reconstructed per component.

The bad-input matrix runs the CLI in-process (``cli.main`` + capsys, fast) and, for the "no traceback" property,
once as a subprocess. API-level checks of the same loaders live next to them (images: test_images.py,
checkpoints: test_checkpoint.py, cache: test_cache.py, naver cache: test_interop.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsega import cli, sim
from sparsega.alignment.api import align
from sparsega.alignment.kernels import match as match_kernel
from sparsega.errors import CacheError, CheckpointError, ConfigError, GraphError, InputError
from sparsega.frontend.pairs import make_pairs
from sparsega.types import AlignConfig, PairPrediction

GOLDEN = Path(__file__).parent / "data" / "golden"
CKPT = GOLDEN / "model_tiny_a.pth"
CFG = AlignConfig(niter1=40, niter2=40, progress=False)


# ---------------------------------------------------------------------------------------------- helpers
def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random colours (a few blobs) so that JPEG files have some structure."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _error_line(rc: int, err: str, *needles: str) -> str:
    """Exit code 2 and exactly one stderr line ``sparsega: error: ...`` holding every needle; returns the line."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("sparsega: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of good and bad inputs."""
    d = tmp_path_factory.mktemp("inputs")
    Image.fromarray(_noise(96, 128, 1)).save(d / "a.jpg", quality=92)
    Image.fromarray(_noise(96, 128, 2)).save(d / "b.png")
    good = (d / "a.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.png").write_text("hello, I am not an image\n")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / "tiny.png")
    (d / "empty").mkdir()
    (d / "a_file").write_text("a regular file, not a folder\n")
    (d / "not_a_ckpt.pth").write_text("not a checkpoint\n")
    data = CKPT.read_bytes()
    (d / "trunc.pth").write_bytes(data[: len(data) // 2])
    ck = torch.load(CKPT, map_location="cpu", weights_only=False)
    sd = dict(ck["model"])
    del sd[sorted(sd)[7]]
    torch.save({"model": sd, "args": ck["args"]}, d / "missing_keys.pth")
    return d


# ------------------------------------------------------------------------- the bad-input matrix (CLI)
# (id, argv with {d} = inputs folder and {out} = the output folder, needles of the one-line message)
BAD_CLI = [
    ("no-input", ["reconstruct", "-c", str(CKPT), "-o", "{out}"], ["INPUT"]),
    ("empty-folder", ["reconstruct", "{d}/empty", "-c", str(CKPT), "-o", "{out}"], ["empty", "no images"]),
    ("missing-path", ["reconstruct", "{d}/nope.jpg", "-c", str(CKPT), "-o", "{out}"], ["nope.jpg", "no such"]),
    ("missing-checkpoint", ["reconstruct", "{d}/a.jpg", "-c", "{d}/absent.pth", "-o", "{out}"], ["absent.pth"]),
    (
        "unknown-scene-graph",
        ["reconstruct", "{d}/a.jpg", "{d}/b.png", "-c", str(CKPT), "-o", "{out}", "--scene-graph", "star-3"],
        ["star-3"],
    ),
    ("negative-niter", ["reconstruct", "{d}/a.jpg", "-c", str(CKPT), "-o", "{out}", "--niter1", "-5"], ["niter1"]),
    ("zero-lr", ["reconstruct", "{d}/a.jpg", "-c", str(CKPT), "-o", "{out}", "--lr1", "0"], ["lr1", "> 0"]),
    ("negative-lr", ["reconstruct", "{d}/a.jpg", "-c", str(CKPT), "-o", "{out}", "--lr2", "-0.1"], ["lr2"]),
    ("nan-lr", ["reconstruct", "{d}/a.jpg", "-c", str(CKPT), "-o", "{out}", "--lr2", "nan"], ["lr2"]),
    (
        "subsample-3",
        ["reconstruct", "{d}/a.jpg", "-c", str(CKPT), "-o", "{out}", "--subsample", "3"],
        ["subsample", "dividing 16"],
    ),
    ("subsample-32", ["reconstruct", "{d}/a.jpg", "-c", str(CKPT), "-o", "{out}", "--subsample", "32"], ["subsample"]),
    (
        "output-under-a-file",
        ["reconstruct", "{d}/a.jpg", "-c", str(CKPT), "-o", "{d}/a_file/out"],
        ["a_file", "not a folder"],
    ),
    ("demo-output-under-a-file", ["demo", "-o", "{d}/a_file/out", "--n-views", "3"], ["a_file", "not a folder"]),
    (
        "align-cache-output-under-a-file",
        ["align-cache", "{d}/empty", "--images", "{d}/a.jpg", "-o", "{d}/a_file/sub/out"],
        ["a_file", "not a folder"],
    ),
]


@pytest.mark.parametrize("argv,needles", [c[1:] for c in BAD_CLI], ids=[c[0] for c in BAD_CLI])
def test_bad_input_matrix_cli(capsys, files, tmp_path, argv, needles):
    out = tmp_path / "out"
    rc, stdout, err = _main(capsys, *[a.format(d=files, out=out) for a in argv])
    _error_line(rc, err, *needles)
    assert not out.exists() and stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging leftovers either


def test_existing_output_refused_then_overwritten(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    small = ["--n-views", "3", "--height", "48", "--width", "64", "--niter1", "10", "--niter2", "10", "--quiet"]
    rc, _, err = _main(capsys, "demo", "-o", out, *small)
    _error_line(rc, err, str(out), "exists", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    rc, _, err = _main(capsys, "demo", "-o", out, "--overwrite", *small)
    assert rc == 0, err
    assert not (out / "mine.txt").exists() and (out / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_that_is_a_file_refused(capsys, tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    rc, _, err = _main(capsys, "demo", "-o", out, "--overwrite")
    _error_line(rc, err, str(out), "not a folder")
    assert out.read_text() == "a file"


def test_subprocess_error_has_no_traceback(files, tmp_path):
    """The real console entry point: one line on stderr, exit 2, nothing written."""
    out = tmp_path / "out"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparsega",
            "reconstruct",
            str(files / "a.jpg"),
            "-c",
            str(CKPT),
            "-o",
            str(files / "a_file" / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _error_line(res.returncode, res.stderr, "a_file")
    assert not out.exists()


# --------------------------------------------------------------------------------- the API side (types)
@pytest.mark.parametrize(
    "override,exc,needle",
    [
        ({"niter1": -1}, ConfigError, "niter1"),
        ({"niter2": 1.5}, ConfigError, "niter2"),
        ({"lr1": 0.0}, ConfigError, "lr1"),
        ({"lr2": float("inf")}, ConfigError, "lr2"),
        ({"subsample": 3}, ConfigError, "subsample"),
        ({"subsample": 0}, ConfigError, "subsample"),
        ({"matching_conf_thr": float("nan")}, ConfigError, "matching_conf_thr"),
        ({"kinematic_mode": "tree"}, ConfigError, "kinematic_mode"),
        ({"no_such_option": 1}, ConfigError, "no_such_option"),
    ],
)
def test_nonsense_options_api(override, exc, needle):
    preds = sim.simulate_predictions(sim.make_scene("orbit", 2, 48, 64, seed=0), [[0, 1]], seed=0)
    with pytest.raises(exc, match=needle) as err:
        align(preds, **override)
    assert "\n" not in str(err.value)


def test_unknown_scene_graph_api():
    from sparsega.frontend.pairs import parse_scene_graph

    for name in ("star-3", "swin-x", "", "oneref-"):
        with pytest.raises(ConfigError) as err:
            parse_scene_graph(name)
        assert "\n" not in str(err.value)


def test_cache_from_another_checkpoint_api(tmp_path):
    from sparsega.frontend.cache import CacheDir

    CacheDir(tmp_path / "c", "checkpoint-A")
    with pytest.raises(CacheError, match="checkpoint-A") as err:
        CacheDir(tmp_path / "c", "checkpoint-B")
    assert str(tmp_path / "c") in str(err.value) and "\n" not in str(err.value)


def test_bad_checkpoints_api(files):
    from sparsega import load_checkpoint

    for name, needle in (
        ("not_a_ckpt.pth", "not a (readable|torch) checkpoint"),
        ("trunc.pth", "not a readable"),
        ("missing_keys.pth", "missing key"),
        ("a.jpg", "not a (readable|torch) checkpoint"),
        ("absent.pth", "no such"),
    ):
        with pytest.raises(CheckpointError, match=needle) as err:
            load_checkpoint(files / name)
        assert name in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ numerical faults
@pytest.fixture(scope="module")
def orbit() -> tuple[sim.SyntheticScene, list[PairPrediction]]:
    gt = sim.make_scene("orbit", n_views=4, height=48, width=64, seed=5)
    preds = sim.simulate_predictions(gt, make_pairs(4, "complete"), seed=5)
    return gt, [p if p.i < p.j else p.swapped() for p in preds]  # i < j: align keeps the names as given


def _rot_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (degrees) between the relative rotations of camera 0 -> k in two scenes."""
    ra = np.einsum("ij,njk->nik", a[0, :3, :3].T, a[:, :3, :3])
    rb = np.einsum("ij,njk->nik", b[0, :3, :3].T, b[:, :3, :3])
    d = np.einsum("nji,njk->nik", ra, rb)
    cos = np.clip((np.trace(d, axis1=1, axis2=2) - 1) / 2, -1, 1)
    return np.degrees(np.arccos(cos))


def _finite(scene) -> None:
    assert np.isfinite(scene.cam2w).all() and np.isfinite(scene.intrinsics).all()
    assert all(np.isfinite(d).all() for d in scene.depthmaps)
    assert all(np.isfinite(c).all() for c in scene.confidences)


def test_nan_inf_and_nonpositive_depth_masked_with_warning(orbit, caplog):
    _, preds = orbit
    clean = align(preds, CFG)
    bad = list(preds)
    k = 0
    p = bad[k]
    pts11 = p.pts11.copy()
    pts11[0, :5] = np.nan
    pts11[1, :5] = np.inf
    pts11[2, :5, 2] = -1.0  # behind the camera in its own frame
    pts11[3, :5, 2] = 0.0
    conf21 = p.conf21.copy()
    conf21[5, :7] = np.nan
    pts12 = p.pts12.copy()
    pts12[7, 3:9] = -np.inf
    bad[k] = dataclasses.replace(p, pts11=pts11, conf21=conf21, pts12=pts12)
    with caplog.at_level(logging.WARNING, logger="sparsega"):
        scene = align(bad, CFG)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    name = f"pair ({p.i}, {p.j}) pts11"
    assert any(name in m and "20 non-finite or invalid points masked" in m for m in msgs), msgs
    _finite(scene)
    assert _rot_deg(scene.cam2w, clean.cam2w).max() < 1.0  # 20 masked pixels barely move the cameras


def test_map_without_any_valid_point_is_an_input_error(orbit):
    _, preds = orbit
    p = preds[1]
    bad = [dataclasses.replace(p, pts22=np.full_like(p.pts22, np.nan))] + list(preds[2:])
    with pytest.raises(InputError, match=rf"pair \({p.i}, {p.j}\) pts22: no valid point") as err:
        align(bad, CFG)
    assert "\n" not in str(err.value)


def test_pair_with_all_matches_masked_falls_back(orbit, caplog):
    _, preds = orbit
    clean = align(preds, CFG)
    p = preds[0]
    assert p.n_matches > 0
    bad = [dataclasses.replace(p, match_conf=np.full_like(p.match_conf, np.nan))] + list(preds[1:])
    with caplog.at_level(logging.WARNING, logger="sparsega"):
        scene = align(bad, CFG)
    assert f"pair ({p.i}, {p.j}): non-finite match confidences dropped" in caplog.text
    st, st0 = scene.info["stats"], clean.info["stats"]
    assert st["n_matches"] == st0["n_matches"] - p.n_matches
    assert st["n_fallback_pairs"] >= 1
    _finite(scene)


def test_zero_match_pair_falls_back(orbit):
    _, preds = orbit
    p = preds[0]
    z = np.zeros((0, 2), np.int64)
    bad = [dataclasses.replace(p, xy1=z, xy2=z.copy(), match_conf=np.zeros(0, np.float32))] + list(preds[1:])
    scene = align(bad, CFG)
    assert scene.info["stats"]["n_fallback_pairs"] >= 1
    _finite(scene)


def _nan_loss_at(monkeypatch, stage: int, call: int) -> dict:
    """Make the compiled match loss of ``stage`` return NaN from its ``call``-th evaluation on; record the cameras
    (from the camera table it is given) at each evaluation."""
    orig = match_kernel.loss_and_grad_jit
    seen: dict = {"n": 0, "cams": []}

    def patched(tab, ad, img, xs, ys, offm1, anc, conf, st, *rest):
        out = orig(tab, ad, img, xs, ys, offm1, anc, conf, st, *rest)
        if st != stage:
            return out
        seen["n"] += 1
        n = tab.shape[0]
        cam2w = np.tile(np.eye(4), (n, 1, 1))
        cam2w[:, :3, :3] = tab[:, :9].reshape(n, 3, 3)
        cam2w[:, :3, 3] = tab[:, 9:12]
        seen["cams"].append((cam2w, tab[:, 12].copy()))
        return out * float("nan") if seen["n"] >= call else out

    monkeypatch.setattr(match_kernel, "loss_and_grad_jit", patched)
    return seen


@pytest.mark.parametrize("stage", [1, 2])
def test_non_finite_loss_stops_at_last_finite_state(orbit, monkeypatch, caplog, stage):
    _, preds = orbit
    seen = _nan_loss_at(monkeypatch, stage, call=5)
    with caplog.at_level(logging.WARNING, logger="sparsega"):
        scene = align(preds, CFG)
    stages = scene.info["stages"]
    assert stages[stage - 1]["stopped_non_finite"] is True
    assert stages[stage - 1]["niter"] == 4 and np.isfinite(stages[stage - 1]["loss_last"])
    assert len(stages) == stage  # stage 2 is not run after a failed stage 1
    if stage == 2:
        assert stages[0]["stopped_non_finite"] is False and stages[0]["niter"] == CFG.niter1
    assert "non-finite loss" in caplog.text
    _finite(scene)
    # the result is exactly the state whose loss was the last finite one (call 4)
    cam2w, focals = seen["cams"][3]
    np.testing.assert_allclose(scene.cam2w, cam2w, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scene.intrinsics[:, 0, 0], focals, rtol=1e-6)


def test_non_finite_loss_is_in_the_cli_report(capsys, monkeypatch, tmp_path):
    _nan_loss_at(monkeypatch, 2, call=3)
    out = tmp_path / "out"
    rc, _, err = _main(
        capsys,
        "demo",
        "-o",
        out,
        "--n-views",
        "3",
        "--height",
        "48",
        "--width",
        "64",
        "--niter1",
        "10",
        "--niter2",
        "10",
        "--quiet",
    )
    assert rc == 0, err
    assert "non-finite loss" in err
    losses = json.loads((out / "report.json").read_text())["losses"]
    assert [s["stopped_non_finite"] for s in losses] == [False, True] and losses[1]["niter"] == 2


# ---------------------------------------------------------------------------------- disconnected (CLI)
def test_disconnected_graph_error_lists_groups(orbit):
    _, preds = orbit
    by_pair = {(min(p.i, p.j), max(p.i, p.j)): p for p in preds}
    split = [by_pair[(0, 1)], by_pair[(2, 3)]]
    with pytest.raises(GraphError, match=r"\[0, 1\], \[2, 3\]") as err:
        align(split, CFG)
    assert "\n" not in str(err.value)
    with pytest.raises(GraphError, match=r"\[3\]"):
        align([by_pair[(0, 1)], by_pair[(0, 2)]], CFG, n_images=4)


# ---------------------------------------------------------------------------- loading never runs code
# load_checkpoint: test_checkpoint.py::test_malicious_pickles_are_refused_not_run; cache entries:
# test_cache.py::test_pickle_in_place_of_entry_is_never_executed; naver cache:
# test_interop.py::test_unsafe_file_refused. Here: a saved scene (the input of export / eval / view).
class _Evil:
    """Unpickling this object would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickle_in_saved_scene_is_never_executed(tmp_path, capsys):
    from sparsega.scene import Scene

    from _scenes import plane_scene

    marker = tmp_path / "PWNED"
    folder = tmp_path / "out"
    plane_scene().save(folder / "scene")
    npz = folder / "scene" / "scene.npz"
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["cam2w"] = np.array([_Evil(marker)], dtype=object)
    np.savez(npz, **arrays)
    with np.load(npz, allow_pickle=True) as data:  # sanity: a free load would run the payload
        data["cam2w"]
    assert marker.exists()
    marker.unlink()
    with pytest.raises((InputError, ValueError)):
        Scene.load(folder / "scene")
    rc, _, err = _main(capsys, "export", folder, "-o", tmp_path / "re", "--format", "ply")
    assert rc in (1, 2) and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "re").exists()


# ------------------------------------------------------------- through the network (needs sparsega.pipeline)
# These run the whole `reconstruct` command on the tiny random-weight checkpoint with 64-pixel images. They are
# expected failures (not run) while the pipeline module is missing, and run as soon as it exists.
E2E = ["-c", str(CKPT), "--image-size", "64", "--niter1", "10", "--niter2", "10", "--quiet"]


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> str:
    img = Image.fromarray(arr)  # uint16 -> I;16, uint8 (H,W) -> L, (H,W,4) -> RGBA
    assert mode is None or img.mode == mode, (img.mode, mode)
    img.save(path)
    return str(path)


@pytest.mark.parametrize(
    "name", ["text.png", "trunc.jpg", "zero.jpg", "tiny.png", "trunc.pth", "not_a_ckpt.pth", "missing_keys.pth"]
)
def test_bad_file_through_reconstruct(capsys, files, tmp_path, name):
    out = tmp_path / "out"
    if name.endswith(".pth"):
        argv = ["reconstruct", files / "a.jpg", files / "b.png", "-o", out, *E2E]
        argv[argv.index("-c") + 1] = str(files / name)
    else:
        argv = ["reconstruct", files / "a.jpg", files / name, "-o", out, *E2E]
    rc, _, err = _main(capsys, *argv)
    _error_line(rc, err, name)
    assert not out.exists()


def test_16bit_gray_rgba_mixed_orientation_and_duplicates_work(capsys, tmp_path):
    """16-bit, grayscale and RGBA files are converted; landscape and portrait mix; a path given twice is used
    once with a warning."""
    rng = np.random.default_rng(3)
    base = _noise(48, 64, 7)
    p16 = _png(tmp_path / "deep.png", (base[..., 0].astype(np.uint16) * 257), "I;16")
    gray = _png(tmp_path / "gray.png", base[..., 1], "L")
    rgba = _png(tmp_path / "rgba.png", np.dstack((base, rng.integers(0, 255, (48, 64), dtype=np.uint8))), "RGBA")
    portrait = _png(tmp_path / "portrait.png", np.ascontiguousarray(base.transpose(1, 0, 2)))
    out = tmp_path / "out"
    rc, _, err = _main(capsys, "reconstruct", p16, gray, rgba, portrait, gray, "-o", out, "--json", *E2E)
    assert rc == 0, err
    assert "given twice" in err
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["n_images"] == 4
    cams = json.loads((out / "cameras.json").read_text())["images"]
    assert [(c["width"], c["height"]) for c in cams] == [(64, 48), (64, 48), (64, 48), (48, 64)]


def test_single_image_is_paired_with_itself(capsys, files, tmp_path):
    out = tmp_path / "out"
    rc, _, err = _main(capsys, "reconstruct", files / "a.jpg", "-o", out, *E2E)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["n_images"] == 1


def test_same_content_under_two_names_works(capsys, files, tmp_path):
    import shutil

    shutil.copy(files / "a.jpg", tmp_path / "copy.jpg")
    out = tmp_path / "out"
    rc, _, err = _main(capsys, "reconstruct", files / "a.jpg", tmp_path / "copy.jpg", files / "b.png", "-o", out, *E2E)
    assert rc == 0, err


def test_dust3r_checkpoint_works_or_is_a_clear_error(capsys, files, tmp_path):
    """DUSt3R has no descriptors: the pipeline either matches in 3D (works) or says so in one line."""
    out = tmp_path / "out"
    argv = ["reconstruct", files / "a.jpg", files / "b.png", "-o", out, *E2E]
    argv[argv.index("-c") + 1] = str(GOLDEN / "dust3r_tiny.pth")
    rc, _, err = _main(capsys, *argv)
    if rc == 0:
        assert (out / "report.json").is_file()
    else:
        line = _error_line(rc, err).lower()
        assert "dust3r" in line or "descriptor" in line, line
        assert not out.exists()
