"""Where scripts/env.sh installs PyTorch from: prints the `pip install` arguments, one per line, and a note on stderr.

PyTorch is not pinned by setup.py, because the right build depends on the machine:
  - TORCH_SPEC set: exactly that (e.g. "torch==2.6.0+cu124" with its own --index-url in TORCH_INDEX_URL);
  - a GPU listed by `nvidia-smi -L`: the default index's build, which on Linux is the CUDA build;
  - no GPU: torch==TORCH_VERSION from PyTorch's CPU wheel index when it answers (a CPU-only wheel, a few hundred
    MB instead of several GB of CUDA libraries); when it does not answer (a machine that reaches only PyPI or a
    mirror), from the default index, which on Linux x86_64 is the CUDA build unless pip finds a CPU wheel of that
    version locally (find-links). TORCH_INDEX_URL overrides the index in both cases.

    python scripts/torch_source.py      # e.g. "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_VERSION = "2.13.0"
PROBE_TIMEOUT_S = 5.0  # an unreachable index costs at most this much of the set-up


def has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def reachable(index_url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the index answers a request for its torch page (any HTTP answer below 400) within the timeout."""
    try:
        with urllib.request.urlopen(index_url.rstrip("/") + "/torch/", timeout=timeout) as response:
            return response.status < 400
    except (OSError, ValueError):
        return False


def torch_source(environ=os.environ, gpu: bool | None = None, cpu_index: str = CPU_INDEX) -> tuple[list[str], str]:
    """(pip arguments, a sentence saying where PyTorch comes from and why)."""
    if environ.get("TORCH_SPEC"):
        args = [environ["TORCH_SPEC"]]
        if environ.get("TORCH_INDEX_URL"):
            args += ["--index-url", environ["TORCH_INDEX_URL"]]
        return args, "TORCH_SPEC is set: installing exactly that"
    if has_gpu() if gpu is None else gpu:
        args = ["torch"] + (["--index-url", environ["TORCH_INDEX_URL"]] if environ.get("TORCH_INDEX_URL") else [])
        return args, "a GPU is visible (nvidia-smi -L): installing the default CUDA build of torch"
    spec = f"torch=={environ.get('TORCH_VERSION', DEFAULT_VERSION)}"
    if environ.get("TORCH_INDEX_URL"):
        return [spec, "--index-url", environ["TORCH_INDEX_URL"]], f"no GPU: {spec} from TORCH_INDEX_URL"
    if reachable(cpu_index):
        return [spec, "--index-url", cpu_index], f"no GPU: {spec}, the CPU-only build, from PyTorch's CPU index"
    return [spec], (f"no GPU, and PyTorch's CPU index ({cpu_index}) does not answer: {spec} from the default "
                    "index (on Linux x86_64 that is the CUDA build, several GB, unless pip finds a CPU wheel "
                    "locally); set TORCH_INDEX_URL to a CPU index you can reach to avoid it")


def main() -> int:
    args, why = torch_source()
    print(f"[env] {why}", file=sys.stderr)
    print("\n".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
