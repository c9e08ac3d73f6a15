"""ReportingDoFn: the one way a Beam step reports live progress through pipeline.progress.

pipeline.progress stays free of Beam (the launcher imports it before Beam); this is its Beam side. A DoFn is
pickled to its workers, so it keeps only the directory (a string, or None when progress is off) and makes its
Reporter in ``setup()``; until then ``self._progress`` is a no-op Reporter, so ``process()`` also works when a
test calls it directly. Counts are flushed at the end of every bundle and at teardown. ``setup()`` also freezes a
worker process's long-lived objects out of the garbage collector (pipeline.gc_freeze): these are the DoFns of
every stage that does real work.
"""
from __future__ import annotations

import os

import apache_beam as beam

from pipeline.gc_freeze import freeze_worker
from pipeline.progress import Reporter


class ReportingDoFn(beam.DoFn):
    """Base of the DoFns that report progress: ``self._progress.add(STAGE, **counts)`` in ``process()``.
    A subclass that overrides ``setup()`` or ``finish_bundle()`` calls this class's as well."""

    def __init__(self, progress_dir: str | None = None):
        super().__init__()
        self.progress_dir = progress_dir
        self._progress = Reporter(None)
        self._built_in_pid = os.getpid()  # the launcher's: pickled with the DoFn to every worker

    def setup(self):
        freeze_worker(self._built_in_pid)
        self._progress = Reporter(self.progress_dir)

    def finish_bundle(self):
        self._progress.flush()

    def teardown(self):
        self._progress.flush()
