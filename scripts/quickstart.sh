#!/usr/bin/env bash
# README command 1: the main job end to end on the built-in corpus, on CPU (or a GPU when present):
# data preparation -> tokenizer -> shards -> DeepSpeed ZeRO-3 bf16 training -> checkpoint -> resume ->
# Hugging Face export -> samples, leaving a report in runs/quickstart/ (override with OUT=...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/env.sh
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export DS_ACCELERATOR=cpu
fi
exec python -m launch.quickstart --out "${OUT:-runs/quickstart}" "$@"
