"""Live progress of a local preparation run: workers count what they have done into small JSON files, and the
launching process sums those files and prints one line every few seconds.

Why a side channel: Beam's counters (pipeline.counters) are what Dataflow's console shows while a job runs,
but Beam's local runner (FnApiRunner) hands them to the launching process only when the run ends
(``PipelineResult.metrics()``), so a local run of hours would print nothing until then. Reading the runner's
in-flight state would tie this project to Beam internals. Instead each DoFn that reports holds a Reporter,
which writes its own cumulative counts to ``<progress_dir>/<pid>-<random hex>.json``, and a ProgressPrinter
in the launcher sums every such file. The workers of a local run are threads or processes of the launcher's
machine, so they share its filesystem; on Dataflow the DoFns get ``progress_dir=None`` and report nothing
(their Beam counters are the progress there, as before).

Cost: per ``Reporter.add`` a few dict updates and one ``time.monotonic()``; per reporter at most one rewrite
of a file of a few hundred bytes every REPORT_INTERVAL_S, plus one per ``flush()`` (a DoFn's end of bundle).
The launcher lists and reads the directory every POLL_S. Progress files are not fsynced: they are worth
nothing after the run, and an fsync could stall a worker behind the shard writes.

The counts are for display. Each reporter's file lags its counts by up to REPORT_INTERVAL_S, so the stages of
one line may disagree by that much work (more documents filtered than parsed, for a moment). A bundle that
fails and is retried has already counted some elements, which the retry counts again, so a count can
overshoot (121/120 files); the exact counts of a run are its Beam counters and its manifest. Every count is
complete once the run has ended: each DoFn flushes at the end of each bundle.

Stages and what each counts (names used by ``Reporter.add``; every count is a non-negative int):

    read      files, bytes       input files read to the end, readable or not, and their sizes on disk
                                 (compressed sizes, as the launcher's ``total_bytes``)
              rows               Hugging Face dataset rows read
    parse     records, rejected  raw records parsed; those dropped as unparsable
    filter    passed, rejected   documents kept / dropped by the quality rules
    dedup     kept, rejected     documents kept / dropped as exact duplicates
    tokenize  documents, tokens  documents tokenized; their tokens
    write     runs, shards       what the shard writer has finished

A stage that shows up in the directory for the first time prints a line at once, so ``add(stage)`` without
counts when a DoFn starts its first element announces the stage before anything is finished.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from typing import Callable, TextIO

from pipeline.files import TEMP_MARKER, temporary_name

LOG = logging.getLogger("pipeline.progress")

READ, PARSE, FILTER, DEDUP, TOKENIZE, WRITE = "read", "parse", "filter", "dedup", "tokenize", "write"
STAGES = (READ, PARSE, FILTER, DEDUP, TOKENIZE, WRITE)  # the order of a progress line

REPORT_INTERVAL_S = 1.0  # a reporter rewrites its file from add() at most this often (seconds)
POLL_S = 0.5  # the printer reads the directory this often (seconds)
PRINT_INTERVAL_S = 10.0  # the printer prints a line at least this often (seconds)
_SUFFIX = ".json"

Counts = dict[str, dict[str, int]]  # stage -> count name -> count


class Reporter:
    """Cumulative counts of one DoFn instance, written to its own file in ``progress_dir``.

    ``Reporter(None)`` does nothing, so a DoFn calls it without checking whether progress is on. A Beam step
    gets one from pipeline.progress_dofn.ReportingDoFn, which makes it in ``setup()`` (a DoFn is pickled: it
    keeps only the directory) and flushes it at the end of every bundle. A reporter belongs to one DoFn
    instance, which Beam runs in one thread at a time: it takes no lock. Reporting never fails the run: if the
    directory cannot be written (it was removed, the disk is full) the reporter logs a warning once and goes
    quiet.
    """

    def __init__(self, progress_dir: str | None, clock: Callable[[], float] = time.monotonic,
                 interval_s: float = REPORT_INTERVAL_S):
        self.path = None if progress_dir is None else os.path.join(
            progress_dir, f"{os.getpid()}-{uuid.uuid4().hex}{_SUFFIX}")
        self.counts: Counts = {}
        self._clock, self._interval_s = clock, interval_s
        self._due = -math.inf  # the first add writes at once, so a new stage shows without waiting
        self._dirty = False  # counts changed since the file was last written

    def add(self, stage: str, **counts: int) -> None:
        """Add ``counts`` to this reporter's totals of ``stage`` (``add("read", files=1, bytes=1234)``);
        rewrite the file if REPORT_INTERVAL_S has passed since the last write. ``add(stage)`` only
        announces the stage."""
        if self.path is None:
            return
        totals = self.counts.get(stage)
        if totals is None:
            totals = self.counts[stage] = {}
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + n
        self._dirty = True
        if self._clock() >= self._due:
            self._write()

    def flush(self) -> None:
        """Write the current totals now if they changed since the last write (end of a bundle, teardown)."""
        if self.path is not None and self._dirty:
            self._write()

    def _write(self) -> None:
        self._due = self._clock() + self._interval_s
        self._dirty = False
        # Replaced all at once (the printer never reads half a file), but not through pipeline.files.replace:
        # that syncs the file and its directory, which progress does not need and which could stall this worker.
        tmp = temporary_name(self.path)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.counts, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError as e:
            LOG.warning("progress reporting stops for this worker: cannot write %s (%s)", self.path, e)
            self.path = None
            if os.path.exists(tmp):
                os.remove(tmp)


def _valid(counts) -> bool:
    """Whether a parsed progress file has the shape a Reporter writes: {stage: {name: int}}."""
    return isinstance(counts, dict) and all(
        isinstance(named, dict) and all(isinstance(n, int) and not isinstance(n, bool) for n in named.values())
        for named in counts.values())


def read_counts(progress_dir: str) -> Counts:
    """The sum of every reporter's counts in ``progress_dir``: {stage: {name: total}}.

    A file that vanishes while being read, is not valid JSON or has another shape is skipped: only reporters
    write here, all at once, so such a file is a stray and not worth stopping the display for.
    """
    total: Counts = {}
    try:
        names = os.listdir(progress_dir)
    except FileNotFoundError:
        return total
    for name in names:
        if not name.endswith(_SUFFIX) or TEMP_MARKER in name:
            continue
        try:
            with open(os.path.join(progress_dir, name), encoding="utf-8") as f:
                counts = json.load(f)
        except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
            continue
        if not _valid(counts):
            continue
        for stage, named in counts.items():
            stage_total = total.setdefault(stage, {})
            for key, n in named.items():
                stage_total[key] = stage_total.get(key, 0) + n
    return total


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` of a non-negative number of seconds (rounded down)."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _size_unit(total_bytes: int) -> tuple[float, str]:
    """(bytes per unit, unit name) for showing sizes up to ``total_bytes``: the largest decimal unit it reaches."""
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if total_bytes >= scale:
            return scale, unit
    return 1.0, "B"


class ProgressPrinter:
    """Prints the summed progress of a run's reporters to ``stream``, one plain line at a time.

    ``with ProgressPrinter(progress_dir, total_files, total_bytes): run the pipeline`` prints a line with the
    totals at once, then from a daemon thread a line every ``interval_s`` seconds and whenever a stage shows up
    for the first time, and a final line when the block ends. ``total_files`` and ``total_bytes`` are the input
    files matched by the launcher and the sum of their sizes on disk (bytes). Lines end in a newline and are
    never redrawn, so a log file gets them as they are. ``clock`` (seconds, monotonic) is injectable for tests,
    which call ``poll()`` themselves instead of starting the thread.
    """

    def __init__(self, progress_dir: str, total_files: int, total_bytes: int, stream: TextIO | None = None,
                 interval_s: float = PRINT_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 poll_s: float = POLL_S):
        self.progress_dir, self.total_files, self.total_bytes = progress_dir, total_files, total_bytes
        self.stream = sys.stderr if stream is None else stream
        self.interval_s, self._clock, self._poll_s = interval_s, clock, poll_s
        self._start = clock()
        self._last_line = -math.inf  # clock() of the last line printed
        self._seen: set[str] = set()  # stages printed so far
        self._read_start: float | None = None  # clock() when the read stage first showed up
        self._read_end: float | None = None  # clock() when every input file had been read
        self._lock = threading.Lock()  # poll() runs in the thread and, at the end, in the caller
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressPrinter:
        os.makedirs(self.progress_dir, exist_ok=True)
        self.poll(force=True)
        self._thread = threading.Thread(target=self._loop, name="prepare-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll(force=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            self.poll()

    def poll(self, force: bool = False) -> str | None:
        """Read the directory; print a line if ``force``, a stage is new, or ``interval_s`` has passed since
        the last line. Returns the line printed (without its newline), or None."""
        counts = read_counts(self.progress_dir)
        with self._lock:
            now = self._clock()
            new_stages = counts.keys() - self._seen
            self._seen |= new_stages
            self._track_read(counts.get(READ), now)
            if not (force or new_stages or now - self._last_line >= self.interval_s):
                return None
            self._last_line = now
            line = self.format_line(counts, now)
            print(line, file=self.stream, flush=True)
            return line

    def _track_read(self, read: dict[str, int] | None, now: float) -> None:
        if read is None:
            return
        if self._read_start is None:
            self._read_start = now
        if self._read_end is None and self.total_files and read.get("files", 0) >= self.total_files:
            self._read_end = now

    def format_line(self, counts: Counts, now: float) -> str:
        """One progress line for summed ``counts`` at clock ``now``: elapsed time, then a part per stage seen
        (the read part from the start, as its totals are known), then rejections summed over all stages."""
        parts = [f"prepare {format_duration(now - self._start)}"]
        if self.total_files or READ in counts:
            parts.append(self._read_part(counts.get(READ, {}), now))
        if PARSE in counts:
            parts.append(f"records {counts[PARSE].get('records', 0):,}")
        if FILTER in counts:
            parts.append(f"passed filters {counts[FILTER].get('passed', 0):,}")
        if DEDUP in counts:
            parts.append(f"unique {counts[DEDUP].get('kept', 0):,}")
        if any("rejected" in named for named in counts.values()):
            parts.append(f"rejected {sum(named.get('rejected', 0) for named in counts.values()):,}")
        if TOKENIZE in counts:
            tok = counts[TOKENIZE]
            parts.append(f"tokenized {tok.get('documents', 0):,} documents, {tok.get('tokens', 0):,} tokens")
        if WRITE in counts:
            written = dict(counts[WRITE])
            written.setdefault("shards", 0)
            parts.append(", ".join(f"{name} {n:,}" for name, n in sorted(written.items())))
        for stage in sorted(counts.keys() - set(STAGES)):  # a stage this module does not know yet: as it is
            named = ", ".join(f"{name} {n:,}" for name, n in sorted(counts[stage].items()))
            parts.append(f"{stage} {named}".rstrip())
        return " | ".join(parts)

    def _read_part(self, read: dict[str, int], now: float) -> str:
        """"read 34/120 files, 1.2/5.6 GB (21%), 15.1 MB/s, read ETA 0:04:50" (rate once a file is done; ETA
        until the last one is), plus "N rows" for dataset rows."""
        pieces = []
        files, done = read.get("files", 0), read.get("bytes", 0)
        if self.total_files:
            scale, unit = _size_unit(self.total_bytes)
            fraction = done / self.total_bytes if self.total_bytes else files / self.total_files
            digits = 0 if unit == "B" else 1
            pieces.append(f"{files:,}/{self.total_files:,} files, {done / scale:.{digits}f}/"
                          f"{self.total_bytes / scale:.{digits}f} {unit} ({fraction:.0%})")
            elapsed = (self._read_end or now) - self._read_start if self._read_start is not None else 0.0
            if done and elapsed > 0:
                rate = done / elapsed  # bytes/s over the time since reading started
                pieces.append(f"{rate / 1e6:.1f} MB/s")
                if self._read_end is None:
                    pieces.append(f"read ETA {format_duration(max(self.total_bytes - done, 0) / rate)}")
        if "rows" in read:
            pieces.append(f"{read['rows']:,} rows")
        return "read " + ", ".join(pieces) if pieces else "read"
