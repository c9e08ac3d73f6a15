#!/bin/bash
# Training on one machine: one GPU with DeepSpeed ZeRO-3 bf16, or the CPU when no GPU is present.
#
#   DATA_DIR=data RUN_DIR=runs/one bash launch/single_gpu.sh
#   CONFIG=launch/configs/125m.json bash launch/single_gpu.sh --set steps=1000 --set lr=6e-4
#
# Same entry point and flags as the cluster (python -m launch.train), started as one plain process (rank 0 of 1,
# no launcher, no mpi4py). Extra arguments go to launch.train. Settings (environment variables):
#   CONFIG     run config              (default launch/configs/125m.json)
#   DS_CONFIG  DeepSpeed config        (default ds_configs/zero3_bf16.json)
#   DATA_DIR   prepared data directory (default data); WEIGHT:DIR for a blend, other sources as
#              arguments (--data 0.3:data/code)
#   RUN_DIR    run directory; rerunning with the same RUN_DIR resumes from its newest complete checkpoint
#              (default runs/single)
#   GPU        which GPU to use when several are visible (default 0)
#   PYTHON     interpreter             (default python)
# Device choice: a GPU when `nvidia-smi -L` lists one and torch can use CUDA; otherwise DS_ACCELERATOR=cpu (gloo,
# bf16 on CPU). An explicit DS_ACCELERATOR in the environment is respected.
# Ctrl-C/SIGTERM/SIGUSR1 reach the trainer directly (exec): it checkpoints and exits 75; run again to continue.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
CONFIG="${CONFIG:-launch/configs/125m.json}"
DS_CONFIG="${DS_CONFIG:-ds_configs/zero3_bf16.json}"
DATA_DIR="${DATA_DIR:-data}"
RUN_DIR="${RUN_DIR:-runs/single}"

has_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU' \
        && "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
}

if [ -n "${DS_ACCELERATOR:-}" ]; then
    device="DS_ACCELERATOR=$DS_ACCELERATOR (from the environment)"
elif has_gpu; then
    export CUDA_VISIBLE_DEVICES="${GPU:-0}"
    device="GPU $CUDA_VISIBLE_DEVICES ($(nvidia-smi -L | sed -n "$(( ${GPU:-0} + 1 ))p"))"
else
    export DS_ACCELERATOR=cpu
    device="no GPU found: CPU (DS_ACCELERATOR=cpu)"
fi
# One process, world size 1: launch.train fills in RANK/WORLD_SIZE/MASTER_ADDR/port itself when they are unset;
# clear any left over from an enclosing launcher or salloc so this stays a world of one.
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT SLURM_PROCID SLURM_LOCALID SLURM_NTASKS

cmd=("$PYTHON" -m launch.train --data "$DATA_DIR" --config "$CONFIG" --ds-config "$DS_CONFIG" --out "$RUN_DIR" "$@")
echo "[single_gpu] device: $device"
echo "[single_gpu] command: ${cmd[*]}"
exec "${cmd[@]}"
