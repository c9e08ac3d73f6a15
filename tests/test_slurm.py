"""launch/slurm.sh on a real two-node SLURM cluster (slurmctld + 2 slurmd on this host, tests/slurm_cluster.py).

Needs root and Debian's slurm-wlm + munge (`sudo bash scripts/install_slurm.sh`); skipped with the reason otherwise.
Each node has one CPU and runs one rank (DS_ACCELERATOR=cpu, gloo, ZeRO-3 bf16, the tiny config):

    sudo .venv/bin/python -m pytest tests/test_slurm.py -m slurm
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import random_data_dir
from references import missing
from slurm_cluster import SlurmCluster, free_port, unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "slurm.sh"


def needs_cluster(test):
    """The marks of a test that starts the two-node cluster (the `cluster` fixture skips, or fails in CI,
    where SLURM cannot run)."""
    for mark in (pytest.mark.slurm, pytest.mark.slow):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason is not None:
        missing(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), nodes=2, cpus=1) as c:
        yield c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return random_data_dir(tmp_path_factory.mktemp("data"))


def submit(cluster: SlurmCluster, run_dir: Path, data_dir: Path, extra: str) -> int:
    """sbatch launch/slurm.sh on 2 nodes x 1 CPU rank; the #SBATCH GPU request is overridden away."""
    env = {"CONFIG": "launch/configs/tiny.json", "DS_CONFIG": "ds_configs/zero3_bf16.json",
           "DATA_DIR": str(data_dir), "RUN_DIR": str(run_dir), "PYTHON": sys.executable, "DS_ACCELERATOR": "cpu",
           "MASTER_PORT": str(free_port()), "EXTRA_ARGS": extra, "STRAGGLER_WAIT": "60"}
    args = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
            f"--output={run_dir.parent}/{run_dir.name}-%j.out", "launch/slurm.sh"]
    return cluster.sbatch(args, env=env, cwd=ROOT)


def steps_and_losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [(l["step"], l["loss"]) for l in lines if "loss" in l]


def job_log(cluster: SlurmCluster, run_dir: Path, job: int) -> str:
    path = run_dir / "logs" / f"slurm-{job}.log"
    return path.read_text(errors="replace") if path.exists() else f"(no {path})\n{cluster.log_tail()}"


def test_refuses_to_run_outside_slurm():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "not running under SLURM" in proc.stderr and "sbatch" in proc.stderr


def test_every_sbatch_line_is_commented_and_requeue_is_wired():
    lines = [l for l in SCRIPT.read_text().splitlines() if l.startswith("#SBATCH")]
    assert len(lines) >= 8
    for line in lines:
        assert re.fullmatch(r"#SBATCH --[\w-]+(=\S+)?\s+# \S.*", line), f"uncommented or malformed: {line!r}"
    options = {l.split()[1].split("=")[0] for l in lines}
    assert {"--signal", "--requeue", "--ntasks-per-node", "--output"} <= options


@needs_cluster
def test_two_node_job_trains_on_both_ranks(cluster, data_dir, tmp_path):
    run = tmp_path / "run"
    job = submit(cluster, run, data_dir, "--set steps=4 --set checkpoint_every=2 --set eval_every=2")
    info = cluster.wait(job, {"COMPLETED"}, timeout=400)
    log = job_log(cluster, run, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{log[-5000:]}"
    assert info["NodeList"] == "node[1-2]" and info["NumNodes"] == "2"
    # The batch script resolved the rendezvous from the allocation and printed the command it ran.
    assert "MASTER_ADDR=node1" in log and "world 2" in log and "[slurm] command: srun" in log
    # srun --label prefixes each rank's output with its rank: both ranks ran the trainer.
    assert re.search(r"^0: ", log, re.M) and re.search(r"^1: ", log, re.M), log[-5000:]
    assert [s for s, _ in steps_and_losses(run)] == [1, 2, 3, 4]
    tag = run / "checkpoints" / "step_00000004"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert (tag / "COMPLETE").exists()
    state = json.loads((tag / "client_state.json").read_text())
    assert state["world_size"] == 2 and state["zero_stage"] == 3
    # ZeRO-3 shards: one optimizer partition per rank, written by each node's process.
    for rank in (0, 1):
        assert list(tag.glob(f"*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")), sorted(os.listdir(tag))


@needs_cluster
def test_time_limit_signal_checkpoints_requeues_and_resumes(cluster, data_dir, tmp_path):
    run = tmp_path / "run"
    # Enough steps that the signal, sent once the first step is logged, arrives before the last one: the tiny
    # model runs about 8 steps a second here, and a run that ends first exits 0 instead of requeueing.
    steps = 48
    job = submit(cluster, run, data_dir, f"--set steps={steps} --set checkpoint_every=100 --set eval_every=0")
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and '"loss"' in metrics.read_text()):   # a step is logged: training is under way
        state = cluster.job(job)["JobState"]
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"{state}\n{job_log(cluster, run, job)[-5000:]}"
        assert time.monotonic() < deadline, "no training step within 300 s"
        time.sleep(0.5)
    # What SLURM does --signal seconds before the time limit: SIGUSR1 to the batch shell only.
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job)], env=cluster.env, check=True)

    deadline = time.monotonic() + 500
    while True:
        info = cluster.job(job)
        if info["JobState"] == "COMPLETED" and info["Restarts"] == "1":
            break
        assert info["JobState"] not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), \
            f"{info}\n{job_log(cluster, run, job)[-5000:]}"
        assert time.monotonic() < deadline, f"job did not requeue and finish: {info}"
        time.sleep(1)
    log = job_log(cluster, run, job)
    assert info["ExitCode"] == "0:0", log[-5000:]
    assert "got SIGUSR1" in log and "training exited with status 75" in log
    assert f"requeueing job {job} (restart 1)" in log and f"job {job} restart 1 on" in log
    stop = re.search(r"checkpoint at step (\d+) saved", log)
    assert stop, log[-5000:]
    stopped_at = int(stop.group(1))
    assert 1 <= stopped_at < steps
    # The requeued job resumed from that checkpoint: every step exactly once, none repeated, none skipped.
    assert [s for s, _ in steps_and_losses(run)] == list(range(1, steps + 1))
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"
    # Started twice (the log has two headers), in the same run directory under the same job id.
    assert len(re.findall(rf"job {job} restart \d on", log)) == 2
