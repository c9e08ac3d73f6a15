"""What launch/slurm.sh costs: the same training through sbatch on a real two-node SLURM cluster vs. two plain
processes started directly (the reference), alternating in one run.

    sudo .venv/bin/python benchmarks/bench_launch.py --steps 30 --repeats 2

Both sides train the tiny config with ZeRO-3 bf16 on CPU, 2 ranks with one thread each, on the same random-token
data. The direct side starts the ranks as srun would (RANK/WORLD_SIZE/MASTER_* per process, no launcher); the
SLURM side is `sbatch --nodes=2 --ntasks-per-node=1 launch/slurm.sh` on the cluster of tests/slurm_cluster.py
(slurmctld + 2 slurmd on this host; needs root and scripts/install_slurm.sh). Reported per side: the median
training throughput (tokens/s over steps 2..N, from metrics.jsonl) and the wall time from start (sbatch) to the
end of the job, and their ratios SLURM / direct. Repetitions alternate so that load from other work on the
machine hits both sides alike; the load average is printed with the results.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]   # run as a script from anywhere

from launch.metrics import read_metrics  # noqa: E402
from launch.quickstart import free_port, training_env  # noqa: E402
from slurm_cluster import SlurmCluster, unavailable_reason  # noqa: E402
from conftest import random_data_dir  # noqa: E402

CONFIG, DS_CONFIG = "launch/configs/tiny.json", "ds_configs/zero3_bf16.json"


def median_rate(run_dir: Path) -> float:
    steps, _ = read_metrics(str(run_dir / "metrics.jsonl"))
    return statistics.median(s["tokens_per_s"] for s in steps if s["step"] > 1)


def overrides(steps: int) -> list[str]:
    return [f"--set=steps={steps}", "--set=eval_every=0", f"--set=checkpoint_every={steps}"]


def direct(data: Path, run: Path, steps: int) -> tuple[float, float]:
    argv = [sys.executable, "-m", "launch.train", "--data", str(data), "--config", CONFIG, "--ds-config", DS_CONFIG,
            "--out", str(run), *overrides(steps)]
    port, t0 = free_port(), time.perf_counter()
    procs = []
    for rank in range(2):
        env = dict(training_env(2, rank, port, cuda=False), OMP_NUM_THREADS="1")
        # Each rank in a new session, as the SLURM side's ranks are (slurmd's job steps are outside this script's
        # session): with the kernel's autogroup scheduling a session is a unit of CPU fairness, so on a machine
        # loaded by other work, ranks sharing this script's session would get less CPU than the SLURM side.
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
    codes = [p.wait(timeout=900) for p in procs]
    wall = time.perf_counter() - t0
    assert codes == [0, 0], f"direct run failed: {codes}"
    return median_rate(run), wall


def slurm(cluster: SlurmCluster, data: Path, run: Path, steps: int) -> tuple[float, float]:
    env = {"CONFIG": CONFIG, "DS_CONFIG": DS_CONFIG, "DATA_DIR": str(data), "RUN_DIR": str(run),
           "PYTHON": sys.executable, "DS_ACCELERATOR": "cpu", "MASTER_PORT": str(free_port()),
           "EXTRA_ARGS": " ".join(overrides(steps))}
    args = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=30",
            f"--output={run}.out", "launch/slurm.sh"]
    t0 = time.perf_counter()
    job = cluster.sbatch(args, env=env, cwd=ROOT)
    info = cluster.wait(job, {"COMPLETED"}, timeout=900, poll=0.2)
    wall = time.perf_counter() - t0
    assert info["JobState"] == "COMPLETED", f"SLURM job {job} ended {info['JobState']}; see {run}/logs"
    return median_rate(run), wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    args = p.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "slurm": []}
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp, SlurmCluster(Path(tmp) / "slurm") as cluster:
        data = random_data_dir(Path(tmp) / "data")
        for i in range(args.repeats):
            for side in ("direct", "slurm") if i % 2 == 0 else ("slurm", "direct"):
                run = Path(tmp) / f"{side}-{i}"
                r = direct(data, run, args.steps) if side == "direct" else slurm(cluster, data, run, args.steps)
                results[side].append(r)
                print(f"{side:6s} repeat {i}: {r[0]:8.0f} tokens/s, wall {r[1]:6.1f} s, load {os.getloadavg()[0]:.1f}",
                      flush=True)
    med = {side: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
           for side, rs in results.items()}
    summary = {
        "steps": args.steps, "repeats": args.repeats,
        "direct_tokens_per_s": round(med["direct"][0]), "slurm_tokens_per_s": round(med["slurm"][0]),
        "throughput_ratio_slurm_over_direct": round(med["slurm"][0] / med["direct"][0], 3),
        "direct_wall_s": round(med["direct"][1], 1), "slurm_wall_s": round(med["slurm"][1], 1),
        "wall_ratio_slurm_over_direct": round(med["slurm"][1] / med["direct"][1], 3),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
