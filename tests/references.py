"""Outside references a test needs (Beam, transformers, megatron-core, DeepSpeed, hadolint, a SLURM cluster).

Without the test extras a user's run skips those tests, with the reason and the install command. In CI (the
environment variable CI is set, as `.ci/run` runs) a missing reference fails instead: a skipped Megatron
compatibility test would let that claim lapse without anyone noticing.
"""
from __future__ import annotations

import importlib
import os

import pytest

INSTALL = "pip install -e '.[all]' (or run `bash scripts/test.sh`, which does)"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(reason: str) -> None:
    """Skip the calling test (or module), or fail it in CI."""
    if in_ci():
        pytest.fail(f"CI needs this outside reference: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, install: str = INSTALL):
    """The imported module, or a skip (a fail in CI) naming what is missing and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(f"{module} is not importable ({e}); install it: {install}")
