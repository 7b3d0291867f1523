"""Cache integrity and resume (issue 4): a ``reconstruct`` run killed with SIGKILL during inference leaves only
complete cache entries; the rerun reuses them (never recomputed: their files are untouched) and ends with the scene
of an uninterrupted run. A corrupt or truncated entry is detected, reported and recomputed.

Runs the real console entry point on the tiny random-weight checkpoint with small images (the tiny model still has
full-width DPT heads: about a second per pair on this CPU).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparsega.frontend.cache import ENTRY_SUFFIX, TEMP_SUFFIX

CKPT = Path(__file__).parent / "data" / "golden" / "model_tiny_a.pth"
N_IMAGES = 5  # complete graph: 10 pairs
SIZE_ARGS = ["--image-size", "64"]
FAST = ["--scene-graph", "complete", "--niter1", "20", "--niter2", "20", "--quiet", *SIZE_ARGS]


def _cmd(images: list[str], out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sparsega",
        "reconstruct",
        *images,
        "-c",
        str(CKPT),
        "-o",
        str(out),
        "--cache-dir",
        str(cache),
        *FAST,
        *extra,
    ]


def _entries(cache: Path) -> dict[str, int]:
    """Complete cache entries: path -> mtime_ns."""
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob(f"*{ENTRY_SUFFIX}") if p.is_file()}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from sparsega import sim

    d = tmp_path_factory.mktemp("imgs")
    gt = sim.make_scene("orbit", n_views=N_IMAGES, height=48, width=64, seed=11)
    paths = []
    for k, im in enumerate(gt.images):
        p = d / f"view{k}.png"
        Image.fromarray(np.asarray(im, np.uint8)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def reference(images: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """An uninterrupted run: (output folder, its cache, wall seconds)."""
    d = tmp_path_factory.mktemp("ref")
    t0 = time.perf_counter()
    res = subprocess.run(_cmd(images, d / "out", d / "cache"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return d / "out", d / "cache", time.perf_counter() - t0


def _load(out: Path):
    from sparsega.scene import Scene

    return Scene.load(out / "scene")


def _same_scene(a, b) -> None:
    np.testing.assert_allclose(a.cam2w, b.cam2w, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.intrinsics, b.intrinsics, rtol=1e-5)
    for x, y in zip(a.depthmaps, b.depthmaps):
        np.testing.assert_allclose(x, y, rtol=1e-4)


def test_uninterrupted_run_fills_the_cache(reference):
    out, cache, _ = reference
    assert (out / "report.json").is_file()
    entries = _entries(cache)
    assert len(entries) >= N_IMAGES * (N_IMAGES - 1) // 2, sorted(entries)
    assert not list(cache.rglob(f"*{TEMP_SUFFIX}"))


def test_sigkill_during_inference_then_resume(images, reference, tmp_path):
    ref_out, ref_cache, _ = reference
    n_total = len(_entries(ref_cache))
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = subprocess.Popen(_cmd(images, out, cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if cache.is_dir() and len(_entries(cache)) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing half-written in OUT
    done = _entries(cache)
    # a write cut by the kill may leave its temporary file: young temporaries are kept by design (they may belong to
    # a live writer; cleaned after STALE_TEMP_AGE_S) and never read as entries
    killed_tmp = set(cache.rglob(f"*{TEMP_SUFFIX}"))
    assert 2 <= len(done) < n_total, (len(done), n_total)

    res = subprocess.run(_cmd(images, out, cache), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    after = _entries(cache)
    assert len(after) == n_total
    for path, mtime in done.items():  # finished pairs were not recomputed: their files were not rewritten
        assert after.get(path) == mtime, path
    assert set(cache.rglob(f"*{TEMP_SUFFIX}")) <= killed_tmp  # the rerun leaves none of its own
    _same_scene(_load(out), _load(ref_out))


def test_corrupt_and_truncated_entries_detected_and_recomputed(images, reference, tmp_path):
    import shutil

    ref_out, ref_cache, _ = reference
    cache = tmp_path / "cache"
    shutil.copytree(ref_cache, cache)
    entries = sorted(_entries(cache))
    flipped, truncated = Path(entries[0]), Path(entries[-1])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x10
    flipped.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:100])
    untouched = {p: m for p, m in _entries(cache).items() if p not in (str(flipped), str(truncated))}

    out = tmp_path / "out"
    res = subprocess.run(_cmd(images, out, cache), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    for bad in (flipped, truncated):  # reported by path, then rewritten with a valid entry
        assert str(bad) in res.stderr, res.stderr[-3000:]
    after = _entries(cache)
    assert set(after) == set(untouched) | {str(flipped), str(truncated)}
    for p, m in untouched.items():
        assert after[p] == m
    from sparsega.frontend.store import _decode_entry

    for bad in (flipped, truncated):
        assert not isinstance(_decode_entry(bad.read_bytes()), str)
    _same_scene(_load(out), _load(ref_out))


def test_cache_of_another_checkpoint_is_refused(images, reference, tmp_path):
    from sparsega.frontend.cache import CacheDir

    CacheDir(tmp_path / "cache", "some-other-checkpoint")
    out = tmp_path / "out"
    res = subprocess.run(_cmd(images, out, tmp_path / "cache"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsega: error: ") and "cache" in lines[0], res.stderr
    assert "some-other-checkpoint" in lines[0]
    assert not out.exists()
