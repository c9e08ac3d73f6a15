"""Read stages: input files and dataset rows -> raw records ``(kind, source, payload, id, url)``.

A raw record is what ParseRecords (pipeline.filter_stage) turns into a Document or a Rejection:

    JSON_LINE   one line of a JSONL file, undecoded bytes         source "path:lineno"
    TEXT_FILE   a whole plain-text file, undecoded bytes          source "path"
    VALUE       a Parquet cell or a dataset row's text (str),     source "path:row" or "hf:name:split:row";
                or a WET conversion record's block (bytes)        source "path:record"; id and url: its URI
    READ_ERROR  a file that could not be read: the error message  (becomes an unreadable_file rejection)

``id`` is the record's id when the reader has one (a Parquet or dataset id column, a WET record's URI), else
None; ``url`` the page URL likewise (the --url-field column of Parquet and datasets, a WET record's URI). A JSONL
line carries both inside its undecoded bytes: ParseRecords takes them from the --id-field and --url-field keys.

Bytes are never decoded here, so invalid UTF-8 reaches ParseRecords and becomes a counted rejection; a file
that cannot be read never fails the run (a WET file damaged part way gives its records up to the damage, then a
READ_ERROR naming the WARC record: pipeline.wet). Files go through Beam's FileSystems (local paths and ``gs://``),
compression by extension; gzip is undone by ISA-L's igzip (open_input), the other compressions by FileSystems.

With a ``progress_dir`` (local runs), each DoFn also reports its progress through pipeline.progress: stage
"read", counting files read to the end with their sizes on disk, or dataset rows.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import BinaryIO, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from isal import igzip

from pipeline import wet
from pipeline.counters import COUNTER_NAMESPACE
from pipeline.progress import READ
from pipeline.progress_dofn import ReportingDoFn

JSON_LINE, TEXT_FILE, VALUE, READ_ERROR = "json", "text", "value", "error"
RAW_KINDS = (JSON_LINE, TEXT_FILE, VALUE, READ_ERROR)

_COMPRESSION_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd", ".bz2", ".deflate", ".lzma", ".xz")
_GZIP_SUFFIXES = (".gz", ".gzip")
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_READ_CHUNK = 1 << 20  # bytes per read() when splitting a file into lines
_PARQUET_BATCH_ROWS = 256  # rows decoded at a time; bounds memory for wide text columns


def input_format(path: str, forced: str = "auto") -> str:
    """jsonl, parquet, wet or text for one input path: ``forced`` unless "auto", else by extension.

    Compression suffixes are looked through ("a.jsonl.zst" is jsonl, "a.warc.wet.gz" wet). WARC files (.warc,
    .warc.gz) are wet too, so that one holding HTML responses is reported (pipeline.wet) rather than read as one
    text document. Anything unrecognized is read as a plain-text document, so a stray binary file becomes a
    counted rejection (nul_bytes / invalid_utf8).
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
    if name.endswith(wet.WET_SUFFIXES + wet.WARC_SUFFIXES):
        return "wet"
    return "text"


@contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """An input file's bytes, decompressed by its extension. gzip (.gz, .gzip; several members read as one
    stream) is undone here by ISA-L's igzip, which reads gzip faster than zlib, from the file as FileSystems
    stores it; the other compressions by FileSystems itself."""
    if path.lower().endswith(_GZIP_SUFFIXES):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            with igzip.IGzipFile(fileobj=raw, mode="rb") as f:
                yield f
    else:
        with FileSystems.open(path) as f:
            yield f


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


def _columns(names: list[str], text_field: str, id_field: str, url_field: str) -> list[str]:
    """The columns to read: the text, then the id and url columns that exist, each once."""
    return list(dict.fromkeys([text_field] + [c for c in (id_field, url_field) if c in names]))


