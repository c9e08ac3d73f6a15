#!/usr/bin/env bash
# Set-up shared by the two README commands: a virtual environment in .venv with PyTorch and this package
# (every extra). Idempotent: a second run only checks a stamp. Source it (`. scripts/env.sh`) to activate.
#
# PyTorch comes first and is not pinned by setup.py, so each machine gets the build it needs
# (scripts/torch_source.py): with a GPU the default CUDA build; without one torch==$TORCH_VERSION (default
# 2.13.0) from PyTorch's CPU wheel index when it answers, else from the default index. TORCH_SPEC and
# TORCH_INDEX_URL override.
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
    # GPU or not, and whether PyTorch's CPU wheel index answers: scripts/torch_source.py decides and says why.
    mapfile -t spec < <(python "$ROOT/scripts/torch_source.py")
    echo "[env] installing PyTorch: pip install ${spec[*]}"
    python -m pip install -q "${spec[@]}"
fi
echo "[env] installing the project with extras data, train, test"
python -m pip install -q -e "$ROOT[all]"
echo "$want" > "$stamp"
