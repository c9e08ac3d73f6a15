"""Write stage: shard-keyed batches of token bytes -> DIR/{train,val}/shard-SSSSS-of-NNNNN.{bin,idx}.

Per shard: order its documents by (document_key, dedup_key), the order that makes a shard the same whatever
the number of workers (in_key_order), stream them through pipeline.shards.ShardWriter under temporary names,
then rename the .bin and then the .idx into place: a present .idx marks a finished shard. Shards with no
document are written too (empty), so a run always has every shard its manifest names.

replaced_on_close is how every stage writes a file of its own (shards, tokenizer, manifest; the rejected files
go through Beam's WriteToText, which has its own temporary names): on a local disk through pipeline.files
(temporary name, fsync, rename, directory fsync); on ``gs://`` through Beam's FileSystems (a temporary object,
then a rename to the final name, so a reader never finds a half-written object under that name).
"""
from __future__ import annotations

import os
import tempfile
import uuid
from contextlib import contextmanager
from typing import IO, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import files
from pipeline.files import is_remote
from pipeline.layout import SPLITS, shard_path
from pipeline.packing import unpack_token_batch
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


def in_key_order(batches) -> Iterator[bytes]:
    """The token bytes of every document in a shard's packed batches (pack_token_batch), in (document_key,
    dedup_key) order: the order that makes a shard the same whatever the number of workers.

    ``batches`` is iterated twice and never held: first for the keys and lengths (which travel uncompressed),
    then for the compressed tokens, one batch at a time. Runners that page a large group's values from their
    shuffle (Dataflow) then never put a shard's tokens in memory at once, and neither does this function: each
    document's tokens are first written at their final offset in an anonymous temporary file (the worker's
    local disk, one shard's tokens at most), batch by batch, then read back in order.
    """
    lengths, order = [], []
    for b, (keys, batch_lengths, _) in enumerate(batches):  # pass 1: keys and lengths only
        lengths.append(list(batch_lengths))
        order.extend((tuple(key), b, i) for i, key in enumerate(keys))
    order.sort()
    for a, c in zip(order, order[1:]):
        if a[0] == c[0]:  # their order in the shard would depend on the runner: fail rather than write it
            raise RuntimeError(f"two kept documents share the sort key {a[0]}; dedup should have removed one")
    offsets = [np.zeros(len(n), np.int64) for n in lengths]
    sizes, end = [], 0
    for _, b, i in order:
        offsets[b][i] = end
        n = lengths[b][i]
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
            raise RuntimeError(f"a shard's batches gave {len(offsets)} batches on their first pass and "
                               f"{'more' if seen > len(offsets) else seen} on the second; in_key_order needs a "
                               "re-iterable (a list, or a runner's grouped values)")
        f.seek(0)
        for n in sizes:
            token_bytes = f.read(n)
            if len(token_bytes) != n:
                raise OSError(f"the shard's temporary file {f.name!r} returned {len(token_bytes)} of {n} bytes "
                              "(is the local disk full? set TMPDIR to a larger one)")
            yield token_bytes


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


class _WriteShardFn(beam.DoFn):
    """((split, shard), batches) -> shard stats: writes the shard's documents in key order (in_key_order)."""

    def __init__(self, output_dir: str, counts: dict[str, int]):
        self.output_dir, self.counts = output_dir, counts

    def process(self, element, info):
        (split, index), batches = element
        yield _write_shard(self.output_dir, self.counts, split, index, in_key_order(batches),
                           dtype_for_vocab(info["vocab_size"]))


class _WriteEmptyShardFn(beam.DoFn):
    """(split, shard) -> stats of an empty shard, written only when no document landed in that shard."""

    def __init__(self, output_dir: str, counts: dict[str, int]):
        self.output_dir, self.counts = output_dir, counts

    def process(self, shard, written, info):
        split, index = shard
        if shard_path(split, index, self.counts[split]) not in {s["path"] for s in written}:
            yield _write_shard(self.output_dir, self.counts, split, index, [], dtype_for_vocab(info["vocab_size"]))


class WriteShards(beam.PTransform):
    """Shard-keyed batches of token bytes -> one stats dict per shard (every shard exists, empty ones included).

    Empty shards are written by a separate small step after the others (a side input of their stats), not by
    flattening placeholders into the token stream: a Flatten of differently-typed collections makes the local
    runner copy every token through an extra serial stage.
    """

    def __init__(self, tokenizer, output_dir: str, train_shards: int, val_shards: int):
        super().__init__()
        self.tokenizer, self.output_dir = tokenizer, output_dir
        self.counts = {"train": train_shards, "val": val_shards}

    def expand(self, keyed):
        info = beam.pvalue.AsSingleton(self.tokenizer)
        written = (
            keyed
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteShardFn(self.output_dir, self.counts), info)
        )
        every = [(split, i) for split in SPLITS for i in range(self.counts[split])]
        empty = (
            keyed.pipeline
            | "EveryShard" >> beam.Create(every)
            | "WriteEmpty" >> beam.ParDo(_WriteEmptyShardFn(self.output_dir, self.counts),
                                         beam.pvalue.AsList(written), info)
        )
        return (written, empty) | "AllShards" >> beam.Flatten()
