"""Rejected records: each dropping stage's Rejections -> DIR/rejected/STAGE-SSSSS-of-NNNNN.jsonl.gz, and counts.

Every dropped record is kept (its text bounded, see pipeline.documents.MAX_REJECTED_CHARS) with the reason it
was dropped, one JSON object per line: ``{"id", "source", "reason", "text"}`` and the stage's details
(``url``, ``duplicate_of``, ``language``, ``language_score``; pipeline.documents.Rejection). WriteRejected writes them
and counts them per reason for the manifest, in one pass.
"""
from __future__ import annotations

import json

import apache_beam as beam
import orjson
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from isal import igzip

from pipeline import documents
from pipeline.bundles import in_global_window
from pipeline.counters import COUNTER_NAMESPACE
from pipeline.documents import Rejection
from pipeline.layout import REJECTED_DIR

REJECTED_GZIP_LEVEL = 1


def rejected_line(r: Rejection) -> bytes:
    """One JSON line of rejected/*.jsonl.gz (UTF-8, compact, without its newline), by orjson: the rejected text
    is most of a web corpus, and orjson writes it several times faster than the json module. A lone surrogate
    (an odd file name in the id or source) is not UTF-8 and orjson refuses it: that record is written by the json
    module instead, the surrogate as a "\\udcff"-style escape, which JSON readers turn back into the name."""
    record = documents.to_rejection_record(r)
    try:
        return orjson.dumps(record)
    except TypeError:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


def encode_lines(lines: list[bytes]) -> bytes:
    """JSON lines -> one block of them, a newline after each."""
    return b"\n".join(lines) + b"\n"


COUNTS = "counts"  # the tagged output of _FormatRejectedFn: (reason, count) per bundle


class _FormatRejectedFn(beam.DoFn):
    """Rejections -> gzip members of about ``block_chars`` bytes of JSON lines each; (reason, count) pairs
    per bundle, tagged COUNTS.

    Counting here, in the same pass, costs one dict update per record; a separate counting transform would send
    every rejected record (often most of a web corpus) through two more steps of the runner.

    Blocks, not one element per line: a text sink compresses every write it gets, so one write per rejected
    record pays the compressor's per-call cost once per record. Each block is compressed here, as one complete
    gzip member at level 1 (REJECTED_GZIP_LEVEL), and the sink writes the bytes as they are: a file of
    concatenated members is one valid gzip stream (RFC 1952; gzip, zcat and Python's gzip read it whole). Level 1
    rather than the sink's fixed level 6, because rejected text (often most of a web corpus) is written once
    and rarely read: CPU matters more than its size. A JSON line never holds a raw newline, so a block is a run
    of whole lines; the order of lines in a file depended on bundling anyway.
    """

    def __init__(self, block_chars: int = 1 << 20):
        self.block_chars = block_chars
        self._counters = {}

    def start_bundle(self):
        self._lines, self._chars = [], 0
        self._bundle_counts: dict[str, int] = {}

    def process(self, r: Rejection):
        self._bundle_counts[r.reason] = self._bundle_counts.get(r.reason, 0) + 1
        line = rejected_line(r)
        self._lines.append(line)
        self._chars += len(line)
        if self._chars >= self.block_chars:
            yield self._block()

    def finish_bundle(self):
        if self._lines:
            yield in_global_window(self._block())
        for reason, n in sorted(self._bundle_counts.items()):
            counter = self._counters.get(reason)
            if counter is None:
                counter = self._counters[reason] = Metrics.counter(COUNTER_NAMESPACE, f"rejected_{reason}")
            counter.inc(n)
            yield in_global_window(beam.pvalue.TaggedOutput(COUNTS, (reason, n)))
        self._bundle_counts = {}

    def _block(self) -> bytes:
        block = encode_lines(self._lines)
        self._lines, self._chars = [], 0
        return gzip_member(block)


def gzip_member(data: bytes) -> bytes:
    """``data`` as one complete gzip member (level REJECTED_GZIP_LEVEL, mtime 0 so equal input gives equal bytes),
    compressed by ISA-L's igzip: standard gzip, in a fraction of zlib's time at level 1."""
    return igzip.compress(data, compresslevel=REJECTED_GZIP_LEVEL, mtime=0)


class WriteRejected(beam.PTransform):
    """Rejections -> DIR/rejected/STAGE-SSSSS-of-NNNNN.jsonl.gz; returns (the written file names, (reason, count)
    pairs: one per reason and bundle, summed by the manifest).

    One instance per stage that drops records (parse, quality, dedup_early, dedup), applied to that stage's output with
    no Flatten in between, so the runner fuses the formatting and writing into the stage itself: the rejected
    text (often most of a web corpus) is never shuffled, materialized by the runner or re-read by a later
    stage. ``num_files`` 0 (the default) writes one file per bundle; a positive count shuffles the compressed
    blocks into exactly that many files. Which file holds which record depends on bundling either way; the
    manifest lists the files. Every file ends with an empty gzip member, so a file that received no block (the
    sink writes one when a stage rejected nothing) is still valid gzip.
    """

    def __init__(self, output_dir: str, stage: str, num_files: int = 0):
        super().__init__()
        self.output_dir, self.stage, self.num_files = output_dir, stage, num_files

    def expand(self, rejected):
        formatted = rejected | "CountAndFormat" >> beam.ParDo(_FormatRejectedFn()).with_outputs(COUNTS, main="blocks")
        files = (
            formatted.blocks
            | "Write" >> beam.io.WriteToText(
                FileSystems.join(self.output_dir, REJECTED_DIR, self.stage),
                file_name_suffix=".jsonl.gz",
                append_trailing_newlines=False,
                num_shards=self.num_files,
                shard_name_template="-SSSSS-of-NNNNN",
                coder=beam.coders.BytesCoder(),
                compression_type=CompressionTypes.UNCOMPRESSED,  # the blocks are gzip members already
                footer=gzip_member(b""),
            )
        )
        return files, formatted[COUNTS]
