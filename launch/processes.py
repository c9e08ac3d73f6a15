"""How training processes start, find each other and report back: the rank variables that torchrun, DeepSpeed's
launcher or srun provide, a free local port for a rendezvous, and the exit statuses launch.train promises.

Standard library only: the trainer, the quickstart, the tests and the benchmarks all start processes this way.
The shell launchers (launch/slurm.sh, launch/single_gpu.sh) act on EXIT_PREEMPTED too; they spell it 75.
"""
from __future__ import annotations

import os
import socket

EXIT_PREEMPTED = 75  # EX_TEMPFAIL, "try again": stopped by SIGUSR1/SIGTERM after a checkpoint; SLURM requeues on it
EXIT_USAGE = 2  # a usage, config or data mistake, reported as "error: ..." (argparse uses 2 for bad flags too)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it), for a rendezvous on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_env(environ=os.environ) -> tuple[int, int, int]:
    """(rank, local_rank, world_size), filling the torch.distributed variables in `environ` where missing.

    torchrun and DeepSpeed's launcher set RANK/LOCAL_RANK/WORLD_SIZE/MASTER_*; under srun they come from
    SLURM's variables (MASTER_ADDR/MASTER_PORT must be exported by the caller); with none of them this is a
    single plain process on a free local port.
    """
    if "RANK" not in environ and "SLURM_PROCID" in environ:
        environ["RANK"] = environ["SLURM_PROCID"]
        environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
        environ["WORLD_SIZE"] = environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in environ]
        if missing and environ["WORLD_SIZE"] != "1":
            raise ValueError(f"running under SLURM without {missing}: export MASTER_ADDR=$(scontrol show hostnames "
                             "\"$SLURM_JOB_NODELIST\" | head -n1) and MASTER_PORT=<free port> before srun "
                             "(launch/slurm.sh does this)")
    if "RANK" not in environ:
        environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    if "WORLD_SIZE" not in environ:
        raise ValueError("RANK is set but WORLD_SIZE is not: start with torchrun, deepspeed or srun, or unset RANK")
    environ.setdefault("LOCAL_RANK", "0")
    if environ["WORLD_SIZE"] == "1":
        environ.setdefault("MASTER_ADDR", "127.0.0.1")
        environ.setdefault("MASTER_PORT", str(free_port()))
    return int(environ["RANK"]), int(environ["LOCAL_RANK"]), int(environ["WORLD_SIZE"])


