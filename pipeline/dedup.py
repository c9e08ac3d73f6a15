"""Exact dedup across the whole corpus: one document per dedup_key stays, the others are exact_duplicate.

The document that stays is the one with the smallest rank (document_key, source), so the choice does not depend
on the runner, the number of workers, the bucket count or the order of the input. Two steps, so that no group
ever holds the copies of a text however often it repeats (boilerplate repeated millions of times in a crawl),
and so that the shuffle moves a few large elements rather than one per document:

    DropCopies  where the documents are (fused into the filter stage): a window of about WINDOW_BYTES of text
                keeps one document per dedup_key, and every copy with a larger rank is rejected on the spot; a
                text seen twice is remembered for the rest of the bundle (up to HOT_KEYS texts), so its later
                copies are rejected on the spot too. What leaves the window is batched per bucket, a hash of the
                dedup_key into ``buckets`` buckets, chosen from the input size so that a bucket's group stays
                under the bound (pipeline.prepare), and each batch is compressed together, its keys and ranks
                apart from its texts (pipeline.packing.pack_documents). A text crosses the shuffle at most
                once per bundle once it is hot, and at most once per window before, instead of once per copy.
    Decide      per bucket: the smallest rank of each dedup_key in the group (first pass, over keys and ranks
                only), then each document stays if it has that rank, else it is an exact_duplicate (second
                pass, one batch decompressed at a time). Holds one dict entry per distinct text of the bucket
                and one batch of documents at a time.

A copy dropped in the window always has a larger rank than a document of the same text that went on, so it
would have lost in Decide too: the outcome equals one global group per text.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import documents
from pipeline.bundles import in_global_window
from pipeline.counters import COUNTER_NAMESPACE, EXACT_DUPLICATE, GROUP_METRICS
from pipeline.packing import document_keys, pack_documents, packed_size, unpack_documents
from pipeline.progress import DEDUP
from pipeline.progress_dofn import ReportingDoFn

WINDOW_BYTES = 16 << 20  # characters of text a DropCopies instance holds before it sends them on
HOT_KEYS = 1 << 16  # texts seen twice that a DropCopies instance remembers within a bundle (then it forgets all)


def rank(doc: documents.Document) -> tuple[str, str]:
    """The order that decides which copy of a text stays: the smallest (document_key, source)."""
    return documents.document_key(doc), doc.source


def bucket_of(dkey: str, buckets: int) -> int:
    """The bucket of a text: its dedup_key is a sha256 in hex already, so its first 48 bits are uniform."""
    return (int(dkey[:12], 16) * buckets) >> 48


class _DropCopiesFn(ReportingDoFn):
    """Document -> (bucket, documents packed with their (dedup_key, rank)) batches; copies that lose within the
    window (or to a remembered hot text) -> exact_duplicate Rejections, tagged "rejected"."""

    def __init__(self, buckets: int, window_bytes: int = WINDOW_BYTES, hot_keys: int = HOT_KEYS,
                 progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.buckets, self.window_bytes, self.hot_keys = buckets, window_bytes, hot_keys

    def start_bundle(self):
        self._window: dict[str, tuple[tuple[str, str], documents.Document]] = {}  # text -> (rank, document)
        self._seen_twice: set[str] = set()  # texts with a copy in the current window
        self._hot: dict[str, tuple[str, str]] = {}  # text -> the smallest rank this bundle sent on
        self._bytes = 0

    def process(self, doc: documents.Document):
        dkey, r = documents.dedup_key(doc.text), rank(doc)
        hot = self._hot.get(dkey)
        if hot is not None and hot < r:
            yield self._reject(doc)
            return
        held = self._window.get(dkey)
        if held is not None:
            self._seen_twice.add(dkey)
            if held[0] < r:
                yield self._reject(doc)
                return
            yield self._reject(held[1])
            self._bytes -= len(held[1].text)
        self._window[dkey] = (r, doc)
        self._bytes += len(doc.text)
        if self._bytes >= self.window_bytes:
            yield from self._flush()

    def finish_bundle(self):
        for out in self._flush():
            yield in_global_window(out)
        super().finish_bundle()

    def _reject(self, doc: documents.Document):
        self._progress.add(DEDUP, rejected=1)
        return beam.pvalue.TaggedOutput("rejected", documents.rejection_for(doc, EXACT_DUPLICATE))

    def _flush(self):
        batches: dict[int, list] = {}
        for dkey, (r, doc) in self._window.items():
            batches.setdefault(bucket_of(dkey, self.buckets), []).append((dkey, r, doc))
            if dkey in self._seen_twice:
                self._hot[dkey] = min(r, self._hot.get(dkey, r))
        if len(self._hot) > self.hot_keys:  # forget them all: only a bound on memory, never on correctness
            self._hot = {}
        self._window, self._seen_twice, self._bytes = {}, set(), 0
        for bucket in sorted(batches):
            batch = batches[bucket]
            yield bucket, pack_documents([(dkey, r) for dkey, r, _ in batch], [doc for _, _, doc in batch])


class _DecideFn(ReportingDoFn):
    """(bucket, batches) -> (dedup_key, Document) for the smallest rank of each text; every other document of the
    group -> an exact_duplicate Rejection (tagged "rejected"). Two passes over the group, which is never listed:
    a runner that pages a large group's values (Dataflow) is never asked to hold it."""

    def __init__(self, progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.group_bytes = Metrics.distribution(COUNTER_NAMESPACE, GROUP_METRICS["dedup"])

    def process(self, element):
        _, batches = element
        best: dict[str, tuple[str, str]] = {}
        size = 0
        for packed in batches:  # pass 1: keys and ranks only, no text decompressed
            size += packed_size(packed)
            for dkey, r in document_keys(packed):
                if dkey not in best or r < best[dkey]:
                    best[dkey] = r
        self.group_bytes.update(size)
        for packed in batches:  # pass 2: decide, one batch of documents at a time
            for (dkey, r), doc in unpack_documents(packed):
                if best.get(dkey) == r:
                    del best[dkey]  # an identical second record (same text, key and source) is a duplicate
                    self._progress.add(DEDUP, kept=1)
                    yield dkey, doc
                else:
                    self._progress.add(DEDUP, rejected=1)
                    yield beam.pvalue.TaggedOutput("rejected", documents.rejection_for(doc, EXACT_DUPLICATE))


class ExactDedup(beam.PTransform):
    """Documents -> ((dedup_key, Document) for one document per dedup_key, Rejections of copies dropped where they
    were read, Rejections of copies dropped per bucket). Two rejected collections, each written where it is made
    (pipeline.rejected), so that the rejected text is never gathered. ``progress_dir``: see pipeline.progress."""

    def __init__(self, buckets: int = 1, progress_dir: str | None = None, window_bytes: int = WINDOW_BYTES):
        super().__init__()
        if buckets < 1:
            raise ValueError(f"ExactDedup needs at least one bucket, got {buckets}")
        self.buckets, self.progress_dir, self.window_bytes = buckets, progress_dir, window_bytes

    def expand(self, docs):
        local = docs | "DropCopies" >> beam.ParDo(
            _DropCopiesFn(self.buckets, self.window_bytes, progress_dir=self.progress_dir)).with_outputs(
            "rejected", main="batches")
        out = (
            local.batches
            | "GroupByBucket" >> beam.GroupByKey()
            | "Decide" >> beam.ParDo(_DecideFn(self.progress_dir)).with_outputs("rejected", main="unique")
        )
        return out.unique, local.rejected, out.rejected
