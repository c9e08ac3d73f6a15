#!/usr/bin/env bash
# README command 2: set up and run the whole test suite on CPU. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m "not slow"` or `bash scripts/test.sh tests/test_shards.py`).
# As root, it also installs Debian's slurm-wlm and munge (once) so the SLURM tests run a real cluster;
# otherwise those tests are skipped with the reason.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/env.sh
if [ "$(id -u)" = 0 ] && ! command -v slurmctld >/dev/null 2>&1 && [ -f scripts/install_slurm.sh ]; then
    bash scripts/install_slurm.sh
fi
export DS_ACCELERATOR=cpu
# Two workers: most tests are single-threaded; the multi-process ones are spread out by file.
exec python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
