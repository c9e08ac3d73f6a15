"""Write stage: batches of token bytes keyed by (split, shard, part) -> DIR/{train,val}/shard-SSSSS-of-NNNNN.{bin,idx}.

A shard's documents are in (document_key, dedup_key) order, the order that makes a shard the same whatever the
number of workers. No step holds a whole shard:

    GroupByPart       (split, shard, part) -> batches; the part is a hash of the document key, and PlanWrite
                      picks enough parts per shard that a group stays under --max-group-mb
    WriteRun          each group's documents in key order (in_key_order) -> DIR/_runs/ one run file (pipeline.runs);
                      with one part per shard, the group is the shard, written in place (no run, no merge)
    GroupRunsByShard  (split, shard) -> the names of its run files (a few bytes each)
    MergeRuns         a streaming k-way merge of the runs by key -> pipeline.shards.ShardWriter under temporary
                      names, then the .bin and then the .idx renamed into place (a present .idx marks a
                      finished shard)

The merge of key-sorted runs gives the order one sort of the whole shard gives, so the shards are byte-identical
whatever the number of parts. Shards with no document are written too (empty), so a run always has every shard
its manifest names. remove_runs deletes the run files once every shard is in place.

replaced_on_close is how every stage writes a file of its own (shards, tokenizer, manifest; the rejected files
go through Beam's WriteToText, which has its own temporary names): on a local disk through pipeline.files
(temporary name, fsync, rename, directory fsync); on ``gs://`` through Beam's FileSystems (a temporary object,
then a rename to the final name, so a reader never finds a half-written object under that name).
"""
from __future__ import annotations

import math
import os
import tempfile
import uuid
from contextlib import ExitStack, contextmanager
from typing import IO, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import files
from pipeline.files import is_remote
from pipeline.counters import COUNTER_NAMESPACE, GROUP_METRICS
from pipeline.layout import RUNS_DIR, SPLITS, is_run_file, run_path, shard_path
from pipeline.packing import packed_size, token_batch_index, unpack_token_batch
from pipeline.progress import WRITE
from pipeline.progress_dofn import ReportingDoFn
from pipeline.runs import merge_runs, read_run, write_run
from pipeline.shards import ShardWriter, dtype_for_vocab


@contextmanager
def replaced_on_close(path: str) -> Iterator[IO[bytes]]:
    """``with replaced_on_close(path) as f: f.write(...)``: ``path`` (local or gs://) appears all at once when the
    block ends without an error; on an error the temporary file is removed and ``path`` is left as it was."""
    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with files.atomic_open(path, "wb") as f:
            yield f
        return
    tmp = f"{path}{files.TEMP_MARKER}{uuid.uuid4().hex}"  # a retried or speculative attempt never shares it
    try:
        with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            yield f
        FileSystems.rename([tmp], [path])
    finally:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])


def write_bytes(path: str, data: bytes) -> None:
    """Write a small file (the tokenizer, the manifest) all at once, local or gs://."""
    with replaced_on_close(path) as f:
        f.write(data)


