"""Near-duplicate removal: MinHash-LSH candidates (pipeline.minhash), clustered transitively
(pipeline.components), one document kept per cluster.

A cluster keeps the document with the smallest rank (document_key, source), as exact dedup does
(pipeline.dedup.rank), so the choice depends neither on the runner nor on the order of the input; every
other member becomes a ``near_duplicate`` Rejection whose record names ``duplicate_of``, the kept document's
document_key. Stages, each grouping bounded by the shape of the pipeline:

    Sign        where the documents are: signature and band keys of each document (salted with its group
                when dedup runs per input group). A window of up to WINDOW_KEYS band keys links each document
                to the smallest rank seen with the same key in the window (an edge, emitted on the spot), and
                sends on one (band key, smallest rank) per key when the window is full or the bundle ends. A
                key seen twice in a window is remembered for the rest of the bundle (up to HOT_KEYS keys):
                its later documents are linked to the rank it sent, and the key is not sent again.
                The documents go on in batches per bucket of their rank, each packed as exact dedup packs
                them (one shuffle element per batch; pipeline.packing.pack_documents).
    Buckets     per band key: every rank that arrived is linked to the smallest. At most one per window, and
                once the key repeats within a window one per bundle, however many documents share it: a
                boilerplate page repeated a million times adds a few ranks per bundle, not a million. Read in
                two passes, never listed.
    Components  connected components of the edges (pipeline.components), in a fixed number of rounds:
                (rank, the smallest rank of its cluster) for every document that is not its cluster's smallest.
                A cluster's centre is split over many groups there, never one.
    Apply       per bucket of the rank (``buckets``, planned like exact dedup's): the decisions of the bucket
                (one per near duplicate) in a dict, then its documents, one at a time.

The edges and the component rounds carry ranks only, never text: only documents with a candidate take part.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import documents
from pipeline.bundles import in_global_window
from pipeline.components import ConnectedComponents
from pipeline.counters import COUNTER_NAMESPACE, GROUP_METRICS
from pipeline.dedup import rank
from pipeline.minhash import NEAR_DUPLICATE, NearDedupConfig, band_keys, signature
from pipeline.packing import batch_limit, pack_documents, packed_size, unpack_documents
from pipeline.progress import DEDUP
from pipeline.progress_dofn import ReportingDoFn

WINDOW_KEYS = 1 << 17  # band keys a Sign instance holds (a 16-byte key and a rank each) before it sends them on
HOT_KEYS = 1 << 16  # band keys seen twice in a window that a Sign instance remembers within a bundle (then forgets)
# Distributions of the bytes of one group's values (as pipeline.counters.GROUP_METRICS names the other steps').


def bucket_of_rank(r: tuple[str, str], buckets: int) -> int:
    """The bucket of a document for the final join: the first 64 bits of blake2b of its rank, scaled."""
    digest = hashlib.blake2b(f"{r[0]}\x00{r[1]}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") * buckets) >> 64


def _rank_size(r) -> int:
    return len(r[0]) + len(r[1])


class _SignFn(ReportingDoFn):
    """(dedup_key, Document) -> (bucket, ("docs", documents packed with their (rank, dedup_key))); band keys ->
    tagged "bands" (band key, smallest rank of the window); links within a window, or to a hot key's rank ->
    tagged "edges" (rank, smaller rank)."""

    def __init__(self, cfg: NearDedupConfig, buckets: int, group_of: Callable | None, window_keys: int,
                 hot_keys: int = HOT_KEYS, progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.cfg, self.buckets, self.group_of = cfg, buckets, group_of
        self.window_keys, self.hot_keys = window_keys, hot_keys
        # Documents leave in a batch per bucket (one shuffle element, not one per document) of about this many
        # characters of text, a worker holding at most pipeline.packing.OPEN_BATCHES_BYTES of them over all buckets.
        self.batch_bytes = batch_limit(buckets)

    def start_bundle(self):
        self._batches: dict[int, tuple[list, int]] = {}  # bucket -> ([(rank, dedup_key, document)], characters)
        self._window: dict[bytes, tuple[str, str]] = {}  # band key -> the smallest rank of the window
        self._seen_twice: set[bytes] = set()  # keys with two documents in the current window
        self._hot: dict[bytes, tuple[str, str]] = {}  # key -> a rank this bundle sent on for it

    def process(self, element):
        dkey, doc = element
        r = rank(doc)
        sig = signature(doc.text, self.cfg)
        if sig is not None:
            group = self.group_of(doc) if self.group_of is not None else ""
            for key in band_keys(sig, self.cfg, group):
                held = self._hot.get(key)
                if held is not None:  # linked to the rank that went on: connected to the key's group
                    if held != r:
                        yield beam.pvalue.TaggedOutput("edges", (max(r, held), min(r, held)))
                    continue
                held = self._window.get(key)
                if held is None:
                    self._window[key] = r
                    continue
                self._seen_twice.add(key)
                if r < held:
                    self._window[key] = r
                    yield beam.pvalue.TaggedOutput("edges", (held, r))
                elif held < r:
                    yield beam.pvalue.TaggedOutput("edges", (r, held))
            if len(self._window) >= self.window_keys:
                yield from self._flush()
        bucket = bucket_of_rank(r, self.buckets)
        items, size = self._batches.get(bucket, ([], 0))
        items.append((r, dkey, doc))
        size += len(doc.text)
        if size >= self.batch_bytes:
            self._batches.pop(bucket, None)
            yield bucket, _docs_batch(items)
        else:
            self._batches[bucket] = (items, size)

    def finish_bundle(self):
        for out in self._flush():
            yield in_global_window(out)
        for bucket, (items, _) in sorted(self._batches.items()):
            yield in_global_window((bucket, _docs_batch(items)))
        self._batches = {}
        super().finish_bundle()

    def _flush(self):
        window, self._window = self._window, {}
        for key in self._seen_twice:
            self._hot[key] = window[key]
        self._seen_twice = set()
        if len(self._hot) > self.hot_keys:  # forget them all: only a bound on memory, never on correctness
            self._hot = {}
        for key in sorted(window):
            yield beam.pvalue.TaggedOutput("bands", (key, window[key]))


def _docs_batch(items: list) -> tuple:
    """[(rank, dedup_key, Document)] -> ("docs", the documents packed with their (rank, dedup_key))."""
    return "docs", pack_documents([(r, dkey) for r, dkey, _ in items], [doc for _, _, doc in items])


class _BucketEdgesFn(beam.DoFn):
    """(band key, ranks) -> (rank, the smallest rank) for every other rank: two passes over the group."""

    def __init__(self):
        super().__init__()
        self.group_bytes = Metrics.distribution(COUNTER_NAMESPACE, GROUP_METRICS["near_dedup_bands"])

    def process(self, element):
        key, ranks = element
        smallest, size = None, len(key)
        for r in ranks:
            r = tuple(r)
            size += _rank_size(r)
            if smallest is None or r < smallest:
                smallest = r
        self.group_bytes.update(size)
        for r in ranks:
            r = tuple(r)
            if r != smallest:
                yield r, smallest


class _ApplyFn(ReportingDoFn):
    """(bucket, [("docs", packed documents) | ("dup", rank, kept rank)]) -> (dedup_key, Document)
    for the documents that stay; near_duplicate Rejections (tagged "rejected") for the others. Two passes over the
    group, which is never listed: the decisions first, then the documents, one batch at a time."""

    def __init__(self, progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.group_bytes = Metrics.distribution(COUNTER_NAMESPACE, GROUP_METRICS["near_dedup_apply"])

    def process(self, element):
        _, values = element
        kept_by: dict[tuple[str, str], str] = {}
        size = 0
        for value in values:  # pass 1: the decisions of this bucket
            if value[0] == "dup":
                r, kept = tuple(value[1]), tuple(value[2])
                kept_by[r] = kept[0]
                size += _rank_size(r) + _rank_size(kept)
            else:
                size += packed_size(value[1])
        self.group_bytes.update(size)
        for value in values:  # pass 2: the documents, one batch at a time
            if value[0] != "docs":
                continue
            for (r, dkey), doc in unpack_documents(value[1]):
                duplicate_of = kept_by.get(r)
                if duplicate_of is None:
                    yield dkey, doc
                else:
                    self._progress.add(DEDUP, rejected=1)
                    yield beam.pvalue.TaggedOutput(
                        "rejected", documents.rejection_for(doc, NEAR_DUPLICATE, duplicate_of=duplicate_of))


def _decision(buckets: int):
    def to_bucket(edge):
        child, kept = tuple(edge[0]), tuple(edge[1])
        return bucket_of_rank(child, buckets), ("dup", child, kept)
    return to_bucket


class NearDedup(beam.PTransform):
    """(dedup_key, Document) pairs -> (the pairs that stay, near_duplicate Rejections). ``buckets``: groups of the
    final join (as ExactDedup's); ``group_of``: None (one group) or a picklable Document -> str, documents of
    different groups are never duplicates of each other; ``progress_dir``: see pipeline.progress."""

    def __init__(self, cfg: NearDedupConfig = NearDedupConfig(), buckets: int = 1,
                 group_of: Callable | None = None, progress_dir: str | None = None,
                 window_keys: int = WINDOW_KEYS):
        super().__init__()
        cfg.validate()
        if buckets < 1:
            raise ValueError(f"NearDedup needs at least one bucket, got {buckets}")
        self.cfg, self.buckets, self.group_of = cfg, buckets, group_of
        self.progress_dir, self.window_keys = progress_dir, window_keys

    def expand(self, pairs):
        sign = _SignFn(self.cfg, self.buckets, self.group_of, self.window_keys, progress_dir=self.progress_dir)
        signed = pairs | "Sign" >> beam.ParDo(sign).with_outputs("bands", "edges", main="docs")
        bucket_edges = (
            signed.bands
            | "GroupByBand" >> beam.GroupByKey()
            | "Buckets" >> beam.ParDo(_BucketEdgesFn())
        )
        decisions = (
            (signed.edges, bucket_edges)
            | "Edges" >> beam.Flatten()
            | "Components" >> ConnectedComponents(self.cfg.max_rounds)
            | "ByBucket" >> beam.Map(_decision(self.buckets))
        )
        out = (
            (signed.docs, decisions)
            | "DocsAndDecisions" >> beam.Flatten()
            | "GroupByBucket" >> beam.GroupByKey()
            | "Apply" >> beam.ParDo(_ApplyFn(self.progress_dir)).with_outputs("rejected", main="kept")
        )
        return out.kept, out.rejected
