"""Parse and filter stages: raw records -> Documents -> kept Documents; every record dropped is a Rejection.

The Beam glue of the pure rules in pipeline.documents (parsing: invalid_utf8, malformed_record, empty,
nul_bytes; a READ_ERROR record becomes unreadable_file) and pipeline.filters (the Gopher quality and
repetition rules). Each stage returns (passed, rejected): every input element becomes exactly one of the two,
which is what lets the manifest check read == kept + rejected.

With a ``progress_dir`` (local runs) both stages also report their counts through pipeline.progress: "parse"
(records, rejected) and "filter" (passed, rejected).
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import documents, filters
from pipeline.bundles import in_global_window
from pipeline.counters import COUNTER_NAMESPACE, UNREADABLE_FILE
from pipeline.documents import Document, Rejection
from pipeline.filters import FilterConfig
from pipeline.progress import FILTER, PARSE
from pipeline.progress_dofn import ReportingDoFn
from pipeline.read import JSON_LINE, RAW_KINDS, READ_ERROR, TEXT_FILE, VALUE


class _ParseFn(ReportingDoFn):
    """Raw records (kind, source, payload, id, url) of pipeline.read -> Documents | tagged Rejections."""

    def __init__(self, text_field: str, id_field: str, progress_dir: str | None = None, url_field: str = "url"):
        super().__init__(progress_dir)
        self.text_field, self.id_field, self.url_field = text_field, id_field, url_field
        self.read = Metrics.counter(COUNTER_NAMESPACE, "read")

    def process(self, record):
        kind, source, payload, doc_id, url = record
        self.read.inc()
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


class ParseRecords(beam.PTransform):
    """raw records -> (Documents, Rejections). Every raw record becomes exactly one of the two.

    ``url_field``: the JSONL key of the page URL (Parquet and dataset rows bring theirs in the raw record)."""

    def __init__(self, text_field: str = "text", id_field: str = "id", progress_dir: str | None = None,
                 url_field: str = "url"):
        super().__init__()
        self.text_field, self.id_field, self.progress_dir = text_field, id_field, progress_dir
        self.url_field = url_field

    def expand(self, records):
        fn = _ParseFn(self.text_field, self.id_field, self.progress_dir, self.url_field)
        out = records | "Parse" >> beam.ParDo(fn).with_outputs("rejected", main="documents")
        return out.documents, out.rejected


class _FilterFn(ReportingDoFn):
    """Documents -> kept Documents | tagged Rejections, judged in batches of about ``batch_chars`` characters.

    filters.reject_reasons runs the rules over a whole batch with numpy, which spreads numpy's per-call cost
    over many documents (the reasons are those of one document at a time); a worker holds at most one open batch.
    """

    def __init__(self, cfg: FilterConfig, batch_chars: int = filters.BATCH_CHARS, progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.cfg, self.batch_chars = cfg, batch_chars

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
        reasons = filters.reject_reasons([d.text for d in docs], self.cfg)
        rejected = sum(reason is not None for reason in reasons)
        self._progress.add(FILTER, passed=len(docs) - rejected, rejected=rejected)
        for doc, reason in zip(docs, reasons):
            if reason is None:
                yield doc
            else:
                yield beam.pvalue.TaggedOutput("rejected", documents.rejection_for(doc, reason))


class GopherFilter(beam.PTransform):
    """Documents -> (kept Documents, Rejections named by the first failing Gopher rule)."""

    def __init__(self, cfg: FilterConfig, progress_dir: str | None = None):
        super().__init__()
        self.cfg, self.progress_dir = cfg, progress_dir

    def expand(self, docs):
        fn = _FilterFn(self.cfg, progress_dir=self.progress_dir)
        out = docs | "Rules" >> beam.ParDo(fn).with_outputs("rejected", main="kept")
        return out.kept, out.rejected
