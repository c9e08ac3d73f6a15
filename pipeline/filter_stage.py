"""Parse and filter stages: raw records -> Documents -> kept Documents; every record dropped is a Rejection.

The Beam glue of the pure rules in pipeline.documents (parsing: invalid_utf8, malformed_record, empty,
nul_bytes; a READ_ERROR record becomes unreadable_file), pipeline.filters (the Gopher quality and repetition
rules), pipeline.c4_rules (C4's line edits and document rules) and pipeline.fineweb_rules. Each stage returns
(passed, rejected) (ParseRecords also how many records it read, QualityFilter its edit counts): every input
element becomes exactly one of the two, which is what lets the manifest check read == kept + rejected.

With a ``progress_dir`` (local runs) both stages also report their counts through pipeline.progress: "parse"
(records, rejected) and "filter" (passed, rejected).
"""
from __future__ import annotations

import dataclasses
import operator

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import c4_rules, documents, filters, fineweb_rules
from pipeline.bundles import in_global_window
from pipeline.counters import COUNTER_NAMESPACE, UNREADABLE_FILE
from pipeline.documents import Document, Rejection
from pipeline.c4_rules import C4Config
from pipeline.filters import FilterConfig
from pipeline.fineweb_rules import FineWebConfig
from pipeline.progress import FILTER, PARSE
from pipeline.progress_dofn import ReportingDoFn
from pipeline.read import JSON_LINE, RAW_KINDS, READ_ERROR, TEXT_FILE, VALUE


RECORDS = "records"  # the tagged output of _ParseFn: how many raw records a bundle parsed


class _ParseFn(ReportingDoFn):
    """Raw records (kind, source, payload, id, url) of pipeline.read -> Documents | tagged Rejections; the number
    of records of each bundle, tagged RECORDS.

    Counted here, once per bundle, rather than by a counting transform on the raw records: that would be one
    more step of the runner for every record of the corpus."""

    def __init__(self, text_field: str, id_field: str, progress_dir: str | None = None, url_field: str = "url"):
        super().__init__(progress_dir)
        self.text_field, self.id_field, self.url_field = text_field, id_field, url_field
        self.read = Metrics.counter(COUNTER_NAMESPACE, "read")
        self._records = 0

    def start_bundle(self):
        self._records = 0

    def process(self, record):
        kind, source, payload, doc_id, url = record
        self._records += 1
        if kind == JSON_LINE:
            out = documents.parse_json_line(payload, source, self.text_field, self.id_field, self.url_field)
        elif kind == TEXT_FILE:
            out = documents.parse_text_file(payload, source)
        elif kind == VALUE:
            out = documents.parse_value(payload, doc_id, source, url)
        elif kind == READ_ERROR:
            out = Rejection(id=source, source=source, reason=UNREADABLE_FILE, text=payload)
        else:  # a read stage and this one disagree: fail the run rather than drop or misfile records
            raise RuntimeError(f"unknown raw record kind {kind!r} from the read stage (source {source!r}); "
                               f"expected one of {RAW_KINDS}")
        rejected = isinstance(out, Rejection)
        self._progress.add(PARSE, records=1, rejected=int(rejected))
        yield beam.pvalue.TaggedOutput("rejected", out) if rejected else out

    def finish_bundle(self):
        if self._records:
            self.read.inc(self._records)
            yield in_global_window(beam.pvalue.TaggedOutput(RECORDS, self._records))
        self._records = 0
        super().finish_bundle()


class ParseRecords(beam.PTransform):
    """raw records -> (Documents, Rejections, record counts). Every raw record becomes exactly one of the two;
    the counts (one per bundle) sum to the number of raw records.

    ``url_field``: the JSONL key of the page URL (Parquet and dataset rows bring theirs in the raw record)."""

    def __init__(self, text_field: str = "text", id_field: str = "id", progress_dir: str | None = None,
                 url_field: str = "url"):
        super().__init__()
        self.text_field, self.id_field, self.progress_dir = text_field, id_field, progress_dir
        self.url_field = url_field

    def expand(self, records):
        fn = _ParseFn(self.text_field, self.id_field, self.progress_dir, self.url_field)
        out = records | "Parse" >> beam.ParDo(fn).with_outputs("rejected", RECORDS, main="documents")
        return out.documents, out.rejected, out[RECORDS]


