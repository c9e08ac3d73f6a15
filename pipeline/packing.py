"""How documents and tokens cross a shuffle: in batches, compressed with zstd (level 1), one frame per batch.

An element is a batch of documents (pack_documents) or of token sequences (pack_token_batch). A batch's texts
share one frame: fewer calls into the compressor than a frame per document, and a frame that sees the repeats
across documents, so it is smaller too.

Every kept document crosses the dedup shuffle and every token the write shuffle, so their size is what the
runner holds (the local runner keeps a grouped stage's input in its memory and hands each worker its share)
and what a Dataflow shuffle bills. Level 1 because each element is compressed once and decompressed once: a
higher level costs more CPU than the bytes it saves. Token ids compress much better in one frame per batch
of documents than one per document, for the same reason.
"""
from __future__ import annotations

import threading

import zstandard

from pipeline.documents import Document

_ZSTD = threading.local()  # zstandard contexts are not thread-safe, and a worker runs bundles in threads


def _zstd():
    if not hasattr(_ZSTD, "compressor"):
        _ZSTD.compressor, _ZSTD.decompressor = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
    return _ZSTD


# Bytes (token bytes, or characters of text) a worker may hold in open batches, over all the groups it batches
# for: with many groups each batch is smaller (down to MIN_BATCH_BYTES), so a worker's memory does not grow with
# the number of groups.
OPEN_BATCHES_BYTES = 16 << 20
MAX_BATCH_BYTES, MIN_BATCH_BYTES = 1 << 20, 16 << 10


def batch_limit(groups: int) -> int:
    """Size of one group's batch when ``groups`` groups have a batch open at once."""
    return max(MIN_BATCH_BYTES, min(MAX_BATCH_BYTES, OPEN_BATCHES_BYTES // max(groups, 1)))


PackedDocuments = tuple[list, list[int], bytes]


def pack_documents(docs: list[Document]) -> PackedDocuments:
    """Documents as they cross a shuffle together: ([(id, source, derived_id, url, language)], the UTF-8 length
    of each text, one zstd frame of all texts)."""
    texts = [d.text.encode("utf-8") for d in docs]
    blob = _zstd().compressor.compress(b"".join(texts))
    return [(d.id, d.source, d.derived_id, d.url, d.language) for d in docs], list(map(len, texts)), blob


def unpack_documents(packed: PackedDocuments) -> list[Document]:
    metas, lengths, blob = packed
    data, docs, start = _zstd().decompressor.decompress(blob), [], 0
    for (doc_id, source, derived_id, url, language), n in zip(metas, lengths):
        docs.append(Document(id=doc_id, text=data[start:start + n].decode("utf-8"), source=source,
                             derived_id=derived_id, url=url, language=language))
        start += n
    return docs


def documents_size(packed: PackedDocuments) -> int:
    """Bytes of packed documents as they cross a shuffle (their strings, 8 per flag and per length, the
    compressed texts, without the coder's framing): what the dedup group-size metric adds up."""
    metas, lengths, blob = packed
    return sum(len(i) + len(s) + 8 + len(u) + len(lang) for i, s, _, u, lang in metas) + 8 * len(lengths) + len(blob)


def pack_token_batch(items: list[tuple[tuple[str, str], bytes]]) -> tuple[list, list[int], bytes]:
    """A batch of ((document_key, dedup_key), token bytes) as it crosses the shard shuffle: the keys, the byte
    length of each document's tokens (both uncompressed, so the shard writer can order a shard without its
    tokens), and all tokens in one zstd frame."""
    blob = _zstd().compressor.compress(b"".join(b for _, b in items))
    return [k for k, _ in items], [len(b) for _, b in items], blob


def token_batch_size(packed: tuple[list, list[int], bytes]) -> int:
    """Bytes of a packed token batch as it crosses a shuffle (its keys, 8 per length, the compressed tokens)."""
    keys, lengths, blob = packed
    return sum(len(a) + len(b) for a, b in keys) + 8 * len(lengths) + len(blob)


def unpack_token_batch(packed: tuple[list, list[int], bytes]) -> list[tuple[tuple[str, str], bytes]]:
    keys, lengths, blob = packed
    data, items, start = _zstd().decompressor.decompress(blob), [], 0
    for key, n in zip(keys, lengths):
        items.append((tuple(key), data[start:start + n]))
        start += n
    return items
