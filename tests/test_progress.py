"""Tests of pipeline.progress: reporters in threads and processes summed by the printer, the reporter's write
throttle, when the printer prints and what its line says (with a fake clock, never a wall-clock wait), stray
files in the progress directory; and the read, parse and filter stages reporting through it on Beam's FnApiRunner.

    python -m pytest tests/test_progress.py -q
"""
from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import threading

import pytest

from pipeline.progress import FILTER, PARSE, READ, TOKENIZE, WRITE, ProgressPrinter, Reporter, read_counts


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def file_counts(progress_dir) -> dict:
    """The counts in the one reporter file of ``progress_dir``."""
    (name,) = os.listdir(progress_dir)
    with open(os.path.join(progress_dir, name), encoding="utf-8") as f:
        return json.load(f)


def _report_in_child(progress_dir: str, records: int) -> None:
    reporter = Reporter(progress_dir)
    for i in range(records):
        reporter.add(PARSE, records=1, rejected=i % 2)
    reporter.flush()


def test_reporters_in_threads_and_a_child_process_are_summed(tmp_path):
    threads, files_per_thread = 4, 250

    def read_files():
        reporter = Reporter(str(tmp_path))  # one per DoFn instance, as in a worker's threads
        for _ in range(files_per_thread):
            reporter.add(READ, files=1, bytes=1000)
        reporter.flush()

    workers = [threading.Thread(target=read_files) for _ in range(threads)]
    for w in workers:
        w.start()
    child = multiprocessing.get_context("spawn").Process(target=_report_in_child, args=(str(tmp_path), 301))
    child.start()
    for w in workers:
        w.join()
    child.join(120)
    assert child.exitcode == 0

    assert len(os.listdir(tmp_path)) == threads + 1  # one file per reporter, no temporary file left
    assert read_counts(str(tmp_path)) == {READ: {"files": 1000, "bytes": 1_000_000},
                                          PARSE: {"records": 301, "rejected": 150}}
    printer = ProgressPrinter(str(tmp_path), total_files=1000, total_bytes=1_000_000, stream=io.StringIO(),
                              clock=FakeClock())
    assert printer.poll(force=True) == ("prepare 0:00:00 | read 1,000/1,000 files, 1.0/1.0 MB (100%) | "
                                        "records 301 | rejected 150")


def test_reporter_rewrites_its_file_at_most_every_interval_and_always_on_flush(tmp_path):
    clock = FakeClock()
    reporter = Reporter(str(tmp_path), clock=clock, interval_s=1.0)
    reporter.add(PARSE, records=1)
    assert file_counts(tmp_path) == {PARSE: {"records": 1}}  # the first add writes: a new stage shows at once
    for _ in range(5):
        reporter.add(PARSE, records=1)
    clock.now += 0.9
    reporter.add(PARSE, records=1)
    assert file_counts(tmp_path) == {PARSE: {"records": 1}}  # throttled
    reporter.flush()
    assert file_counts(tmp_path) == {PARSE: {"records": 7}}
    clock.now += 0.5  # 1.4 s after the first write, 0.5 s after the flush
    reporter.add(PARSE, records=1)
    assert file_counts(tmp_path) == {PARSE: {"records": 7}}
    clock.now += 0.5
    reporter.add(FILTER, passed=2, rejected=1)
    assert file_counts(tmp_path) == {PARSE: {"records": 8}, FILTER: {"passed": 2, "rejected": 1}}


def test_no_op_reporter_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reporter = Reporter(None)
    reporter.add(READ, files=1, bytes=10)
    reporter.flush()
    assert reporter.path is None
    assert os.listdir(tmp_path) == []


def test_reporter_goes_quiet_when_the_directory_is_gone(tmp_path, caplog):
    reporter = Reporter(str(tmp_path / "removed"))
    with caplog.at_level(logging.WARNING, logger="pipeline.progress"):
        reporter.add(READ, files=1)  # the run goes on: no exception
        reporter.add(READ, files=1)
        reporter.flush()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["progress reporting stops for this worker"]
    assert not (tmp_path / "removed").exists()


