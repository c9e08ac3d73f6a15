"""launch.train ranks started the way srun starts them, for tests that hold every rank's pid (to signal or kill -9
them): one process per rank with RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT in its environment, no
launcher. Each rank appends its output to PREFIX.rankR.log.

    procs = start_train(["--data", d, "--config", c, "--ds-config", z, "--out", out], log_prefix=out)
    kill_inside_save(procs, out, step=6)       # with pause="300@6": every rank inside the step-6 save, then kill -9
    log = wait_ranks(start_train(...), out)    # every rank exited 0; returns the ranks' logs
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from launch.processes import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAUSE_IN_SAVE = os.path.join(ROOT, "tests", "pause_in_save.py")
_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def rank_env(rank: int, world: int, port: int, extra: dict | None = None) -> dict:
    """This process's environment without launcher or SLURM variables, plus one rank's: CPU DeepSpeed, one thread
    per rank (2 ranks share 2 cores, and runs compare bit for bit), this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS and not k.startswith("SLURM_")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
               RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))
    env.update(extra or {})
    return env


def start_train(args: list[str], log_prefix, world: int = 2, env: dict | None = None,
                pause: str | None = None) -> list[subprocess.Popen]:
    """``world`` ranks of ``python -m launch.train ARGS``; with ``pause`` ("SECONDS@STEP") through
    tests/pause_in_save.py, which holds every rank inside that step's save, before its COMPLETE marker."""
    log_prefix = str(log_prefix)
    os.makedirs(os.path.dirname(os.path.abspath(log_prefix)), exist_ok=True)
    start = ["-m"] if pause is None else [PAUSE_IN_SAVE, pause]
    cmd = [sys.executable, *start, "launch.train", *map(str, args)]
    port = free_port()
    procs = []
    for rank in range(world):
        log = open(f"{log_prefix}.rank{rank}.log", "a")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=rank_env(rank, world, port, env), stdout=log,
                                      stderr=subprocess.STDOUT))
    return procs


def logs(log_prefix, world: int = 2, tail: int | None = None) -> str:
    """Each rank's log (its last ``tail`` characters), rank 0 first."""
    return "".join(open(f"{log_prefix}.rank{r}.log", errors="replace").read()[-(tail or 0):] for r in range(world))


def wait_ranks(procs: list[subprocess.Popen], log_prefix, expect: int = 0, timeout: float = 300) -> str:
    """Wait for every rank (killing any still running at ``timeout`` seconds); assert each exited ``expect``;
    returns the ranks' whole logs, rank 0 first."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert codes == [expect] * len(procs), f"ranks exited {codes}, expected {expect}:\n{logs(log_prefix, len(procs), 4000)}"
    return logs(log_prefix, len(procs))


def kill_inside_save(procs: list[subprocess.Popen], run_dir, step: int, timeout: float = 400) -> None:
    """kill -9 every rank once each has written its part of checkpoint ``step`` (its RNG state is the last file a
    rank writes before the marker; start the ranks with pause="SECONDS@STEP" so they wait there)."""
    partial = os.path.join(str(run_dir), "checkpoints", f"step_{step:08d}", "rng")
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(os.path.join(partial, f"rank_{r:05d}.pt")) for r in range(len(procs))):
        assert time.monotonic() < deadline, f"timed out waiting for every rank inside the step-{step} save"
        assert all(p.poll() is None for p in procs), f"a rank exited before the step-{step} save"
        time.sleep(0.05)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()
