#!/bin/bash
# Multi-node training under SLURM: one task per GPU via srun, no mpi4py, no ssh, no hostfile.
#
#   sbatch launch/slurm.sh                                        # defaults below: 2 nodes x 8 GPUs
#   sbatch --nodes=4 --time=48:00:00 launch/slurm.sh              # #SBATCH lines are overridden on the command line
#   CONFIG=launch/configs/7b.json DATA_DIR=/data/c4 RUN_DIR=/ckpt/7b EXTRA_ARGS="--set steps=20000" \
#       sbatch --nodes=16 launch/slurm.sh
#
# Submit from the repository root (or set REPO_DIR): SLURM runs a copy of this file from its spool directory.
# Settings (environment variables, exported to the job by sbatch):
#   CONFIG        run config               (default launch/configs/1b.json)
#   DS_CONFIG     DeepSpeed config         (default ds_configs/zero3_bf16.json)
#   DATA_DIR      prepared data directory  (default data); WEIGHT:DIR for a blend, with the other sources in
#                 EXTRA_ARGS ("--data 0.3:/data/code")
#   RUN_DIR       run directory; a requeued or resubmitted job with the same RUN_DIR resumes from its newest
#                 complete checkpoint      (default runs/slurm-$SLURM_JOB_ID; the job id survives a requeue)
#   GPUS_PER_NODE ranks per node           (default: SLURM's tasks per node, i.e. --ntasks-per-node)
#   EXTRA_ARGS    more launch.train flags, split on spaces (e.g. "--set steps=100 --set lr=3e-4")
#   PYTHON        interpreter              (default python)
#   MASTER_PORT   rendezvous port          (default 20000 + job id % 20000)
#   MAX_RESTARTS  stop requeueing after this many restarts (default 50)
#   STRAGGLER_WAIT seconds the other ranks get once one rank has exited, before srun ends them (default 120)
#
# Preemption and time limits: SLURM sends SIGUSR1 to this script SIGNAL seconds before the time limit
# (--signal=B:USR1@...). The trap forwards it to the srun step; every rank finishes its optimizer step, all save a
# checkpoint, training exits 75, and this script requeues the job (same job id, same RUN_DIR), which resumes by
# itself. SIGTERM (scancel, preemption) is handled the same way.
# On a CPU-only cluster set DS_ACCELERATOR=cpu and drop the GPU request:
#   DS_ACCELERATOR=cpu sbatch --gpus-per-node=0 --ntasks-per-node=1 launch/slurm.sh
#
#SBATCH --job-name=pretrain           # name shown by squeue; also the default log file name below
#SBATCH --nodes=2                     # number of nodes; override: sbatch --nodes=N launch/slurm.sh
#SBATCH --ntasks-per-node=8           # one task (rank) per GPU; keep equal to --gpus-per-node
#SBATCH --gpus-per-node=8             # GPUs per node
#SBATCH --cpus-per-task=12            # CPU cores per rank (data loading, OMP threads)
#SBATCH --mem=0                       # all memory of each node
#SBATCH --exclusive                   # whole nodes: no other job shares the GPUs or the network
#SBATCH --time=24:00:00               # wall-clock limit; the job checkpoints and requeues itself before it
#SBATCH --signal=B:USR1@300           # SIGUSR1 to this batch shell 300 s before the time limit -> checkpoint
#SBATCH --requeue                     # allow requeue (by this script, or by SLURM on preemption/node failure)
#SBATCH --open-mode=append            # a requeued job appends to its log instead of truncating it
#SBATCH --output=slurm-%x-%j.out      # batch log in the submit dir (%x job name, %j job id); copied to RUN_DIR/logs

set -uo pipefail

if [ -z "${SLURM_JOB_ID:-}" ]; then
    cat >&2 <<'EOF'
launch/slurm.sh: not running under SLURM (SLURM_JOB_ID is unset).
  Submit it:        sbatch [--nodes=N] launch/slurm.sh
  One machine:      bash launch/single_gpu.sh   (or the deepspeed/torchrun launcher, see docs)
EOF
    exit 2
fi

REPO_DIR="${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}"
cd "$REPO_DIR" || { echo "launch/slurm.sh: cannot cd to REPO_DIR=$REPO_DIR" >&2; exit 2; }

