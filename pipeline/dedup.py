"""Exact dedup across the whole corpus: one document per dedup_key stays, the others are exact_duplicate.

The document that stays is the one with the smallest rank (document_key, source), so the choice does not depend
on the runner, the number of workers or the order of the input. No group ever holds the copies of a text, however
often it repeats (boilerplate repeated millions of times in a crawl would be one hot key):

    SmallestPerContent  (dedup_key, rank) -> CombinePerKey(min): the winning rank of each text. Beam combines
                        within each bundle before the shuffle, so a key repeated N times crosses it as one
                        rank per bundle, not N documents
    JoinWinner          documents keyed by (dedup_key, rank), each text's winner keyed the same way, grouped:
                        a group holds one document (ranks are unique) and at most one winner mark
    Decide              a document whose group holds the mark stays; every other is an exact_duplicate

Documents cross the shuffle with their text compressed (pipeline.packing), once, as they did when dedup was
one GroupByKey on the text's hash; what moves in addition is one (key, rank) pair per document per bundle.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import documents
from pipeline.counters import COUNTER_NAMESPACE, EXACT_DUPLICATE, GROUP_METRICS
from pipeline.packing import pack_document, packed_size, unpack_document
from pipeline.progress import DEDUP, Reporter

WINNER = "winner"
DOCUMENT = "document"


def rank(doc: documents.Document) -> tuple[str, str]:
    """The order that decides which copy of a text stays: the smallest (document_key, source)."""
    return documents.document_key(doc), doc.source


class _DecideFn(beam.DoFn):
    """((dedup_key, document_key, source), {document: [packed], winner: [marks]}) -> (dedup_key, Document) when
    the group holds the winner mark, else an exact_duplicate Rejection (tagged "rejected").

    A group holds more than one document only if the input held two records with the same key and source (the
    same text, id and line), which no reader produces; the first then stays and the others are duplicates, so
    counts are conserved either way."""

    def __init__(self, progress_dir: str | None = None):
        self.progress_dir = progress_dir
        self.group_bytes = Metrics.distribution(COUNTER_NAMESPACE, GROUP_METRICS["dedup"])
        self._progress = Reporter(None)

    def setup(self):
        self._progress = Reporter(self.progress_dir)

    def finish_bundle(self):
        self._progress.flush()

    def teardown(self):
        self._progress.flush()

    def process(self, element):
        (dkey, _, _), grouped = element
        packed, marks = list(grouped[DOCUMENT]), list(grouped[WINNER])
        self.group_bytes.update(packed_size(packed) + 8 * len(marks))
        for i, doc in enumerate(map(unpack_document, packed)):
            if marks and i == 0:
                self._progress.add(DEDUP, kept=1)
                yield dkey, doc
            else:
                self._progress.add(DEDUP, rejected=1)
                yield beam.pvalue.TaggedOutput("rejected", documents.rejection_for(doc, EXACT_DUPLICATE))


class ExactDedup(beam.PTransform):
    """Documents -> ((dedup_key, Document) for one document per dedup_key, Rejections for the others).
    ``progress_dir``: see pipeline.progress (local runs)."""

    def __init__(self, progress_dir: str | None = None):
        super().__init__()
        self.progress_dir = progress_dir

    def expand(self, docs):
        keyed = docs | "KeyByContent" >> beam.Map(lambda d: (documents.dedup_key(d.text), d))
        winners = (
            keyed
            | "Rank" >> beam.Map(lambda kv: (kv[0], rank(kv[1])))
            | "SmallestPerContent" >> beam.CombinePerKey(min)
            | "WinnerKey" >> beam.Map(lambda kv: ((kv[0],) + tuple(kv[1]), True))
        )
        by_rank = keyed | "KeyByRank" >> beam.Map(lambda kv: ((kv[0],) + rank(kv[1]), pack_document(kv[1])))
        out = (
            {DOCUMENT: by_rank, WINNER: winners}
            | "JoinWinner" >> beam.CoGroupByKey()
            | "Decide" >> beam.ParDo(_DecideFn(self.progress_dir)).with_outputs("rejected", main="unique")
        )
        return out.unique, out.rejected
