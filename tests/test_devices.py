"""sparsega.devices: "auto" picks CUDA, else MPS, else the CPU (availability mocked), is logged once and recorded in
the run's config; explicit devices this machine lacks are clear errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from sparsega import AlignConfig, ConfigError, align, devices, sim
from sparsega.frontend.pairs import make_pairs


@pytest.fixture()
def machine(monkeypatch):
    """Set what the machine has: ``machine(cuda=..., mps=..., n_cuda=...)``."""

    def set_(cuda: bool = False, mps: bool = False, n_cuda: int = 1) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n_cuda if cuda else 0)
        monkeypatch.setattr(devices, "_mps_available", lambda: mps)
        monkeypatch.setattr(devices, "_announced", set())

    return set_


@pytest.mark.parametrize(("cuda", "mps", "want"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, want):
    machine(cuda=cuda, mps=mps)
    assert devices.resolve_device("auto") == want
    assert devices.resolve_device() == want


def test_auto_is_logged_once(machine, caplog):
    machine()
    with caplog.at_level(logging.INFO, logger="sparsega.devices"):
        devices.resolve_device("auto")
        devices.resolve_device("auto")
    assert [r.getMessage() for r in caplog.records] == ["device: cpu (auto)"]


def test_missing_devices_are_clear_errors(machine):
    machine(cuda=False, mps=False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        devices.resolve_device("cuda")
    with pytest.raises(ConfigError, match="MPS is not available"):
        devices.resolve_device("mps")
    machine(cuda=True, n_cuda=1)
    assert devices.resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match="only 1 CUDA device"):
        devices.resolve_device("cuda:3")
    with pytest.raises(ConfigError, match="must be auto"):
        devices.resolve_device("tpu")


def test_config_checks_the_form_only():
    assert AlignConfig().device == "auto"
    assert AlignConfig(device="CUDA:1").device == "cuda:1"  # normalised, not resolved (no GPU needed)
    with pytest.raises(ConfigError, match="device"):
        AlignConfig(device="gpu")
    with pytest.raises(ConfigError, match="float64"):
        AlignConfig(device="mps", dtype="float64")
    with pytest.raises(ConfigError, match="CPU only"):
        AlignConfig(device="cuda", loss_backend="kernel")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")
def test_the_chosen_device_is_recorded(tmp_path):
    gt = sim.make_scene("orbit", n_views=3, height=48, width=64, seed=0)
    scene = align(sim.simulate_predictions(gt, make_pairs(3, "complete")), niter1=5, niter2=5, progress=False)
    assert scene.info["config"]["device"] == "cpu"
    from sparsega import cli

    out = tmp_path / "out"
    assert cli.main(["demo", "--n-views", "3", "--height", "48", "--width", "64", "-o", str(out), "--niter1", "5",
                     "--niter2", "5", "--quiet"]) == 0  # fmt: skip
    assert json.loads((out / "report.json").read_text())["config"]["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU branch")
def test_gpu_check_says_so_and_exits_0_without_a_gpu():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PY": sys.executable,
                         "PATH": "/usr/bin:/bin"}, timeout=120)  # fmt: skip
    assert res.returncode == 0 and "no CUDA device" in res.stdout, res.stderr