class _ReadFileFn(ReportingDoFn):
    """One input file -> raw records. A file that cannot be read yields one READ_ERROR record, never raises.

    ``sizes`` (path -> bytes on disk) is what a file adds to the progress "bytes" once it has been read to the
    end (a path missing from it adds 0); only used with a ``progress_dir``. ``url_field``: the Parquet column of
    the page URL, read when the file has it.
    """

    def __init__(self, fmt: str, text_field: str, id_field: str, sizes: dict[str, int] | None = None,
                 progress_dir: str | None = None, url_field: str = "url"):
        super().__init__(progress_dir)
        self.fmt, self.text_field, self.id_field, self.url_field = fmt, text_field, id_field, url_field
        self.sizes = sizes or {}
        self.files = Metrics.counter(COUNTER_NAMESPACE, "files")

    def process(self, path: str):
        self.files.inc()
        self._progress.add(READ)
        yield from self._records(path)
        self._progress.add(READ, files=1, bytes=self.sizes.get(path, 0))

    def _records(self, path: str):
        kind = input_format(path, self.fmt)
        if kind == "parquet":
            yield from self._parquet(path)
            return
        if kind == "wet":
            yield from self._wet(path)
            return
        lineno = 0
        try:
            # Compression comes from the extension (.gz, .zst, ...). Bytes are never decoded here: invalid
            # UTF-8 must reach ParseRecords and become a counted rejection.
            with open_input(path) as f:
                if kind == "text":
                    # read() of a compressed stream returns at most one buffer: loop to the end.
                    yield TEXT_FILE, path, b"".join(iter(lambda: f.read(_READ_CHUNK), b"")), None, None
                    return
                for lineno, line in enumerate(iter_lines(f), start=1):
                    yield JSON_LINE, f"{path}:{lineno}", line, None, None
        except Exception as e:  # noqa: BLE001 -- decompressors raise zlib.error, EOFError, ZstdError, OSError...
            where = f"{path}:{lineno + 1}" if lineno else path
            yield READ_ERROR, where, f"cannot read {path} as {kind}: {type(e).__name__}: {e}", None, None

    def _wet(self, path: str):
        """VALUE records of a WET file's conversion records: the block's bytes, the URI as id and url, and
        "path:record" (the WARC record number) as source, so that a document names the file, and so the crawl, it
        came from (--near-dedup-by input groups by it). A record without a URI gets "path:record" as id too.

        gzip is opened as stored and decompressed by pipeline.wet, which checks every member; other compressions
        (.zst, ...) are undone by FileSystems from the extension."""
        compression = CompressionTypes.UNCOMPRESSED if path.lower().endswith(_GZIP_SUFFIXES) else CompressionTypes.AUTO
        try:
            with FileSystems.open(path, compression_type=compression) as f:
                for number, uri, block in wet.conversion_records(f):
                    yield VALUE, f"{path}:{number}", block, uri or None, uri or None
        except wet.WetError as e:
            where = f"{path}:{e.record}" if e.record else path
            yield READ_ERROR, where, f"cannot read {path} as wet: {e}", None, None
        except Exception as e:  # noqa: BLE001 -- opening: FileNotFoundError, OSError, gcsio errors...
            yield READ_ERROR, path, f"cannot read {path} as wet: {type(e).__name__}: {e}", None, None

    def _parquet(self, path: str):
        import pyarrow.parquet as pq  # only workers that read Parquet pay for the import

        row = 0
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                if self.text_field not in names:
                    yield READ_ERROR, path, f"{path} has no column {self.text_field!r} (columns: {names}); " \
                                            "set --text-field", None, None
                    return
                columns = _columns(names, self.text_field, self.id_field, self.url_field)
                for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
                    values = dict(zip(columns, (c.to_pylist() for c in batch.columns)))
                    texts = values[self.text_field]
                    ids = values.get(self.id_field, [None] * len(texts))
                    urls = values.get(self.url_field, [None] * len(texts))
                    for text, doc_id, url in zip(texts, ids, urls):
                        yield VALUE, f"{path}:{row}", text, doc_id, url
                        row += 1
        except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid, OSError, ... on corrupt files
            yield READ_ERROR, f"{path}:{row}", f"cannot read {path} as parquet: {type(e).__name__}: {e}", None, None


