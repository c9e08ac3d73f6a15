"""Keep the objects a data-preparation process holds for its whole run out of Python's cyclic garbage collector.

A process running the pipeline first imports Beam and its dependencies (hundreds of thousands of container
objects: functions, dicts, types, module state), and the launcher adds the pipeline's graph. None of them is
garbage before the run ends, yet every full (generation 2) collection walks all of them, a long run triggers
many, and a worker's interpreter walks them again while it exits. ``gc.freeze()`` moves
every object alive at that moment into the permanent generation, which the collector skips; objects made later
are collected as usual. Reference counting still frees a frozen object as soon as nothing uses it: the only
cost is that a frozen object which later becomes part of an unreachable cycle stays in memory until
``gc.unfreeze()``. benchmarks/RESULTS.md (data preparation) has what it saves.

Two places freeze, one per kind of process:

* :func:`frozen_run` wraps the run in the process that calls ``Pipeline.run`` (the launcher; with one local
  worker, also the process that runs every bundle). It unfreezes when the run ends, so a caller's process (a
  test, a notebook) gets its collector back as it was. A caller that froze objects of its own is left alone.
* :func:`freeze_worker`, called when a DoFn is set up, freezes once in a process other than the one that built
  the pipeline: a local worker process or a Dataflow worker, which exist to run the pipeline and stay frozen.
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def frozen_run() -> Iterator[None]:
    """Freeze for the duration of the block, then unfreeze; does nothing if the process already froze objects."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def freeze_worker(built_in_pid: int) -> None:
    """Freeze if this process is not ``built_in_pid``, the process that built the pipeline (there,
    :func:`frozen_run` covers the run), and nothing is frozen yet: once per worker is enough, later objects are
    the run's own. A remote worker whose pid happens to match only misses the saving."""
    if not gc.get_freeze_count() and os.getpid() != built_in_pid:
        gc.freeze()