def in_key_order(batches, measure=None) -> Iterator[tuple[tuple[str, str], bytes]]:
    """Every document of a group's packed batches (pack_token_batch) as ((document_key, dedup_key), token bytes),
    in that key order: the order that makes a shard the same whatever the number of workers.

    ``batches`` is iterated twice and never held: first for the keys and lengths (each batch's index frame),
    then for the tokens, one batch at a time. Runners that page a large group's values from their
    shuffle (Dataflow) then never put a group's tokens in memory at once, and neither does this function: each
    document's tokens are first written at their final offset in an anonymous temporary file (the worker's
    local disk, one group's tokens at most), batch by batch, then read back in order. ``measure``, when given,
    is called in the first pass with the size in bytes of each batch (pipeline.packing.packed_size).
    """
    lengths, order = [], []
    for b, batch in enumerate(batches):  # pass 1: keys and lengths only
        keys, batch_lengths = token_batch_index(batch)
        if measure is not None:
            measure(packed_size(batch))
        lengths.append(batch_lengths)
        order.extend((key, b, i) for i, key in enumerate(keys))
    order.sort()
    for a, c in zip(order, order[1:]):
        if a[0] == c[0]:  # their order in the shard would depend on the runner: fail rather than write it
            raise RuntimeError(f"two kept documents share the sort key {a[0]}; dedup should have removed one")
    offsets = [np.zeros(len(n), np.int64) for n in lengths]
    keys, sizes, end = [], [], 0
    for key, b, i in order:
        offsets[b][i] = end
        n = lengths[b][i]
        keys.append(key)
        sizes.append(n)
        end += n
    del order, lengths
    with tempfile.TemporaryFile() as f:
        fd = f.fileno()
        seen = 0
        for batch in batches:  # pass 2: the tokens, one decompressed batch at a time
            if seen == len(offsets):  # more batches than the first pass gave: stop, and fail below
                seen += 1
                break
            for (_, token_bytes), offset in zip(unpack_token_batch(batch), offsets[seen].tolist()):
                os.pwrite(fd, token_bytes, offset)
            seen += 1
        if seen != len(offsets):
            raise RuntimeError(f"a group's batches gave {len(offsets)} batches on their first pass and "
                               f"{'more' if seen > len(offsets) else seen} on the second; in_key_order needs a "
                               "re-iterable (a list, or a runner's grouped values)")
        f.seek(0)
        for key, n in zip(keys, sizes):
            token_bytes = f.read(n)
            if len(token_bytes) != n:
                raise OSError(f"the group's temporary file {f.name!r} returned {len(token_bytes)} of {n} bytes "
                              "(is the local disk full? set TMPDIR to a larger one)")
            yield key, token_bytes


def _write_shard(output_dir: str, counts: dict[str, int], split: str, index: int, sequences, dtype) -> dict:
    """Stream ``sequences`` (each document's token bytes, in shard order) through ShardWriter to temporary names,
    then rename .bin, then .idx into place (a present .idx marks a finished shard). Returns the shard's stats."""
    rel = shard_path(split, index, counts[split])
    prefix = FileSystems.join(output_dir, *rel.split("/"))
    # Entered .idx first, so that it is renamed last: the blocks end in the reverse order.
    with replaced_on_close(prefix + ".idx") as fi, replaced_on_close(prefix + ".bin") as fb:
        writer = ShardWriter(fb, fi, dtype)
        for token_bytes in sequences:
            writer.add(np.frombuffer(token_bytes, dtype=dtype))
        stats = writer.close()
    return {"split": split, "path": rel, **stats}


def plan_parts(text_bytes: int, val_fraction: float, counts: dict[str, int], max_group_bytes: int,
               min_groups: int, token_bytes_per_text_byte: int) -> dict[str, int]:
    """Parts per shard of each split, so that one write group ((split, shard, part)) stays under
    ``max_group_bytes`` and the train split has at least ``min_groups`` groups (every worker gets one).

    Planned from the UTF-8 bytes of the documents that passed the filters (before dedup) at one token per byte (``token_bytes_per_text_byte`` = the
    shard dtype's size): a tokenizer averages several bytes per token, so the groups' token bytes, which cross
    the shuffle compressed, stay well below the bound. A part is a hash of the document key, so parts of a
    shard are about equal; one document is never split, so a group is never smaller than its largest document.
    """
    parts = {}
    for split, shards in counts.items():
        if not shards:
            parts[split] = 0
            continue
        share = val_fraction if split == "val" else 1 - val_fraction
        estimate = text_bytes * share * token_bytes_per_text_byte / shards
        parts[split] = max(1, math.ceil(estimate / max_group_bytes))
    if counts.get("train"):
        parts["train"] = max(parts["train"], math.ceil(min_groups / counts["train"]))
    return parts


class _SumTextFn(beam.CombineFn):
    """Documents -> (documents, UTF-8 bytes of their text)."""

    def create_accumulator(self):
        return 0, 0

    def add_input(self, acc, element):
        return acc[0] + 1, acc[1] + len(element.text.encode("utf-8", "surrogatepass"))

    def merge_accumulators(self, accumulators):
        docs, size = 0, 0
        for d, b in accumulators:
            docs, size = docs + d, size + b
        return docs, size

    def extract_output(self, acc):
        return acc


