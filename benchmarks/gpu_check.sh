#!/usr/bin/env bash
# The checks that need a GPU, in one command, for a machine with one NVIDIA GPU and a CUDA build of PyTorch:
#
#   env       nvidia-smi, torch and CUDA versions, DeepSpeed's accelerator
#   test      tests/test_single_gpu.py: launch/single_gpu.sh on the GPU (bf16 ZeRO-3, compiled blocks, MFU in
#             the metrics, checkpoint, SIGUSR1, resume)
#   125m      benchmarks/bench_train.py --options eager,compile,document_mask,document_mask+compile on
#             launch/configs/125m.json: tokens/s, MFU and peak memory per option
#   1b        the same on launch/configs/1b.json (micro-batch 8)
#
#   bash benchmarks/gpu_check.sh                       # every step, in the order above
#   bash benchmarks/gpu_check.sh test 1b               # only these steps
#   LOG_DIR=/tmp/gpu WHEELS=wheels bash benchmarks/gpu_check.sh
#
# Each step runs under its own time limit (STEP_TIMEOUT seconds, default 240), so a step that hangs or compiles
# for too long costs only its share; every step's output goes to LOG_DIR/STEP.log (default gpu-logs/) and the
# end of it to the terminal. The exit status is the number of steps that failed. A step stopped at its limit
# while DeepSpeed builds one of its ops leaves torch's build lock behind (TORCH_EXTENSIONS_DIR, by default
# ~/.cache/torch_extensions/*/OP/lock), and every later run waits on it without a word: remove that file.
#
# An offline machine: WHEELS names a folder of wheels installed first (pip --no-index, into LOG_DIR/site, which
# goes on PYTHONPATH), for what the machine's Python lacks. With torch and transformers already there, that is
# DeepSpeed and the packages it needs beyond them; on a machine with internet access and a Python of the same
# version as the GPU machine's (3.12 below):
#
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d wheels hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
#   python -m pip wheel --no-deps -w wheels deepspeed==0.19.8
#
# (the versions of this project's environment: `pip show deepspeed pydantic pydantic-core` there).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
LOG_DIR="${LOG_DIR:-gpu-logs}"
STEP_TIMEOUT="${STEP_TIMEOUT:-240}"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(env test 125m 1b)
OPTIONS="eager,compile,document_mask,document_mask+compile"

for step in "${STEPS[@]}"; do
    case "$step" in
        env|test|125m|1b) ;;
        *) echo "gpu_check: unknown step '$step': choose from env, test, 125m, 1b" >&2; exit 2 ;;
    esac
done
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi -L lists none): these checks are for a GPU machine;" \
         "on CPU, run the test suite (bash scripts/test.sh)" >&2
    exit 2
fi
mkdir -p "$LOG_DIR"
LOG_DIR="$(cd "$LOG_DIR" && pwd)"
if [ -n "${WHEELS:-}" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$LOG_DIR/site" "$WHEELS"/*.whl \
        || { echo "gpu_check: installing the wheels of $WHEELS failed (above)" >&2; exit 2; }
    export PYTHONPATH="$LOG_DIR/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 PYTHON OPTIONS
unset DS_ACCELERATOR  # DeepSpeed picks the GPU

run_step() {
    local step="$1"
    case "$step" in
        env)
            nvidia-smi
            "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu',
torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
            "$PYTHON" -c "import deepspeed; from deepspeed.accelerator import get_accelerator;
print('deepspeed', deepspeed.__version__, 'accelerator', get_accelerator().device_name())" ;;
        test)
            "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_single_gpu.py ;;
        125m)
            "$PYTHON" benchmarks/bench_train.py --options "$OPTIONS" --config launch/configs/125m.json --steps 20 ;;
        1b)
            "$PYTHON" benchmarks/bench_train.py --options "$OPTIONS" --config launch/configs/1b.json --steps 10 \
                --set micro_batch=8 ;;
    esac
}

failed=0
for step in "${STEPS[@]}"; do
    start=$(date +%s)
    timeout --signal=TERM --kill-after=15 "$STEP_TIMEOUT" bash -c "set -euo pipefail; $(declare -f run_step); run_step $step" \
        > "$LOG_DIR/$step.log" 2>&1
    status=$?
    [ $status -ne 0 ] && failed=$((failed + 1))
    echo "=== $step: exit $status ($([ $status -eq 124 ] && echo 'time limit, ')$(( $(date +%s) - start )) s)" \
        "log $LOG_DIR/$step.log"
    tail -n 25 "$LOG_DIR/$step.log"
done
exit "$failed"
