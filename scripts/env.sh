#!/usr/bin/env bash
# Set-up shared by the two README commands: a virtual environment in .venv with PyTorch and this package
# (every extra). Idempotent: a second run only checks a stamp. Source it (`. scripts/env.sh`) to activate.
#
# PyTorch comes first and is not pinned by setup.py, so each machine gets the build it needs:
#   - a GPU is present (nvidia-smi lists one): the default PyPI build (CUDA);
#   - no GPU: torch==$TORCH_VERSION (default 2.13.0). Set TORCH_INDEX_URL to PyTorch's CPU wheel index on a
#     machine whose pip would otherwise pick a CUDA build, or TORCH_SPEC to install exactly what you want.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[env] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp="$VENV/.pretrain-installed"
want="$(sha256sum "$ROOT/setup.py" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python -c "import torch, deepspeed, apache_beam" 2>/dev/null; then
    return 0 2>/dev/null || exit 0
fi

python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_SPEC:-}" ]; then
        spec=("$TORCH_SPEC")
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        spec=(torch)
    else
        spec=("torch==${TORCH_VERSION:-2.13.0}")
        if [ -n "${TORCH_INDEX_URL:-}" ]; then spec+=(--index-url "$TORCH_INDEX_URL"); fi
    fi
    echo "[env] installing PyTorch: pip install ${spec[*]}"
    python -m pip install -q "${spec[@]}"
fi
echo "[env] installing the project with extras data, train, test"
python -m pip install -q -e "$ROOT[all]"
echo "$want" > "$stamp"