CONFIG="${CONFIG:-launch/configs/1b.json}"
DS_CONFIG="${DS_CONFIG:-ds_configs/zero3_bf16.json}"
DATA_DIR="${DATA_DIR:-data}"
RUN_DIR="${RUN_DIR:-runs/slurm-$SLURM_JOB_ID}"
PYTHON="${PYTHON:-python}"
MAX_RESTARTS="${MAX_RESTARTS:-50}"
RESTART="${SLURM_RESTART_COUNT:-0}"
NODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
# SLURM_NTASKS_PER_NODE is set when --ntasks-per-node was given; SLURM_TASKS_PER_NODE looks like "8(x2)".
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE%%(*}}}"
WORLD_SIZE=$(( NODES * GPUS_PER_NODE ))

for f in "$CONFIG" "$DS_CONFIG"; do
    [ -f "$f" ] || { echo "launch/slurm.sh: $f not found (cwd $PWD); set CONFIG/DS_CONFIG or REPO_DIR" >&2; exit 2; }
done

# Rendezvous: rank 0 runs on the first node of the allocation; the port is a function of the job id so that two
# jobs sharing a node do not collide, and a requeued job (same id) uses the same one.
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
MASTER_PORT="${MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}"
export MASTER_ADDR MASTER_PORT
# SLURM >= 22.05 no longer passes --cpus-per-task from sbatch to srun by itself.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"
fi

mkdir -p "$RUN_DIR/logs"
LOG="$RUN_DIR/logs/slurm-$SLURM_JOB_ID.log"
# Everything below also goes to RUN_DIR/logs (the #SBATCH --output path cannot use environment variables).
# tee ignores the signals meant for training, so a preempted job still logs its checkpoint and requeue.
exec > >(trap '' TERM USR1 INT HUP; exec tee -a "$LOG") 2>&1

# shellcheck disable=SC2206
EXTRA=( ${EXTRA_ARGS:-} )
TRAIN=("$PYTHON" -m launch.train --data "$DATA_DIR" --config "$CONFIG" --ds-config "$DS_CONFIG" --out "$RUN_DIR" "${EXTRA[@]}")
# Each task maps SLURM's ids to the torch.distributed variables, then becomes the trainer (exec) so that the
# signals srun forwards reach Python directly.
TASK='export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"'
# Not --kill-on-bad-exit: a rank that exits 75 after its part of a checkpoint must not cut off rank 0 while it
# writes the completion marker. Instead, once any rank has exited the others get STRAGGLER_WAIT seconds (a
# crashed rank's peers would otherwise wait in a collective until the NCCL timeout).
SRUN=(srun --nodes="$NODES" --ntasks="$WORLD_SIZE" --ntasks-per-node="$GPUS_PER_NODE" --kill-on-bad-exit=0
      --wait="${STRAGGLER_WAIT:-120}" --label --unbuffered)

echo "[slurm] $(date -u +%FT%TZ) job $SLURM_JOB_ID restart $RESTART on $SLURM_JOB_NODELIST (batch host $(hostname))"
echo "[slurm] nodes $NODES x ranks/node $GPUS_PER_NODE = world $WORLD_SIZE; MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT"
echo "[slurm] DS_ACCELERATOR=${DS_ACCELERATOR:-auto} OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset} cwd $PWD log $LOG"
echo "[slurm] command: ${SRUN[*]} bash -c '$TASK' task ${TRAIN[*]}"

SIGNALLED=""
forward() {
    SIGNALLED="$1"
    echo "[slurm] $(date -u +%FT%TZ) got SIG$1: asking every rank to checkpoint and stop"
    [ -n "${SRUN_PID:-}" ] && kill -s "$1" "$SRUN_PID" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

"${SRUN[@]}" bash -c "$TASK" task "${TRAIN[@]}" &
SRUN_PID=$!
# `wait` returns early (status > 128) whenever a trapped signal arrives; keep waiting until srun itself exits.
while :; do
    wait "$SRUN_PID"
    rc=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break
done
echo "[slurm] $(date -u +%FT%TZ) training exited with status $rc"

if [ "$rc" = 0 ]; then
    echo "[slurm] finished; checkpoints in $RUN_DIR/checkpoints"
    exit 0
fi
if [ "$rc" = 75 ] || [ -n "$SIGNALLED" ]; then
    if [ "$RESTART" -ge "$MAX_RESTARTS" ]; then
        echo "[slurm] restart $RESTART reached MAX_RESTARTS=$MAX_RESTARTS: not requeueing"
        exit "$rc"
    fi
    echo "[slurm] requeueing job $SLURM_JOB_ID (restart $(( RESTART + 1 ))); it resumes from $RUN_DIR/checkpoints/latest"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
echo "[slurm] training failed (status $rc); see the rank lines above ('N: ' prefixes the output of rank N)"
exit "$rc"
