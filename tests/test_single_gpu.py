"""launch/single_gpu.sh on this machine's device: the GPU when there is one, otherwise the CPU fallback. It picks
the device by itself, trains, checkpoints, and passes signals through.

    python -m pytest tests/test_single_gpu.py        # DS_ACCELERATOR is removed from the script's environment

On a GPU machine the runs also set compile=true, and the test requires the blocks to be compiled (Triton is
part of every CUDA build of torch, so a warning and eager execution there is a failure worth seeing) and an MFU
in the metrics when the GPU's peak is listed in launch/metrics.PEAK_FLOPS. On CPU, compilation is covered by
tests/test_compile.py (a CPU compile costs tens of seconds more here).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import random_data_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "single_gpu.sh"


def _has_gpu() -> bool:
    try:
        found = subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False
    import torch

    return found and torch.cuda.is_available()  # the script's own test: nvidia-smi and torch both see one


GPU = _has_gpu()
# compile only where it is cheap and expected to work: see the module docstring.
DEVICE_SETS = ["--set", "compile=true"] if GPU else []


def _env(data: Path, run: Path) -> dict:
    env = dict(os.environ, DATA_DIR=str(data), RUN_DIR=str(run), CONFIG="launch/configs/tiny.json",
               DS_CONFIG="ds_configs/zero3_bf16.json", PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("DS_ACCELERATOR", None)  # the script must pick the device on its own
    return env


def _steps(run: Path) -> list[int]:
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [l["step"] for l in lines if "loss" in l]


def test_device_choice_trains_and_checkpoints(tmp_path):
    data, run = random_data_dir(tmp_path / "data"), tmp_path / "run"
    proc = subprocess.run(["bash", str(SCRIPT), "--set", "steps=4", "--set", "checkpoint_every=2",
                           "--set", "eval_every=2", *DEVICE_SETS],
                          env=_env(data, run), capture_output=True, text=True, timeout=600, cwd="/")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    if GPU:
        assert "[single_gpu] device: GPU 0 (GPU 0:" in log and "device cuda" in log
        assert "compile: blocks compiled with torch.compile" in log, log[-4000:]
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        import torch

        from launch.metrics import peak_flops_for_name
        if peak_flops_for_name(torch.cuda.get_device_name(0)) is not None:
            assert all(0 < x["mfu"] < 1 for x in lines if "loss" in x)
    else:
        assert "no GPU found: CPU (DS_ACCELERATOR=cpu)" in log
    assert _steps(run) == [1, 2, 3, 4]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert (run / "checkpoints" / "step_00000004" / "COMPLETE").exists()
    # ZeRO-3 under the single-process start: world size 1, stage 3 recorded in the checkpoint.
    state = json.loads((run / "checkpoints" / "step_00000004" / "client_state.json").read_text())
    assert state["world_size"] == 1 and state["zero_stage"] == 3


@pytest.mark.slow
def test_signal_reaches_trainer_then_rerun_resumes(tmp_path):
    """exec hands the process to Python: SIGUSR1 to the script's pid checkpoints and exits 75; rerun continues."""
    data, run = random_data_dir(tmp_path / "data"), tmp_path / "run"
    args = ["bash", str(SCRIPT), "--set", "steps=6", "--set", "checkpoint_every=100", "--set", "eval_every=0",
            *DEVICE_SETS]
    proc = subprocess.Popen(args, env=_env(data, run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "no training step within 600 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 75, out[-4000:]
    stopped = _steps(run)
    assert 1 <= stopped[-1] < 6
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped[-1]:08d}"

    rerun = subprocess.run(args, env=_env(data, run), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert _steps(run) == list(range(1, 7)), "the resumed run continues with no gap and no repeated step"
