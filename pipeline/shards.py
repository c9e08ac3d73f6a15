"""The token shard format: Megatron-LM's indexed dataset (``.bin`` + ``.idx``), byte for byte.

This module is the one home of the format. The Beam pipeline writes shards with :class:`ShardWriter`,
the trainer reads them with :class:`ShardReader`, and Megatron-LM, GPT-NeoX and NeMo read the same files.
It imports numpy and the standard library only, so ``launch/`` can read shards without Apache Beam.

``PREFIX.idx`` (all little-endian, no padding)::

    magic            9 bytes   b"MMIDIDX\\x00\\x00"
    version          uint64    1
    dtype code       uint8     8 = uint16 (vocab < 65500), 4 = int32 (larger vocabularies)
    sequence count   uint64    n
    document count   uint64    d + 1
    sizes            int32[n]  tokens per sequence
    pointers         int64[n]  byte offset of each sequence in PREFIX.bin
    document index   int64[d+1] sequence index where each document starts, then n

``PREFIX.bin`` is the concatenation of every sequence's tokens in the dtype above. Our writer stores one
sequence per document (the document's token ids followed by EOS), so d == n and the document index is
0..n; the reader accepts Megatron shards with several sequences per document too.

Quick look at a shard::

    python -c "from pipeline.shards import ShardReader; r = ShardReader('out/train/shard-00000-of-00008'); print(len(r), r.num_tokens)"
"""
from __future__ import annotations

import hashlib
import os
import struct
from array import array
from typing import BinaryIO, Iterable

import numpy as np

from pipeline.files import atomic_open

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# Header: magic, version (Q), dtype code (B), sequence count (Q), document count (Q).
_HEADER = struct.Struct("<9sQBQQ")
HEADER_BYTES = _HEADER.size  # 34

# Megatron's DType codes. We write 8 and 4; we read every integer code Megatron defines.
DTYPE_CODES = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    8: np.dtype(np.uint16),
}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}

# Megatron switches to int32 below 2**16 to leave room for special tokens added later; we follow it
# exactly so a shard written here has the dtype Megatron's own preprocessing would pick.
UINT16_VOCAB_LIMIT = 65500

_CHUNK = 1 << 20  # bytes per read when hashing


class ShardError(ValueError):
    """A shard on disk is not a valid indexed dataset. The message names the file and what is wrong."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The token dtype for a vocabulary: uint16 when every id fits with headroom, else int32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _HashingWriter:
    """Wraps a writable binary file; hashes and counts every byte that goes through."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.sha.update(data)
        self.nbytes += len(data)