def test_stray_and_half_written_files_are_ignored(tmp_path):
    Reporter(str(tmp_path)).add(READ, files=2, bytes=30)
    (tmp_path / "half.json").write_text('{"read": {"files": 5, "by')
    (tmp_path / "garbage.json").write_bytes(b"\xff\xfe not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "strings.json").write_text('{"read": {"files": "7"}}')
    (tmp_path / "bools.json").write_text('{"read": {"files": true}}')
    (tmp_path / "notes.txt").write_text('{"read": {"files": 100}}')
    (tmp_path / "x.json.tmp-1-abcd1234").write_text('{"read": {"files": 100}}')  # a reporter's unfinished write
    (tmp_path / "sub.json").mkdir()  # not a file: reading it fails with an OSError
    assert read_counts(str(tmp_path)) == {READ: {"files": 2, "bytes": 30}}
    assert read_counts(str(tmp_path / "not yet created")) == {}


def test_printer_prints_on_a_new_stage_at_once_and_otherwise_every_interval(tmp_path):
    clock, out = FakeClock(), io.StringIO()
    printer = ProgressPrinter(str(tmp_path), total_files=2, total_bytes=2000, stream=out, interval_s=10.0,
                              clock=clock)
    reporter = Reporter(str(tmp_path), clock=clock)
    assert printer.poll(force=True) is not None  # the totals, at the start
    clock.now += 0.5
    assert printer.poll() is None
    reporter.add(READ)
    clock.now += 0.5
    assert printer.poll() == "prepare 0:00:01 | read 0/2 files, 0.0/2.0 kB (0%)"  # a new stage: at once
    clock.now += 2
    reporter.add(READ, files=1, bytes=1000)
    assert printer.poll() is None  # same stages, 2 s after the last line
    clock.now += 2
    reporter.add(PARSE, records=4, rejected=1)
    assert printer.poll() == ("prepare 0:00:05 | read 1/2 files, 1.0/2.0 kB (50%), 0.0 MB/s, read ETA 0:00:04 | "
                              "records 4 | rejected 1")
    clock.now += 9.9
    assert printer.poll() is None
    clock.now += 0.1  # interval_s after the last line
    assert printer.poll() == ("prepare 0:00:15 | read 1/2 files, 1.0/2.0 kB (50%), 0.0 MB/s, read ETA 0:00:14 | "
                              "records 4 | rejected 1")
    assert out.getvalue().count("\n") == 4


def test_printer_line_rate_and_eta(tmp_path):
    clock = FakeClock()
    printer = ProgressPrinter(str(tmp_path), total_files=120, total_bytes=5_600_000_000, stream=io.StringIO(),
                              clock=clock)
    reader, parser, filt = (Reporter(str(tmp_path), clock=clock) for _ in range(3))
    assert printer.poll(force=True) == "prepare 0:00:00 | read 0/120 files, 0.0/5.6 GB (0%)"
    clock.now += 5
    reader.add(READ)  # the first file is opened: the read rate counts from here
    printer.poll()
    clock.now += 80
    reader.add(READ, files=34, bytes=1_200_000_000)
    parser.add(PARSE, records=120_345, rejected=345)
    filt.add(FILTER, passed=80_000, rejected=40_000)
    filt.add(TOKENIZE, documents=0, tokens=0)
    filt.add(WRITE, shards=0)
    filt.flush()  # the last two adds came within a second of the first
    # 1.2 GB in 80 s: 15 MB/s; the other 4.4 GB take 293.3 s more
    assert printer.poll(force=True) == (
        "prepare 0:01:25 | read 34/120 files, 1.2/5.6 GB (21%), 15.0 MB/s, read ETA 0:04:53 | records 120,345 | "
        "passed filters 80,000 | rejected 40,345 | tokenized 0 documents, 0 tokens | shards 0")
    clock.now += 315
    reader.add(READ, files=86, bytes=4_400_000_000)
    filt.add(WRITE, runs=3)
    assert printer.poll(force=True) == (
        "prepare 0:06:40 | read 120/120 files, 5.6/5.6 GB (100%), 14.2 MB/s | records 120,345 | "
        "passed filters 80,000 | rejected 40,345 | tokenized 0 documents, 0 tokens | runs 3, shards 0")
    clock.now += 600  # the read rate stays that of the read stage: 5.6 GB in 395 s
    assert printer.poll(force=True).startswith("prepare 0:16:40 | read 120/120 files, 5.6/5.6 GB (100%), 14.2 MB/s |")


def test_printer_line_for_dataset_rows_and_a_stage_it_does_not_know(tmp_path):
    reporter = Reporter(str(tmp_path))
    reporter.add(READ, rows=12_000)
    reporter.add("shuffle", groups=7, bytes=1234)
    reporter.flush()
    printer = ProgressPrinter(str(tmp_path), total_files=0, total_bytes=0, stream=io.StringIO(), clock=FakeClock())
    assert printer.poll(force=True) == "prepare 0:00:00 | read 12,000 rows | shuffle bytes 1,234, groups 7"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream_class", [io.StringIO, _Terminal])
def test_printer_writes_plain_lines_and_a_final_one(tmp_path, stream_class):
    out = stream_class()
    reporter = Reporter(str(tmp_path / "progress"))
    with ProgressPrinter(str(tmp_path / "progress"), total_files=1, total_bytes=10, stream=out, poll_s=0.01):
        reporter.add(READ)
        reporter.add(READ, files=1, bytes=10)
        reporter.add(PARSE, records=3, rejected=0)
        reporter.flush()
    text = out.getvalue()
    lines = text.split("\n")
    assert "\r" not in text and lines[-1] == "" and all(line.startswith("prepare ") for line in lines[:-1])
    assert lines[0].endswith("| read 0/1 files, 0/10 B (0%)")  # printed when the block starts
    assert lines[-2].endswith("| read 1/1 files, 10/10 B (100%) | records 3 | rejected 0")  # and when it ends


def test_read_and_hf_rows_report_through_the_dofns(tmp_path):
    """The read DoFns called directly (no runner): files with their given sizes, dataset rows."""
    datasets = pytest.importorskip("datasets")
    from pipeline.read import _ReadFileFn, _ReadHFRowsFn

    progress = str(tmp_path / "progress")
    os.mkdir(progress)
    (tmp_path / "a.txt").write_text("some text")
    fn = _ReadFileFn("auto", "text", "id", sizes={str(tmp_path / "a.txt"): 9}, progress_dir=progress)
    fn.setup()
    assert len(list(fn.process(str(tmp_path / "a.txt")))) == 1
    assert len(list(fn.process(str(tmp_path / "missing.txt")))) == 1  # a READ_ERROR record; the file counts
    fn.finish_bundle()
    datasets.Dataset.from_dict({"text": ["x", "y", "z"]}).save_to_disk(str(tmp_path / "ds"))
    rows = _ReadHFRowsFn(str(tmp_path / "ds"), "train", "text", "id", progress_dir=progress)
    rows.setup()
    assert len(list(rows.process((0, 2)))) + len(list(rows.process((2, 3)))) == 3
    rows.teardown()
    assert read_counts(progress) == {READ: {"files": 2, "bytes": 9, "rows": 3}}


def test_read_parse_filter_report_on_fnapi_runner(tmp_path, make_text, write_jsonl, beam_pipeline):
    from references import require
    require("apache_beam")
    from pipeline.filter_stage import ParseRecords, QualityFilter
    from pipeline.filters import FilterConfig
    from pipeline.read import ReadFiles

    progress = str(tmp_path / "progress")
    os.mkdir(progress)
    paths = [
        write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": make_text(i)} for i in range(5)],
                    raw_lines=[b"not json"]),
        write_jsonl(tmp_path / "b.jsonl.gz", [{"id": "b0", "text": make_text(50)}, {"id": "b1", "text": "too short"}]),
    ]
    (tmp_path / "broken.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    paths.append(str(tmp_path / "broken.jsonl.gz"))
    sizes = {p: os.path.getsize(p) for p in paths}
    with beam_pipeline() as p:
        records = p | ReadFiles(paths, sizes=sizes, progress_dir=progress)
        docs, _, _ = records | ParseRecords(progress_dir=progress)
        _ = docs | QualityFilter(FilterConfig(), None, None, progress_dir=progress)
    # 9 raw records: 6 + 2 lines, and the broken file's READ_ERROR; "not json" and the error are rejected at
    # parsing, "too short" by the filters.
    assert read_counts(progress) == {
        READ: {"files": 3, "bytes": sum(sizes.values())},
        PARSE: {"records": 9, "rejected": 2},
        FILTER: {"passed": 6, "rejected": 1},
    }
