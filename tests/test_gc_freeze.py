"""Tests of pipeline.gc_freeze: the run leaves the caller's collector as it found it, and a DoFn set up in another
process (a worker) freezes that process once, while one set up where the pipeline was built does not.

    python -m pytest tests/test_gc_freeze.py -q
"""
from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys

import pytest

from pipeline.gc_freeze import freeze_worker, frozen_run
from pipeline.progress_dofn import ReportingDoFn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def unfrozen():
    """A collector with nothing frozen before and after the test (the test process is shared by other tests)."""
    assert gc.get_freeze_count() == 0, "another test left objects frozen"
    yield
    gc.unfreeze()


def test_frozen_run_freezes_during_the_run_and_restores_the_collector(unfrozen):
    held = [[] for _ in range(100)]  # containers alive before the run: frozen with it
    with frozen_run():
        assert gc.get_freeze_count() >= len(held)
    assert gc.get_freeze_count() == 0


def test_frozen_run_unfreezes_when_the_run_fails(unfrozen):
    with pytest.raises(RuntimeError):
        with frozen_run():
            raise RuntimeError("a failed run")
    assert gc.get_freeze_count() == 0


def test_frozen_run_leaves_a_caller_that_froze_its_own_objects_alone(unfrozen):
    gc.freeze()
    before = gc.get_freeze_count()
    held = [[] for _ in range(100)]  # new objects: a second freeze would take them too
    with frozen_run():
        assert gc.get_freeze_count() == before
    assert gc.get_freeze_count() == before, "the caller's own freeze was undone"
    del held


def test_freeze_worker_does_nothing_in_the_process_that_built_the_pipeline(unfrozen):
    freeze_worker(os.getpid())
    assert gc.get_freeze_count() == 0


def _in_child(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_dofn_set_up_in_a_worker_process_freezes_it_once():
    """A ReportingDoFn built here and unpickled in another process, as Beam hands it to a worker: its setup()
    freezes that process; a second setup, after more objects exist, freezes nothing more."""
    dofn = pickle.dumps(ReportingDoFn(None))
    code = (
        "import gc, pickle, sys\n"
        f"fn = pickle.loads({dofn!r})\n"
        "before = gc.get_freeze_count()\n"
        "fn.setup()\n"
        "first = gc.get_freeze_count()\n"
        "held = [[] for _ in range(1000)]\n"
        "pickle.loads(pickle.dumps(fn)).setup()\n"
        "print(before, first, gc.get_freeze_count())\n"
    )
    before, first, second = map(int, _in_child(code))
    assert before == 0
    assert first > 10_000  # the imports (Beam, numpy, this package) are frozen
    assert second == first


def test_a_dofn_set_up_where_it_was_built_does_not_freeze(unfrozen):
    """With one local worker the bundles run in the launcher's process: frozen_run covers it, setup() must not
    freeze the caller's process for good."""
    fn = pickle.loads(pickle.dumps(ReportingDoFn(None)))
    fn.setup()
    fn.teardown()
    assert gc.get_freeze_count() == 0
