"""Exact dedup across the whole corpus: one document per dedup_key stays, the others are exact_duplicate.

A global GroupByKey on pipeline.documents.dedup_key (sha256 of the text with whitespace runs collapsed). The
document that stays is the one with the smallest (document_key, source), so the choice does not depend on
the runner, the number of workers or the order of the input. Documents cross the shuffle compressed
(pipeline.packing).
"""
from __future__ import annotations

import apache_beam as beam

from pipeline import documents
from pipeline.counters import EXACT_DUPLICATE
from pipeline.packing import pack_document, unpack_document


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