class ReadFiles(beam.PTransform):
    """PBegin -> raw records from a list of file paths (JSONL lines, Parquet rows, WET records, whole .txt files).

    Parallelism is per file: the paths are reshuffled so workers share them; one file is read start to
    end by one worker, which keeps line numbers (and so derived ids) exact.

    With a ``progress_dir`` the reader reports files read and, from ``sizes`` (path as given -> bytes on disk,
    as matched by the launcher), their bytes (pipeline.progress).
    """

    def __init__(self, paths: list[str], fmt: str = "auto", text_field: str = "text", id_field: str = "id",
                 sizes: dict[str, int] | None = None, progress_dir: str | None = None, url_field: str = "url"):
        super().__init__()
        self.paths, self.fmt, self.text_field, self.id_field = sorted(paths), fmt, text_field, id_field
        self.url_field = url_field
        # Sizes only travel with the DoFn when they are reported.
        self.sizes = sizes if progress_dir is not None else None
        self.progress_dir = progress_dir

    def expand(self, pbegin):
        return (
            pbegin
            | "Paths" >> beam.Create(self.paths)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFile" >> beam.ParDo(_ReadFileFn(self.fmt, self.text_field, self.id_field,
                                                   self.sizes, self.progress_dir, self.url_field))
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


class _ReadHFRowsFn(ReportingDoFn):
    """A row range [start, end) of a dataset -> VALUE records (with the id and url columns when the dataset has
    them). The dataset is opened (memory-mapped) once per worker."""

    def __init__(self, name: str, split: str, text_field: str, id_field: str, progress_dir: str | None = None,
                 url_field: str = "url"):
        super().__init__(progress_dir)
        self.name, self.split, self.text_field, self.id_field = name, split, text_field, id_field
        self.url_field = url_field
        self._ds = None

    def setup(self):
        super().setup()
        ds = load_hf_dataset(self.name, self.split)
        self._ds = ds.select_columns(_columns(ds.column_names, self.text_field, self.id_field, self.url_field))

    def process(self, row_range: tuple[int, int]):
        start, end = row_range
        self._progress.add(READ)
        batch = self._ds[start:end]
        texts = batch[self.text_field]
        ids = batch.get(self.id_field, [None] * len(texts))
        urls = batch.get(self.url_field, [None] * len(texts))
        for i, (text, doc_id, url) in enumerate(zip(texts, ids, urls)):
            yield VALUE, f"hf:{self.name}:{self.split}:{start + i}", text, doc_id, url
        self._progress.add(READ, rows=len(texts))


class ReadHuggingFace(beam.PTransform):
    """PBegin -> raw records from a Hugging Face dataset split (local use: every worker opens the dataset)."""

    def __init__(self, name: str, split: str, num_rows: int, text_field: str = "text", id_field: str = "id",
                 rows_per_range: int = 1000, progress_dir: str | None = None, url_field: str = "url"):
        super().__init__()
        self.name, self.split, self.num_rows = name, split, num_rows
        self.text_field, self.id_field, self.rows_per_range = text_field, id_field, rows_per_range
        self.progress_dir, self.url_field = progress_dir, url_field

    def expand(self, pbegin):
        ranges = [(s, min(s + self.rows_per_range, self.num_rows)) for s in range(0, self.num_rows, self.rows_per_range)]
        return (
            pbegin
            | "RowRanges" >> beam.Create(ranges)
            | "SpreadRanges" >> beam.Reshuffle()
            | "ReadRows" >> beam.ParDo(_ReadHFRowsFn(self.name, self.split, self.text_field, self.id_field,
                                                     self.progress_dir, self.url_field))
        )
