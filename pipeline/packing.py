"""How documents and tokens cross a shuffle: in batches, each batch as two zstd frames (level 1).

An element is a batch of keyed documents (pack_documents) or of token sequences (pack_token_batch), packed as
(index frame, payload frame):

    index frame     the batch's per-document fields, pickled: each document's key (what the step after the
                    shuffle decides on: a dedup key and rank, a document key), the byte length of its payload and,
                    for documents, id, source, derived_id, url and language
    payload frame   the batch's texts (UTF-8) or token bytes, concatenated

The step after the shuffle reads every index frame first (dedup decides which copy of a text stays, the shard
writer orders a shard) and decompresses one payload frame at a time. Pickle, because both frames are written
and read only by this job's own workers (as Beam's own fallback coder does), and it is the fastest way Python
has to serialize lists of strings.

Every kept document crosses the dedup shuffle and every token the write shuffle, so their size is what the
runner holds (the local runner keeps a grouped stage's input in its memory and hands each worker its share)
and what a Dataflow shuffle bills. The per-document fields are compressed too: source paths repeat and keys
are hex, so uncompressed they would outweigh the compressed texts of short documents. One frame per batch:
fewer calls into the compressor than a frame per document, and a frame that sees the repeats across
documents, so it is smaller too. Level 1 because each element is compressed once and decompressed once: a
higher level costs more CPU than the bytes it saves.
"""
from __future__ import annotations

import pickle
import threading

import zstandard

from pipeline.documents import Document

_ZSTD = threading.local()  # zstandard contexts are not thread-safe, and a worker runs bundles in threads


def _zstd():
    if not hasattr(_ZSTD, "compressor"):
        _ZSTD.compressor, _ZSTD.decompressor = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
    return _ZSTD


def _index_frame(fields) -> bytes:
    return _zstd().compressor.compress(pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL))


def _read_index(frame: bytes):
    return pickle.loads(_zstd().decompressor.decompress(frame))


# Bytes (token bytes, or characters of text) a worker may hold in open batches, over all the groups it batches
# for: with many groups each batch is smaller (down to MIN_BATCH_BYTES), so a worker's memory does not grow with
# the number of groups.
OPEN_BATCHES_BYTES = 16 << 20
MAX_BATCH_BYTES, MIN_BATCH_BYTES = 1 << 20, 16 << 10


def batch_limit(groups: int) -> int:
    """Size of one group's batch when ``groups`` groups have a batch open at once."""
    return max(MIN_BATCH_BYTES, min(MAX_BATCH_BYTES, OPEN_BATCHES_BYTES // max(groups, 1)))


Packed = tuple[bytes, bytes]  # (index frame, payload frame)


def pack_documents(keys: list, docs: list[Document]) -> Packed:
    """Documents with one key each (any picklable value, e.g. (dedup key, rank)), as they cross a shuffle."""
    texts = [d.text.encode("utf-8") for d in docs]
    fields = [(d.id, d.source, d.derived_id, d.url, d.language) for d in docs]
    return _index_frame((keys, list(map(len, texts)), fields)), _zstd().compressor.compress(b"".join(texts))


def document_keys(packed: Packed) -> list:
    """The keys of a packed batch of documents, in order, without decompressing its texts."""
    return _read_index(packed[0])[0]


def unpack_documents(packed: Packed) -> list[tuple[object, Document]]:
    """[(key, Document)] of a packed batch, in the order they were packed."""
    keys, lengths, fields = _read_index(packed[0])
    data, out, start = _zstd().decompressor.decompress(packed[1]), [], 0
    for key, n, (doc_id, source, derived_id, url, language) in zip(keys, lengths, fields):
        out.append((key, Document(id=doc_id, text=data[start:start + n].decode("utf-8"), source=source,
                                  derived_id=derived_id, url=url, language=language)))
        start += n
    return out


def packed_size(packed: Packed) -> int:
    """Bytes of a packed batch (documents or tokens) as it crosses a shuffle, without the coder's framing: what
    the group-size metrics add up."""
    return len(packed[0]) + len(packed[1])


def pack_token_batch(items: list[tuple[tuple[str, str], bytes]]) -> Packed:
    """A batch of ((document_key, dedup_key), token bytes) as it crosses the shard shuffle."""
    index = ([k for k, _ in items], [len(b) for _, b in items])
    return _index_frame(index), _zstd().compressor.compress(b"".join(b for _, b in items))


def token_batch_index(packed: Packed) -> tuple[list[tuple[str, str]], list[int]]:
    """(keys, byte length of each document's tokens) of a packed token batch, without decompressing its tokens:
    what the shard writer orders a shard by."""
    return _read_index(packed[0])


def unpack_token_batch(packed: Packed) -> list[tuple[tuple[str, str], bytes]]:
    keys, lengths = _read_index(packed[0])
    data, items, start = _zstd().decompressor.decompress(packed[1]), [], 0
    for key, n in zip(keys, lengths):
        items.append((key, data[start:start + n]))
        start += n
    return items
