"""Run files: one key-sorted piece of a shard, written by one write group and merged into the shard later.

The shard writer never receives a whole shard (pipeline.write): the tokenized documents of a shard are grouped
by (split, shard, part), each group writes its documents sorted by key into one run file, and a last step per
shard merges the shard's runs by key (a streaming k-way merge) into the .bin/.idx. This module is the run
file's format and nothing else; it needs no Beam.

A run file is one zstd stream (level 1: written once, read once) of records, in ascending key order::

    u32 len(document_key) | document_key UTF-8 | u32 len(dedup_key) | dedup_key UTF-8 | u64 n | n token bytes

little-endian, after an 8-byte magic. The key is (document_key, dedup_key), the order pipeline.write's
in_key_order gives a shard; token bytes are the document's ids in the shard dtype, EOS included.
"""
from __future__ import annotations

import heapq
import struct
from typing import IO, Iterable, Iterator

import zstandard

MAGIC = b"PRERUN1\n"
_LEN32, _LEN64 = struct.Struct("<I"), struct.Struct("<Q")
RUN_ZSTD_LEVEL = 1

Item = tuple[tuple[str, str], bytes]  # ((document_key, dedup_key), token bytes)


def write_run(f: IO[bytes], items: Iterable[Item]) -> int:
    """Write ``items`` (already in ascending key order) to the binary file ``f``; returns how many were written.
    Raises if the keys are not strictly ascending: a merge of unsorted runs would write a wrong shard."""
    count, previous = 0, None
    with zstandard.ZstdCompressor(level=RUN_ZSTD_LEVEL).stream_writer(f, closefd=False) as out:
        out.write(MAGIC)
        for key, token_bytes in items:
            if previous is not None and not previous < key:
                raise RuntimeError(f"run keys out of order: {previous} then {key}; runs must be key-sorted")
            previous = key
            a, b = key[0].encode("utf-8", "surrogatepass"), key[1].encode("utf-8", "surrogatepass")
            out.write(b"".join((_LEN32.pack(len(a)), a, _LEN32.pack(len(b)), b, _LEN64.pack(len(token_bytes)),
                                token_bytes)))
            count += 1
    return count


_READ_BYTES = 1 << 20


def read_run(f: IO[bytes], name: str = "<run>") -> Iterator[Item]:
    """The items of a run file, in its order, one at a time (memory: ~1 MB of decompressed buffer, or one
    document's tokens when it is larger, plus zstd's window)."""
    stream = zstandard.ZstdDecompressor().stream_reader(f, read_size=_READ_BYTES, closefd=False)
    buf, pos = b"", 0

    def need(n: int) -> None:  # make buf[pos:pos + n] available, or fail naming the file
        nonlocal buf, pos
        if len(buf) - pos >= n:
            return
        parts, have = [buf[pos:]], len(buf) - pos
        while have < n:
            chunk = stream.read(max(_READ_BYTES, n - have))
            if not chunk:
                raise ValueError(f"run file {name} ends in the middle of a record (it is truncated); rerun the "
                                 "preparation with --overwrite")
            parts.append(chunk)
            have += len(chunk)
        buf, pos = b"".join(parts), 0

    try:
        need(len(MAGIC))
    except ValueError:
        buf = b""
    if buf[:len(MAGIC)] != MAGIC:
        raise ValueError(f"{name} is not a run file of this tool (bad magic); rerun the preparation with --overwrite")
    pos = len(MAGIC)
    while True:
        if pos == len(buf):
            buf, pos = stream.read(_READ_BYTES), 0
            if not buf:
                return
        need(_LEN32.size)
        (n,) = _LEN32.unpack_from(buf, pos)
        need(_LEN32.size + n + _LEN32.size)
        a = buf[pos + 4:pos + 4 + n].decode("utf-8", "surrogatepass")
        pos += 4 + n
        (n,) = _LEN32.unpack_from(buf, pos)
        need(_LEN32.size + n + _LEN64.size)
        b = buf[pos + 4:pos + 4 + n].decode("utf-8", "surrogatepass")
        pos += 4 + n
        (n,) = _LEN64.unpack_from(buf, pos)
        need(_LEN64.size + n)
        tokens = buf[pos + 8:pos + 8 + n]
        pos += 8 + n
        yield (a, b), tokens


def merge_runs(runs: list[Iterator[Item]]) -> Iterator[bytes]:
    """The token bytes of every item of ``runs`` (each key-sorted) in ascending key order: a streaming k-way
    merge holding one item per run. Two items with the same key fail the merge (dedup keeps one per key)."""
    previous = None
    for key, token_bytes in heapq.merge(*runs, key=lambda item: item[0]):
        if key == previous:
            raise RuntimeError(f"two kept documents share the sort key {key}; dedup should have removed one")
        previous = key
        yield token_bytes