class _QualityFn(ReportingDoFn):
    """Documents -> kept (edited) Documents | tagged Rejections | tagged (edit, count) pairs, in batches.

    A worker gathers documents until they hold about ``batch_chars`` characters (at most one open batch), then
    judges the batch: the Gopher rules over the whole batch at once (filters.reject_reasons, numpy passes that
    spread numpy's per-call cost over many documents), then, per document that passed, C4's line edits and
    document rules, then the FineWeb rules on the edited text. Each batch emits its non-zero C4 edit counts
    as (edit name, count) pairs, so the counts cost one element per batch, not per document.
    """

    def __init__(self, gopher: FilterConfig | None, c4: C4Config | None, fineweb: FineWebConfig | None,
                 batch_chars: int = filters.BATCH_CHARS, progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.gopher, self.c4, self.fineweb, self.batch_chars = gopher, c4, fineweb, batch_chars

    def start_bundle(self):
        self._docs, self._chars = [], 0

    def process(self, doc: Document):
        self._docs.append(doc)
        self._chars += len(doc.text)
        if self._chars >= self.batch_chars:
            yield from self._judge()

    def finish_bundle(self):
        yield from map(in_global_window, self._judge())
        super().finish_bundle()

    def _judge(self):
        docs, self._docs, self._chars = self._docs, [], 0
        if not docs:
            return
        reasons = filters.reject_reasons([d.text for d in docs], self.gopher) if self.gopher else [None] * len(docs)
        edits = [0] * len(c4_rules.EDITS)
        rejected = 0
        for doc, reason in zip(docs, reasons):
            if reason is None and self.c4 is not None:
                verdict = c4_rules.c4_clean(doc.text, self.c4)
                reason = verdict.reason
                if reason is None:
                    edits = list(map(operator.add, edits, verdict.edits))
                    if verdict.text != doc.text:
                        doc = dataclasses.replace(doc, text=verdict.text)
            if reason is None and self.fineweb is not None:
                reason = fineweb_rules.fineweb_reason(doc.text, self.fineweb)
            if reason is None:
                yield doc
            else:
                rejected += 1
                yield beam.pvalue.TaggedOutput("rejected", documents.rejection_for(doc, reason))
        self._progress.add(FILTER, passed=len(docs) - rejected, rejected=rejected)
        for name, count in zip(c4_rules.EDITS, edits):
            if count:
                yield beam.pvalue.TaggedOutput("edits", (name, count))


class QualityFilter(beam.PTransform):
    """Documents -> (kept Documents, Rejections, (edit name, count) pairs): the Gopher, C4 and FineWeb rules.

    Each config that is None switches its rule set off. Order, as FineWeb's pipeline runs them: the Gopher rules
    on the document as read, then C4's line edits and document rules, then the FineWeb rules on the text C4 left.
    A kept document carries the edited text; a rejection names the first rule that failed (reasons of
    pipeline.filters, c4_rules and fineweb_rules) and records the text that rule judged (the edited text for a
    FineWeb rule). A document C4's line edits empty is rejected (c4_too_few_sentences, or c4_empty when the
    sentence rule is off). Edit counts are C4's (c4_rules.EDITS) over the documents C4 kept, summed per batch.
    """

    def __init__(self, gopher: FilterConfig | None, c4: C4Config | None = None, fineweb: FineWebConfig | None = None,
                 progress_dir: str | None = None, batch_chars: int = filters.BATCH_CHARS):
        super().__init__()
        for cfg in (gopher, c4, fineweb):
            if cfg is not None:
                cfg.validate()
        self.gopher, self.c4, self.fineweb = gopher, c4, fineweb
        self.progress_dir, self.batch_chars = progress_dir, batch_chars

    def expand(self, docs):
        fn = _QualityFn(self.gopher, self.c4, self.fineweb, self.batch_chars, self.progress_dir)
        out = docs | "Rules" >> beam.ParDo(fn).with_outputs("rejected", "edits", main="kept")
        return out.kept, out.rejected, out.edits
