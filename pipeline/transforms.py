"""Beam glue for data preparation: DoFns, a CombineFn and one composite PTransform per logical stage.

The rules themselves live in pure modules (pipeline.documents, pipeline.filters, pipeline.tokenizer,
pipeline.shards); this module only moves elements between them, counts what it drops and writes files
through Beam's ``FileSystems`` (local paths and ``gs://`` alike). ``pipeline.prepare`` wires the stages:

    ReadFiles / ReadHuggingFace   input files or dataset rows -> raw records (kind, source, payload, id)
    ParseRecords                  raw record -> Document | Rejection      (invalid_utf8, malformed_record, ...)
    GopherFilter                  Document -> kept | Rejection             (too_few_words, top_ngram, ...)
    ExactDedup                    global GroupByKey on dedup_key; the smallest (document_key, source) stays
    SampleForTokenizer            bottom-k by hash of document_key, up to a character budget
    TrainTokenizer / GivenTokenizer   -> one tokenizer-info dict (model bytes, vocab size, eos, sha256)
    TokenizeAndAssign             Document -> ((split, shard), compressed batch of ((doc key, dedup key), token bytes))
    WriteShards                   per shard: sort by key, stream through ShardWriter, temp name, rename .idx last
    WriteRejected                 each stage's Rejections -> DIR/rejected/STAGE-SSSSS-of-NNNNN.jsonl.gz
    WriteManifest                 counts + shard stats + tokenizer -> DIR/manifest.json (written last)

Heavy objects (the tokenizer, a Hugging Face dataset) are built in ``setup()`` or once per worker, never
pickled with the DoFn. Hashes use sha256, never Python's ``hash()``, so every worker and every run agrees.

Run it through the entry point:

    python -m pipeline.prepare --input 'data/*.jsonl.gz' --output out/ --direct_num_workers 2
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import threading
import uuid
from typing import BinaryIO, Iterator

import apache_beam as beam
import numpy as np
import zstandard
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipeline import documents, filters
from pipeline.documents import Document, Rejection
from pipeline.filters import FilterConfig
from pipeline.manifest import manifest_json, write_manifest
from pipeline.shards import ShardWriter, dtype_for_vocab

COUNTER_NAMESPACE = "prepare"

# Reasons decided in this module (the others come from pipeline.documents and pipeline.filters).
UNREADABLE_FILE = "unreadable_file"  # a file that cannot be opened, decompressed or parsed as its format
EXACT_DUPLICATE = "exact_duplicate"  # same dedup_key as a document with a smaller (document_key, source)
REASONS: tuple[str, ...] = (UNREADABLE_FILE,) + documents.REASONS + filters.REASONS + (EXACT_DUPLICATE,)

# Raw record kinds produced by the read stage and consumed by ParseRecords.
JSON_LINE, TEXT_FILE, VALUE, READ_ERROR = "json", "text", "value", "error"

FORMATS = ("auto", "jsonl", "parquet", "text")
_COMPRESSION_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd", ".bz2", ".deflate", ".lzma", ".xz")
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_READ_CHUNK = 1 << 20  # bytes per read() when splitting a file into lines
_PARQUET_BATCH_ROWS = 256  # rows decoded at a time; bounds memory for wide text columns
SPLITS = ("train", "val")
TOKENIZER_NAME = "tokenizer.model"
REJECTED_DIR = "rejected"
REJECTED_GZIP_LEVEL = 1


# ----------------------------------------------------------------------------------------------------------
# Pure helpers (tested without a runner)


def input_format(path: str, forced: str = "auto") -> str:
    """jsonl, parquet or text for one input path: ``forced`` unless "auto", else by extension.

    Compression suffixes are looked through ("a.jsonl.zst" is jsonl). Anything unrecognized is read as a
    plain-text document, so a stray binary file becomes a counted rejection (nul_bytes / invalid_utf8).
    """
    if forced != "auto":
        return forced
    name = path.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def iter_lines(f: BinaryIO, chunk_bytes: int = _READ_CHUNK) -> Iterator[bytes]:
    """The lines of a binary stream without their "\\n", as raw bytes (never decoded here).

    Reads fixed-size chunks, so a normal line costs one slice; a line longer than a chunk (a 50 MB
    one-line document) is assembled from its parts once: linear time, memory of that one line. A final
    line without a newline is yielded; the empty string after a trailing newline is not.
    """
    pending: list[bytes] = []  # parts of a line that spans chunks
    while True:
        buf = f.read(chunk_bytes)
        if not buf:
            break
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                if start < len(buf):
                    pending.append(buf[start:])
                break
            if pending:
                pending.append(buf[start:end])
                yield b"".join(pending)
                pending = []
            else:
                yield buf[start:end]
            start = end + 1
    if pending:
        yield b"".join(pending)


def hash_unit(key: str, salt: str) -> float:
    """A stable number in [0, 1) from sha256(salt, key): the same on every worker, run and machine."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_shard(key: str, val_fraction: float, train_shards: int, val_shards: int) -> tuple[str, int]:
    """(split, shard index) of a document from its document_key alone.

    The split is a hash predicate (val iff a salted hash falls below ``val_fraction``); the shard is an
    independent salted hash modulo the split's shard count. Independent salts keep the val split from
    favouring any train shard.
    """
    if val_fraction > 0 and hash_unit(key, "split") < val_fraction:
        return "val", int(hash_unit(key, "val-shard") * val_shards)
    return "train", int(hash_unit(key, "train-shard") * train_shards)