class ShardWriter:
    """Streams one shard into two writable binary file objects (local files, or Beam FileSystems streams).

    Memory: the tokens go straight to ``bin_file``; only 4 bytes of size per document are kept until
    :meth:`close` writes the index. The caller owns the file objects (opening, closing, renaming).
    """

    def __init__(self, bin_file: BinaryIO, idx_file: BinaryIO, dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype not in _CODE_OF:
            raise ValueError(f"unsupported token dtype {self.dtype}; use pipeline.shards.dtype_for_vocab()")
        self._bin = _HashingWriter(bin_file)
        self._idx = _HashingWriter(idx_file)
        self._sizes = array("i")  # int32 per sequence, as in the index
        self._tokens = 0
        self._closed = False
        info = np.iinfo(self.dtype)
        self._min, self._max = info.min, info.max

    def add(self, tokens) -> None:
        """Append one document's sequence (token ids with EOS already appended)."""
        if self._closed:  # the index is written: a sequence added now would be in the .bin but not the .idx
            raise RuntimeError("ShardWriter.add() after close(): the shard's index is already written")
        ids = np.asarray(tokens)
        if ids.ndim != 1:
            raise ValueError(f"a sequence must be 1-D token ids, got shape {ids.shape}")
        # Ids already in the shard dtype fit it by construction (the write stage hands over its token bytes); only
        # wider ones are checked.
        if ids.size and ids.dtype != self.dtype and (int(ids.min()) < self._min or int(ids.max()) > self._max):
            raise ValueError(
                f"token ids span [{int(ids.min())}, {int(ids.max())}] which does not fit {self.dtype}; "
                "the vocabulary is larger than the shard dtype allows (see dtype_for_vocab)"
            )
        if ids.size > np.iinfo(np.int32).max:
            raise ValueError(f"a sequence of {ids.size} tokens exceeds the format's int32 size field")
        self._bin.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
        self._sizes.append(int(ids.size))
        self._tokens += int(ids.size)

    def close(self) -> dict:
        """Write the index and return ``{"documents", "tokens", "sha256_bin", "sha256_idx"}``."""
        if self._closed:
            raise RuntimeError("ShardWriter.close() called twice: the shard's index would be written twice")
        self._closed = True
        n = len(self._sizes)
        sizes = np.frombuffer(self._sizes, dtype=np.int32) if n else np.zeros(0, np.int32)
        pointers = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        self._idx.write(_HEADER.pack(MAGIC, VERSION, _CODE_OF[self.dtype], n, n + 1))
        self._idx.write(sizes.astype("<i4").tobytes())
        self._idx.write(pointers.astype("<i8").tobytes())
        self._idx.write(np.arange(n + 1, dtype="<i8").tobytes())
        return {
            "documents": n,
            "tokens": self._tokens,
            "sha256_bin": self._bin.sha.hexdigest(),
            "sha256_idx": self._idx.sha.hexdigest(),
        }


def write_shard(prefix: str, sequences: Iterable, vocab_size: int) -> dict:
    """Write ``prefix.bin`` and ``prefix.idx`` on the local file system, crash-safely.

    Both files are written under temporary names, fsynced, and renamed into place with the ``.idx``
    last (pipeline.files): a shard whose ``.idx`` exists is complete. Returns the writer's statistics.
    """
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    # Entered .idx first, so that it is renamed last: the blocks end in the reverse order.
    with atomic_open(prefix + ".idx") as fi, atomic_open(prefix + ".bin") as fb:
        writer = ShardWriter(fb, fi, dtype_for_vocab(vocab_size))
        for seq in sequences:
            writer.add(seq)
        return writer.close()


class ShardReader:
    """Zero-copy reader over one shard: the index and the tokens are ``np.memmap`` views.

    The header, the index size, the pointer chain and the ``.bin`` size are validated on open, so a
    wrong magic, version or dtype, a truncated file, or an index pointing past the end of the ``.bin``
    raises :class:`ShardError` naming the file instead of returning garbage later.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.idx_path, self.bin_path = prefix + ".idx", prefix + ".bin"
        for path in (self.idx_path, self.bin_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"shard file {path} does not exist; was the data prepared into this directory?")
        idx_bytes = os.path.getsize(self.idx_path)
        if idx_bytes < HEADER_BYTES:
            raise ShardError(f"{self.idx_path}: {idx_bytes} bytes is shorter than the {HEADER_BYTES}-byte header (truncated?)")
        with open(self.idx_path, "rb") as f:
            magic, version, code, n, docs_plus_one = _HEADER.unpack(f.read(HEADER_BYTES))
        if magic != MAGIC:
            raise ShardError(f"{self.idx_path}: bad magic {magic!r}, expected {MAGIC!r}; not a Megatron indexed dataset")
        if version != VERSION:
            raise ShardError(f"{self.idx_path}: index version {version}, only version {VERSION} is supported")
        if code not in DTYPE_CODES:
            raise ShardError(f"{self.idx_path}: unknown dtype code {code}; expected one of {sorted(DTYPE_CODES)}")
        if docs_plus_one < 1:
            raise ShardError(f"{self.idx_path}: document count field is 0; it must be documents + 1")
        self.dtype = DTYPE_CODES[code]
        expected = HEADER_BYTES + n * 4 + n * 8 + docs_plus_one * 8
        if idx_bytes != expected:
            raise ShardError(
                f"{self.idx_path}: {idx_bytes} bytes, but a header with {n} sequences and {docs_plus_one - 1} "
                f"documents needs {expected} (truncated or corrupt index)"
            )
        idx = np.memmap(self.idx_path, mode="r", dtype=np.uint8)
        self.sizes = np.frombuffer(idx, dtype="<i4", count=n, offset=HEADER_BYTES)
        self.pointers = np.frombuffer(idx, dtype="<i8", count=n, offset=HEADER_BYTES + 4 * n)
        self.document_indices = np.frombuffer(idx, dtype="<i8", count=docs_plus_one, offset=HEADER_BYTES + 12 * n)
        self._validate_index()
        self.num_tokens = int(self.sizes.sum(dtype=np.int64))
        bin_bytes = os.path.getsize(self.bin_path)
        needed = self.num_tokens * self.dtype.itemsize
        if bin_bytes != needed:
            what = "truncated" if bin_bytes < needed else "has trailing bytes"
            raise ShardError(
                f"{self.bin_path}: {bin_bytes} bytes, but its index {self.idx_path} describes {self.num_tokens} "
                f"tokens = {needed} bytes ({what}); re-run data preparation for this shard"
            )
        # np.memmap refuses empty files; an empty shard is legal (few documents, many shards).
        self._tokens = (
            np.memmap(self.bin_path, mode="r", dtype=self.dtype) if needed else np.zeros(0, dtype=self.dtype)
        )

    def _validate_index(self) -> None:
        sizes, pointers, docs = self.sizes, self.pointers, self.document_indices
        n = len(sizes)
        if n and int(sizes.min()) < 0:
            raise ShardError(f"{self.idx_path}: negative sequence size at sequence {int(np.argmin(sizes))}")
        if n:
            # Sequences are stored back to back: pointer[i] is the byte sum of every earlier sequence.
            expected = np.zeros(n, dtype=np.int64)
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=expected[1:])
            bad = np.flatnonzero(pointers != expected)
            if bad.size:
                i = int(bad[0])
                raise ShardError(
                    f"{self.idx_path}: sequence {i} points to byte {int(pointers[i])}, expected {int(expected[i])} "
                    "(the index does not describe a contiguous .bin)"
                )
        if docs[0] != 0 or docs[-1] != n or (len(docs) > 1 and bool(np.any(np.diff(docs) < 0))):
            raise ShardError(f"{self.idx_path}: document index must rise from 0 to the sequence count {n}")

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self.sizes)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {self.prefix} with {n} sequences")
        i %= n
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._tokens[start : start + int(self.sizes[i])]

    def tokens(self) -> np.ndarray:
        """Every token of the shard in order, as one flat read-only view."""
        return self._tokens


def validate_shard(prefix: str, sha256_bin: str | None = None, sha256_idx: str | None = None) -> ShardReader:
    """Open a shard (structural checks) and, when given, compare both files' sha256 with the expected ones."""
    reader = ShardReader(prefix)
    for path, expected in ((reader.bin_path, sha256_bin), (reader.idx_path, sha256_idx)):
        if expected is not None:
            actual = sha256_file(path)
            if actual != expected:
                raise ShardError(
                    f"{path}: sha256 {actual} does not match the manifest's {expected}; the file changed after "
                    "preparation (copy it again, or re-run data preparation)"
                )
    return reader