class PlanWrite(beam.PTransform):
    """Documents that passed the filters -> [write plan]: {"parts": {split: parts per shard}, "documents",
    "text_bytes", "max_group_bytes"}, a singleton side input of the tokenize stage (which keys each document by
    its part).

    A CombineGlobally over the documents before dedup (an upper bound of what is kept): it runs inside the
    filter stage, so the plan is ready before the dedup join ends and the deduplicated documents flow straight
    into the tokenize stage; planned after dedup, they would have to be held whole until the plan was known."""

    def __init__(self, tokenizer, val_fraction: float, train_shards: int, val_shards: int, max_group_bytes: int,
                 min_groups: int):
        super().__init__()
        self.tokenizer, self.val_fraction = tokenizer, val_fraction
        self.counts = {"train": train_shards, "val": val_shards}
        self.max_group_bytes, self.min_groups = max_group_bytes, min_groups

    def expand(self, unique):
        def plan(totals, info):
            docs, text_bytes = totals
            width = np.dtype(dtype_for_vocab(info["vocab_size"])).itemsize
            return {"parts": plan_parts(text_bytes, self.val_fraction, self.counts, self.max_group_bytes,
                                        self.min_groups, width),
                    "documents": docs, "text_bytes": text_bytes, "max_group_bytes": self.max_group_bytes}

        return (
            unique
            | "SumText" >> beam.CombineGlobally(_SumTextFn())
            | "Plan" >> beam.Map(plan, beam.pvalue.AsSingleton(self.tokenizer))
        )