def shard_path(split: str, index: int, count: int) -> str:
    """Shard prefix relative to the output directory, e.g. "train/shard-00000-of-00008"."""
    return f"{split}/shard-{index:05d}-of-{count:05d}"


def rejected_line(r: Rejection) -> str:
    """One JSON line of rejected/*.jsonl.gz, always encodable as UTF-8 (odd file names included)."""
    line = json.dumps(documents.to_rejection_record(r), ensure_ascii=False)
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


def _write_bytes(path: str, data: bytes) -> None:
    """Write a small file through FileSystems under a temporary name, then rename it into place."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


def _join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts)


def _in_global_window(value):
    """An output of DoFn.finish_bundle, which must carry its window: this pipeline is batch, one global window.
    A TaggedOutput keeps its tag, with its value windowed."""
    if isinstance(value, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(value.tag, _in_global_window(value.value))
    return WindowedValue(value, GlobalWindow().max_timestamp(), [GlobalWindow()])


# ----------------------------------------------------------------------------------------------------------
# Read: files and dataset rows -> raw records (kind, source, payload, id)


class _ReadFileFn(beam.DoFn):
    """One input file -> raw records. A file that cannot be read yields one READ_ERROR record, never raises."""

    def __init__(self, fmt: str, text_field: str, id_field: str):
        self.fmt, self.text_field, self.id_field = fmt, text_field, id_field
        self.files = Metrics.counter(COUNTER_NAMESPACE, "files")

    def process(self, path: str):
        self.files.inc()
        kind = input_format(path, self.fmt)
        if kind == "parquet":
            yield from self._parquet(path)
            return
        lineno = 0
        try:
            # Compression comes from the extension (.gz, .zst, ...). Bytes are never decoded here: invalid
            # UTF-8 must reach ParseRecords and become a counted rejection.
            with FileSystems.open(path) as f:
                if kind == "text":
                    # read() of a compressed stream returns at most one buffer: loop to the end.
                    yield TEXT_FILE, path, b"".join(iter(lambda: f.read(_READ_CHUNK), b"")), None
                    return
                for lineno, line in enumerate(iter_lines(f), start=1):
                    yield JSON_LINE, f"{path}:{lineno}", line, None
        except Exception as e:  # noqa: BLE001 -- decompressors raise zlib.error, EOFError, ZstdError, OSError...
            where = f"{path}:{lineno + 1}" if lineno else path
            yield READ_ERROR, where, f"cannot read {path} as {kind}: {type(e).__name__}: {e}", None

    def _parquet(self, path: str):
        import pyarrow.parquet as pq  # only workers that read Parquet pay for the import

        row = 0
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                if self.text_field not in names:
                    yield READ_ERROR, path, f"{path} has no column {self.text_field!r} (columns: {names}); " \
                                            "set --text-field", None
                    return
                columns = [self.text_field] + ([self.id_field] if self.id_field in names else [])
                for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
                    texts = batch.column(0).to_pylist()
                    ids = batch.column(1).to_pylist() if len(columns) == 2 else [None] * len(texts)
                    for text, doc_id in zip(texts, ids):
                        yield VALUE, f"{path}:{row}", text, doc_id
                        row += 1
        except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid, OSError, ... on corrupt files
            yield READ_ERROR, f"{path}:{row}", f"cannot read {path} as parquet: {type(e).__name__}: {e}", None


class ReadFiles(beam.PTransform):
    """PBegin -> raw records from a list of file paths (JSONL lines, Parquet rows, whole .txt files).

    Parallelism is per file: the paths are reshuffled so workers share them; one file is read start to
    end by one worker, which keeps line numbers (and so derived ids) exact.
    """

    def __init__(self, paths: list[str], fmt: str = "auto", text_field: str = "text", id_field: str = "id"):
        super().__init__()
        self.paths, self.fmt, self.text_field, self.id_field = sorted(paths), fmt, text_field, id_field

    def expand(self, pbegin):
        return (
            pbegin
            | "Paths" >> beam.Create(self.paths)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFile" >> beam.ParDo(_ReadFileFn(self.fmt, self.text_field, self.id_field))
        )


def load_hf_dataset(name_or_path: str, split: str):
    """A Hugging Face dataset split: ``load_from_disk`` for a saved directory, else ``load_dataset``."""
    import datasets  # heavy; only runs that use --hf-dataset import it

    if os.path.isdir(name_or_path):
        ds = datasets.load_from_disk(name_or_path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"--hf-split {split!r}: {name_or_path} has splits {sorted(ds)}; pick one of them")
            ds = ds[split]
        return ds
    return datasets.load_dataset(name_or_path, split=split)


class _ReadHFRowsFn(beam.DoFn):
    """A row range [start, end) of a dataset -> VALUE records. The dataset is opened (memory-mapped) once per worker."""

    def __init__(self, name: str, split: str, text_field: str, id_field: str):
        self.name, self.split, self.text_field, self.id_field = name, split, text_field, id_field
        self._ds = None

    def setup(self):
        ds = load_hf_dataset(self.name, self.split)
        self._has_id = self.id_field in ds.column_names
        self._ds = ds.select_columns([self.text_field] + ([self.id_field] if self._has_id else []))

    def process(self, row_range: tuple[int, int]):
        start, end = row_range
        batch = self._ds[start:end]
        texts = batch[self.text_field]
        ids = batch[self.id_field] if self._has_id else [None] * len(texts)
        for i, (text, doc_id) in enumerate(zip(texts, ids)):
            yield VALUE, f"hf:{self.name}:{self.split}:{start + i}", text, doc_id


class ReadHuggingFace(beam.PTransform):
    """PBegin -> raw records from a Hugging Face dataset split (local use: every worker opens the dataset)."""

    def __init__(self, name: str, split: str, num_rows: int, text_field: str = "text", id_field: str = "id",
                 rows_per_range: int = 1000):
        super().__init__()
        self.name, self.split, self.num_rows = name, split, num_rows
        self.text_field, self.id_field, self.rows_per_range = text_field, id_field, rows_per_range

    def expand(self, pbegin):
        ranges = [(s, min(s + self.rows_per_range, self.num_rows)) for s in range(0, self.num_rows, self.rows_per_range)]
        return (
            pbegin
            | "RowRanges" >> beam.Create(ranges)
            | "SpreadRanges" >> beam.Reshuffle()
            | "ReadRows" >> beam.ParDo(_ReadHFRowsFn(self.name, self.split, self.text_field, self.id_field))
        )


# ----------------------------------------------------------------------------------------------------------
# Parse and filter


class _ParseFn(beam.DoFn):
    def __init__(self, text_field: str, id_field: str):
        self.text_field, self.id_field = text_field, id_field
        self.read = Metrics.counter(COUNTER_NAMESPACE, "read")

    def process(self, record):
        kind, source, payload, doc_id = record
        self.read.inc()
        if kind == JSON_LINE:
            out = documents.parse_json_line(payload, source, self.text_field, self.id_field)
        elif kind == TEXT_FILE:
            out = documents.parse_text_file(payload, source)
        elif kind == VALUE:
            out = documents.parse_value(payload, doc_id, source)
        else:
            assert kind == READ_ERROR, f"unknown raw record kind {kind!r} from the read stage"
            out = Rejection(id=source, source=source, reason=UNREADABLE_FILE, text=payload)
        if isinstance(out, Rejection):
            yield beam.pvalue.TaggedOutput("rejected", out)
        else:
            yield out


class ParseRecords(beam.PTransform):
    """raw records -> (Documents, Rejections). Every raw record becomes exactly one of the two."""

    def __init__(self, text_field: str = "text", id_field: str = "id"):
        super().__init__()
        self.text_field, self.id_field = text_field, id_field

    def expand(self, records):
        out = records | "Parse" >> beam.ParDo(_ParseFn(self.text_field, self.id_field)).with_outputs(
            "rejected", main="documents")
        return out.documents, out.rejected


class _FilterFn(beam.DoFn):
    """Documents -> kept Documents | tagged Rejections, judged in batches of about ``batch_chars`` characters.

    filters.reject_reasons runs the rules over a whole batch with numpy (1.7x less CPU than one document at a
    time on the benchmark corpus, same reason for every document); a worker holds at most one open batch.
    """

    def __init__(self, cfg: FilterConfig, batch_chars: int = filters.BATCH_CHARS):
        self.cfg, self.batch_chars = cfg, batch_chars

    def start_bundle(self):
        self._docs, self._chars = [], 0

    def process(self, doc: Document):
        self._docs.append(doc)
        self._chars += len(doc.text)
        if self._chars >= self.batch_chars:
            yield from self._judge()

    def finish_bundle(self):
        yield from map(_in_global_window, self._judge())

    def _judge(self):
        docs, self._docs, self._chars = self._docs, [], 0
        for doc, reason in zip(docs, filters.reject_reasons([d.text for d in docs], self.cfg)):
            if reason is None:
                yield doc
            else:
                yield beam.pvalue.TaggedOutput("rejected", documents.rejection_for(doc, reason))


class GopherFilter(beam.PTransform):
    """Documents -> (kept Documents, Rejections named by the first failing Gopher rule)."""

    def __init__(self, cfg: FilterConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, docs):
        out = docs | "Rules" >> beam.ParDo(_FilterFn(self.cfg)).with_outputs("rejected", main="kept")
        return out.kept, out.rejected


# ----------------------------------------------------------------------------------------------------------
# Exact dedup across the whole corpus


_ZSTD = threading.local()  # zstandard contexts are not thread-safe, and a worker runs bundles in threads


def _zstd():
    if not hasattr(_ZSTD, "compressor"):
        _ZSTD.compressor, _ZSTD.decompressor = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
    return _ZSTD


def pack_document(doc: Document) -> tuple[str, str, bool, bytes]:
    """A Document as it crosses the dedup shuffle, its text zstd-compressed (level 1).

    Every kept document passes through that shuffle, so its size is what the runner holds (the local runner
    keeps it in memory and streams each worker its share, see pipeline.local_runner) and what a Dataflow
    shuffle bills.
    Measured on docstrings: 1.8x smaller, ~8 ms per MB of text to compress and ~4 ms to decompress.
    """
    return doc.id, doc.source, doc.derived_id, _zstd().compressor.compress(doc.text.encode("utf-8"))


def unpack_document(packed: tuple[str, str, bool, bytes]) -> Document:
    doc_id, source, derived_id, text = packed
    return Document(id=doc_id, text=_zstd().decompressor.decompress(text).decode("utf-8"), source=source,
                    derived_id=derived_id)


def pack_token_batch(items: list[tuple[tuple[str, str], bytes]]) -> tuple[list, list[int], bytes]:
    """A batch of ((document_key, dedup_key), token bytes) as it crosses the shard shuffle: the keys, the byte
    length of each document's tokens, and all tokens in one zstd frame (level 1). One frame per ~1 MB batch
    compresses token ids 2.8x on docstrings (one frame per document: 1.35x) for ~2.4 ms per MB."""
    blob = _zstd().compressor.compress(b"".join(b for _, b in items))
    return [k for k, _ in items], [len(b) for _, b in items], blob


def unpack_token_batch(packed: tuple[list, list[int], bytes]) -> list[tuple[tuple[str, str], bytes]]:
    keys, lengths, blob = packed
    data, items, start = _zstd().decompressor.decompress(blob), [], 0
    for key, n in zip(keys, lengths):
        items.append((tuple(key), data[start:start + n]))
        start += n
    return items


class _PickRepresentativeFn(beam.DoFn):
    """(dedup_key, packed docs) -> the doc with the smallest (document_key, source); the rest are exact_duplicate.

    Streams over the group keeping one candidate, so a key shared by many copies costs one document of
    worker memory beyond what the runner groups.
    """

    def process(self, element):
        dkey, packed_docs = element
        best, best_rank = None, None
        for doc in map(unpack_document, packed_docs):
            rank = (documents.document_key(doc), doc.source)
            if best is None or rank < best_rank:
                if best is not None:
                    yield beam.pvalue.TaggedOutput("rejected", documents.rejection_for(best, EXACT_DUPLICATE))
                best, best_rank = doc, rank
            else:
                yield beam.pvalue.TaggedOutput("rejected", documents.rejection_for(doc, EXACT_DUPLICATE))
        yield dkey, best


class ExactDedup(beam.PTransform):
    """Documents -> ((dedup_key, Document) for one document per dedup_key, Rejections for the others)."""

    def expand(self, docs):
        out = (
            docs
            | "KeyByContent" >> beam.Map(lambda d: (documents.dedup_key(d.text), pack_document(d)))
            | "GroupByContent" >> beam.GroupByKey()
            | "PickRepresentative" >> beam.ParDo(_PickRepresentativeFn()).with_outputs("rejected", main="unique")
        )
        return out.unique, out.rejected


# ----------------------------------------------------------------------------------------------------------
# Tokenizer: deterministic sample -> training (or a given model) -> one info dict


def _trim_sample(items: list, budget_chars: int) -> tuple[list, int]:
    """Sorted prefix of (hash, text) pairs: keep each item while the characters before it are < budget."""
    items.sort()
    kept, total = [], 0
    for item in items:
        if total >= budget_chars:
            break
        kept.append(item)
        total += len(item[1])
    return kept, total


class BottomKByHashFn(beam.CombineFn):
    """The documents with the smallest hashes until ``budget_chars`` characters: a sample that does not
    depend on how the runner splits the input (the global prefix is contained in every partial prefix).
    Accumulators hold at most ~2x the budget of text."""

    def __init__(self, budget_chars: int):
        self.budget = budget_chars

    def create_accumulator(self):
        return [], 0

    def add_input(self, acc, item):
        items, total = acc
        items.append(item)
        total += len(item[1])
        if total > 2 * self.budget:
            items, total = _trim_sample(items, self.budget)
        return items, total

    def merge_accumulators(self, accumulators):
        merged = [item for items, _ in accumulators for item in items]
        return _trim_sample(merged, self.budget)

    def extract_output(self, acc):
        return _trim_sample(list(acc[0]), self.budget)[0]


class SampleForTokenizer(beam.PTransform):
    """(dedup_key, Document) -> one list of (hash, text), sorted by hash, of about ``budget_chars`` characters."""

    def __init__(self, budget_chars: int):
        super().__init__()
        self.budget = budget_chars

    def expand(self, unique):
        return (
            unique
            | "HashKey" >> beam.Map(lambda kv: (hash_unit(documents.document_key(kv[1]), "tokenizer-sample"), kv[1].text))
            | "BottomK" >> beam.CombineGlobally(BottomKByHashFn(self.budget))
        )


def tokenizer_info(model_bytes: bytes, trained: bool, sample_chars: int = 0) -> dict:
    """The tokenizer-info dict passed between stages (model bytes included) and summarized in the manifest."""
    from pipeline.tokenizer import Tokenizer

    tok = Tokenizer.from_bytes(model_bytes, TOKENIZER_NAME)
    return {
        "model": model_bytes,
        "vocab_size": int(tok.vocab_size),
        "eos_id": int(tok.eos_id),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "trained": trained,
        "sample_chars": sample_chars,
    }


class _TrainTokenizerFn(beam.DoFn):
    def __init__(self, vocab_size: int, output_dir: str):
        self.vocab_size, self.output_dir = vocab_size, output_dir

    def process(self, sample):
        from pipeline.tokenizer import train_tokenizer_bytes

        if not sample:
            raise ValueError(
                "no document survived parsing, filtering and dedup, so there is nothing to train a tokenizer on; "
                f"see {_join(self.output_dir, REJECTED_DIR)}/ for why each record was dropped, and loosen the "
                "filter options (e.g. --min-words) or check --input / --text-field"
            )
        # The sample arrives sorted by hash: the trainer sees the same sentences in the same order on every
        # run and worker count, so the model file is byte-identical.
        model = train_tokenizer_bytes((text for _, text in sample), self.vocab_size)
        _write_bytes(_join(self.output_dir, TOKENIZER_NAME), model)
        yield tokenizer_info(model, trained=True, sample_chars=sum(len(t) for _, t in sample))


class TrainTokenizer(beam.PTransform):
    """(dedup_key, Document) -> [tokenizer info]: trains on a hash sample and writes DIR/tokenizer.model."""

    def __init__(self, vocab_size: int, sample_chars: int, output_dir: str):
        super().__init__()
        self.vocab_size, self.sample_chars, self.output_dir = vocab_size, sample_chars, output_dir

    def expand(self, unique):
        return (
            unique
            | "Sample" >> SampleForTokenizer(self.sample_chars)
            | "Train" >> beam.ParDo(_TrainTokenizerFn(self.vocab_size, self.output_dir))
        )


class _CopyTokenizerFn(beam.DoFn):
    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, info):
        _write_bytes(_join(self.output_dir, TOKENIZER_NAME), info["model"])
        yield info


class GivenTokenizer(beam.PTransform):
    """PBegin -> [tokenizer info] for an existing model (--tokenizer PATH), copied to DIR/tokenizer.model."""

    def __init__(self, info: dict, output_dir: str):
        super().__init__()
        self.info, self.output_dir = info, output_dir

    def expand(self, pbegin):
        return pbegin | "Model" >> beam.Create([self.info]) | "Copy" >> beam.ParDo(_CopyTokenizerFn(self.output_dir))


# ----------------------------------------------------------------------------------------------------------
# Tokenize, assign split and shard, write shards


# Token bytes a tokenizing worker may hold in open batches, over all shards: with many shards each batch is
# smaller (down to MIN_TOKEN_BATCH_BYTES), so the open batches of 64 shards took 64 MB of a worker before.
OPEN_BATCHES_BYTES = 16 << 20
MAX_TOKEN_BATCH_BYTES, MIN_TOKEN_BATCH_BYTES = 1 << 20, 16 << 10


def token_batch_bytes(shards: int) -> int:
    """Size of one shard's batch of token bytes when ``shards`` shards (train + val) are open at once."""
    return max(MIN_TOKEN_BATCH_BYTES, min(MAX_TOKEN_BATCH_BYTES, OPEN_BATCHES_BYTES // max(shards, 1)))


class _TokenizeFn(beam.DoFn):
    """(dedup_key, Document) -> ((split, shard), packed batch of ((document_key, dedup_key), token bytes)).

    Tokens travel as raw bytes in the shard dtype (uint16 for vocabularies < 65500): half the size of the
    UTF-8 text for typical English, and exactly what ShardWriter writes. Documents leave in batches per shard
    of about ``batch_bytes`` token bytes, compressed (pack_token_batch): the shard grouping then handles one
    element per batch instead of one per document (the local runner does that grouping in its launching
    process, serially) and 2.8x fewer bytes, and a worker holds at most one open batch per shard.
    """

    def __init__(self, val_fraction: float, train_shards: int, val_shards: int, batch_bytes: int):
        self.val_fraction, self.train_shards, self.val_shards = val_fraction, train_shards, val_shards
        self.batch_bytes = batch_bytes
        self.kept = Metrics.counter(COUNTER_NAMESPACE, "kept")
        self.tokens = Metrics.counter(COUNTER_NAMESPACE, "tokens")
        self._tok, self._sha, self._dtype = None, None, None

    def _tokenizer(self, info: dict):
        # The model arrives as a side input (it may have been trained in this very run); build it once
        # per DoFn instance, not per element.
        if self._sha != info["sha256"]:
            from pipeline.tokenizer import Tokenizer

            self._tok, self._sha = Tokenizer.from_bytes(info["model"], TOKENIZER_NAME), info["sha256"]
            self._dtype = dtype_for_vocab(info["vocab_size"])
        return self._tok

    def start_bundle(self):
        self._batches: dict[tuple[str, int], tuple[list, int]] = {}  # shard -> (items, token bytes)

    def process(self, element, info):
        dkey, doc = element
        tok = self._tokenizer(info)
        key = documents.document_key(doc)
        shard = assign_shard(key, self.val_fraction, self.train_shards, self.val_shards)
        ids = tok.encode_document(doc.text)
        self.kept.inc()
        self.tokens.inc(len(ids))
        token_bytes = ids.astype(self._dtype).tobytes()
        items, size = self._batches.get(shard, ([], 0))
        items.append(((key, dkey), token_bytes))
        size += len(token_bytes)
        if size >= self.batch_bytes:
            self._batches.pop(shard, None)
            yield shard, pack_token_batch(items)
        else:
            self._batches[shard] = (items, size)

    def finish_bundle(self):
        for shard, (items, _) in sorted(self._batches.items()):
            yield _in_global_window((shard, pack_token_batch(items)))
        self._batches = {}


class TokenizeAndAssign(beam.PTransform):
    """(dedup_key, Document) -> shard-keyed batches of token bytes; the tokenizer info is a singleton side input.
    ``batch_bytes`` defaults to token_batch_bytes(train_shards + val_shards)."""

    def __init__(self, tokenizer, val_fraction: float, train_shards: int, val_shards: int,
                 batch_bytes: int | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self.batch_bytes = batch_bytes or token_batch_bytes(train_shards + val_shards)
        self.val_fraction, self.train_shards, self.val_shards = val_fraction, train_shards, val_shards

    def expand(self, unique):
        fn = _TokenizeFn(self.val_fraction, self.train_shards, self.val_shards, self.batch_bytes)
        return unique | "Encode" >> beam.ParDo(fn, beam.pvalue.AsSingleton(self.tokenizer))


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
        assert a[0] != c[0], f"two kept documents share the sort key {a[0]}; dedup should have removed one"
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
    prefix = _join(output_dir, *rel.split("/"))
    tag = uuid.uuid4().hex  # a retried or speculative attempt never writes into another's temp file
    tmp_bin, tmp_idx = f"{prefix}.bin.tmp-{tag}", f"{prefix}.idx.tmp-{tag}"
    try:
        with FileSystems.create(tmp_bin, compression_type=CompressionTypes.UNCOMPRESSED) as fb, \
                FileSystems.create(tmp_idx, compression_type=CompressionTypes.UNCOMPRESSED) as fi:
            writer = ShardWriter(fb, fi, dtype)
            for token_bytes in sequences:
                writer.add(np.frombuffer(token_bytes, dtype=dtype))
            stats = writer.close()
        FileSystems.rename([tmp_bin], [prefix + ".bin"])
        FileSystems.rename([tmp_idx], [prefix + ".idx"])
    finally:
        leftovers = [p for p in (tmp_bin, tmp_idx) if FileSystems.exists(p)]
        if leftovers:
            FileSystems.delete(leftovers)
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


# ----------------------------------------------------------------------------------------------------------
# Rejected records and the manifest


class _FormatRejectedFn(beam.DoFn):
    """Rejections -> gzip members of ~1 MB of JSON lines each, counting each reason.

    Blocks, not one element per line: a text sink compresses every write it gets, and one write per rejected
    record cost ~2.5 s of CPU per 100 MB of corpus. Each block is compressed here, as one complete gzip member
    at level 1 (REJECTED_GZIP_LEVEL), and the sink writes the bytes as they are: a file of concatenated members
    is one valid gzip stream (RFC 1952; gzip, zcat and Python's gzip read it whole), and level 1 costs about a
    third of the sink's fixed level 6 for ~25% larger files. A JSON line never holds a raw newline, so a block
    is a run of whole lines; the order of lines in a file depended on bundling anyway.
    """

    def __init__(self, block_chars: int = 1 << 20):
        self.block_chars = block_chars
        self._counters = {}

    def start_bundle(self):
        self._lines, self._chars = [], 0

    def process(self, r: Rejection):
        counter = self._counters.get(r.reason)
        if counter is None:
            counter = self._counters[r.reason] = Metrics.counter(COUNTER_NAMESPACE, f"rejected_{r.reason}")
        counter.inc()
        line = rejected_line(r)
        self._lines.append(line)
        self._chars += len(line)
        if self._chars >= self.block_chars:
            yield self._block()

    def finish_bundle(self):
        if self._lines:
            yield _in_global_window(self._block())

    def _block(self) -> bytes:
        block = "\n".join(self._lines) + "\n"
        self._lines, self._chars = [], 0
        return gzip_member(block.encode("utf-8"))


def gzip_member(data: bytes) -> bytes:
    """``data`` as one complete gzip member (level REJECTED_GZIP_LEVEL, mtime 0 so equal input gives equal bytes)."""
    return gzip.compress(data, compresslevel=REJECTED_GZIP_LEVEL, mtime=0)


class WriteRejected(beam.PTransform):
    """Rejections -> DIR/rejected/STAGE-SSSSS-of-NNNNN.jsonl.gz; returns the written file names.

    One instance per stage that drops records (parse, quality, dedup), applied to that stage's output with
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
        return (
            rejected
            | "CountAndFormat" >> beam.ParDo(_FormatRejectedFn())
            | "Write" >> beam.io.WriteToText(
                _join(self.output_dir, REJECTED_DIR, self.stage),
                file_name_suffix=".jsonl.gz",
                append_trailing_newlines=False,
                num_shards=self.num_files,
                shard_name_template="-SSSSS-of-NNNNN",
                coder=beam.coders.BytesCoder(),
                compression_type=CompressionTypes.UNCOMPRESSED,  # the blocks are gzip members already
                footer=gzip_member(b""),
            )
        )


class CountRejected(beam.PTransform):
    """Rejections -> (reason, count) pairs; combined where the records are (only the counts move)."""

    def expand(self, rejected):
        return rejected | "Reason" >> beam.Map(lambda r: r.reason) | "PerReason" >> beam.combiners.Count.PerElement()


def build_manifest(read: int, rejected: dict[str, int], shard_stats: list[dict], info: dict, config: dict,
                   rejected_files: list[str] = ()) -> dict:
    """The manifest.json content from the pipeline's totals (pure; the invariant read == kept + rejected is checked)."""
    shards = sorted(shard_stats, key=lambda s: (SPLITS.index(s["split"]), s["path"]))
    kept = sum(s["documents"] for s in shards)
    counts = {reason: 0 for reason in REASONS}
    counts.update(rejected)
    assert read == kept + sum(counts.values()), (
        f"records read ({read}) != kept ({kept}) + rejected ({sum(counts.values())}): a stage lost or duplicated records"
    )
    return {
        "documents": {"read": read, "kept": kept, "rejected": counts},
        "tokens": {split: sum(s["tokens"] for s in shards if s["split"] == split) for split in SPLITS},
        "tokenizer": {
            "path": TOKENIZER_NAME,
            "vocab_size": info["vocab_size"],
            "eos_id": info["eos_id"],
            "sha256": info["sha256"],
            "trained": info["trained"],
            "sample_chars": info["sample_chars"],
        },
        "shards": shards,
        "rejected_files": [f"{REJECTED_DIR}/{os.path.basename(p)}" for p in sorted(rejected_files)],
        "config": config,
    }


class _WriteManifestFn(beam.DoFn):
    def __init__(self, output_dir: str, config: dict):
        self.output_dir, self.config = output_dir, config

    def process(self, _, read, rejected, shard_stats, info, rejected_files):
        manifest = build_manifest(read, dict(rejected), list(shard_stats), info, self.config, list(rejected_files))
        if "://" in self.output_dir:
            _write_bytes(_join(self.output_dir, "manifest.json"), manifest_json(manifest).encode("utf-8"))
        else:
            write_manifest(self.output_dir, manifest)
        yield manifest


class WriteManifest(beam.PTransform):
    """PBegin -> [manifest]: runs after every shard, the tokenizer and the rejected files are in place.

    ``reason_counts`` are (reason, count) pairs (CountRejected of each dropping stage, flattened: a reason may
    appear more than once); ``rejected_files`` the names returned by every WriteRejected.
    """

    def __init__(self, output_dir: str, config: dict, records, reason_counts, shard_stats, tokenizer, rejected_files):
        super().__init__()
        self.output_dir, self.config = output_dir, config
        self.records, self.reason_counts, self.shard_stats = records, reason_counts, shard_stats
        self.tokenizer, self.rejected_files = tokenizer, rejected_files

    def expand(self, pbegin):
        read = self.records | "CountRead" >> beam.combiners.Count.Globally()
        per_reason = self.reason_counts | "SumPerReason" >> beam.CombinePerKey(sum)
        AsList, AsDict, AsSingleton = beam.pvalue.AsList, beam.pvalue.AsDict, beam.pvalue.AsSingleton
        return (
            pbegin
            | "Once" >> beam.Create([None])
            | "Write" >> beam.ParDo(
                _WriteManifestFn(self.output_dir, self.config),
                AsSingleton(read), AsDict(per_reason), AsList(self.shard_stats), AsSingleton(self.tokenizer),
                AsList(self.rejected_files),
            )
        )