class _WriteRunFn(ReportingDoFn):
    """((split, shard, part), packed batches) -> ((split, shard), run descriptor): the group's documents in key
    order (in_key_order) into DIR/_runs/SPLIT-SSSSS-part-PPPPP.run under a temporary name, then renamed.
    When the plan gives the split one part per shard, the group is the whole shard (under the bound, by the
    plan): it is written as the shard itself, and its stats leave tagged "shards", with no run file or merge.

    The name is a function of the group alone, so a retried or speculative attempt writes the same bytes to the
    same name; the descriptor that reaches the merge is that of the attempt the runner committed."""

    def __init__(self, output_dir: str, counts: dict[str, int], progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.output_dir, self.counts = output_dir, counts
        self.group_bytes = Metrics.distribution(COUNTER_NAMESPACE, GROUP_METRICS["write"])

    def process(self, element, info, plan):
        (split, shard, part), batches = element
        size = [0]

        def measure(n: int) -> None:
            size[0] += n

        if plan["parts"][split] == 1:
            stats = _write_shard(self.output_dir, self.counts, split, shard,
                                 (tokens for _, tokens in in_key_order(batches, measure)),
                                 dtype_for_vocab(info["vocab_size"]))
            self.group_bytes.update(size[0])
            self._progress.add(WRITE, shards=1)
            yield beam.pvalue.TaggedOutput("shards", stats)
            return
        rel = run_path(split, shard, part)
        with replaced_on_close(FileSystems.join(self.output_dir, *rel.split("/"))) as f:
            documents = write_run(f, in_key_order(batches, measure))
        self.group_bytes.update(size[0])
        self._progress.add(WRITE, runs=1)
        yield (split, shard), {"path": rel, "documents": documents}


class _MergeRunsFn(ReportingDoFn):
    """((split, shard), run descriptors) -> shard stats: a streaming k-way merge of the shard's runs by key
    (pipeline.runs.merge_runs) through ShardWriter, .bin then .idx renamed into place. Holds one document per
    run; the group is the runs' names."""

    def __init__(self, output_dir: str, counts: dict[str, int], progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.output_dir, self.counts = output_dir, counts
        self.group_bytes = Metrics.distribution(COUNTER_NAMESPACE, GROUP_METRICS["merge"])

    def process(self, element, info):
        (split, index), runs = element
        runs = sorted(runs, key=lambda r: r["path"])
        self.group_bytes.update(sum(len(r["path"]) + 8 for r in runs))
        with ExitStack() as stack:
            readers = []
            for run in runs:
                path = FileSystems.join(self.output_dir, *run["path"].split("/"))
                f = stack.enter_context(FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED))
                readers.append(read_run(f, path))
            stats = _write_shard(self.output_dir, self.counts, split, index, merge_runs(readers),
                                 dtype_for_vocab(info["vocab_size"]))
        expected = sum(r["documents"] for r in runs)
        if stats["documents"] != expected:  # a run file that is not the one its group wrote
            raise RuntimeError(f"shard {stats['path']} got {stats['documents']} documents from its run files, whose "
                               f"writers wrote {expected}; a run file was changed or truncated")
        self._progress.add(WRITE, shards=1)
        yield stats


class _WriteEmptyShardFn(beam.DoFn):
    """(split, shard) -> stats of an empty shard, written only when no document landed in that shard."""

    def __init__(self, output_dir: str, counts: dict[str, int]):
        self.output_dir, self.counts = output_dir, counts

    def process(self, shard, written, info):
        split, index = shard
        if shard_path(split, index, self.counts[split]) not in {s["path"] for s in written}:
            yield _write_shard(self.output_dir, self.counts, split, index, [], dtype_for_vocab(info["vocab_size"]))


class WriteShards(beam.PTransform):
    """((split, shard, part), packed token batch) -> one stats dict per shard (every shard exists, empty ones too).

    Two groupings, neither of which holds more than the bound: by (split, shard, part), each group writing one
    key-sorted run file (or, with one part per shard, the shard itself); then by (split, shard), whose values are
    only the run files' names, merged into the shard. Empty shards are written by a separate small step after
    the others (a side input of their stats), not by flattening placeholders into the token stream: a Flatten of
    differently-typed collections makes the local runner copy every token through an extra serial stage. The run
    files are removed by remove_runs, once every shard is in place (the manifest stage calls it).
    """

    def __init__(self, tokenizer, plan, output_dir: str, train_shards: int, val_shards: int,
                 progress_dir: str | None = None):
        super().__init__()
        self.tokenizer, self.plan, self.output_dir, self.progress_dir = tokenizer, plan, output_dir, progress_dir
        self.counts = {"train": train_shards, "val": val_shards}

    def expand(self, keyed):
        info = beam.pvalue.AsSingleton(self.tokenizer)
        runs = (
            keyed
            | "GroupByPart" >> beam.GroupByKey()
            | "WriteRun" >> beam.ParDo(_WriteRunFn(self.output_dir, self.counts, self.progress_dir), info,
                                       beam.pvalue.AsSingleton(self.plan)).with_outputs("shards", main="runs")
        )
        merged = (
            runs.runs
            | "GroupRunsByShard" >> beam.GroupByKey()
            | "MergeRuns" >> beam.ParDo(_MergeRunsFn(self.output_dir, self.counts, self.progress_dir), info)
        )
        written = (runs.shards, merged) | "WrittenShards" >> beam.Flatten()
        every = [(split, i) for split in SPLITS for i in range(self.counts[split])]
        empty = (
            keyed.pipeline
            | "EveryShard" >> beam.Create(every)
            | "WriteEmpty" >> beam.ParDo(_WriteEmptyShardFn(self.output_dir, self.counts),
                                         beam.pvalue.AsList(written), info)
        )
        return (written, empty) | "AllShards" >> beam.Flatten()


def remove_runs(output_dir: str) -> int:
    """Delete DIR/_runs/ (run files and their temporaries, including a failed attempt's); returns how many files.
    Only names pipeline.layout says are run files are removed; the folder goes when it is left empty."""
    base = FileSystems.join(output_dir, RUNS_DIR)
    if not is_remote(output_dir) and not os.path.isdir(base):
        return 0
    matched = FileSystems.match([FileSystems.join(base, "*")])[0].metadata_list
    paths = [m.path for m in matched if is_run_file(m.path.rstrip("/").rsplit("/", 1)[-1])]
    if paths:
        FileSystems.delete(paths)
    if not is_remote(output_dir):
        try:
            os.rmdir(base)
        except OSError:  # something else is in there: leave it
            pass
    return len(paths)
