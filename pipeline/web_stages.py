"""Beam stages for web documents: UrlFilter (reason url_blocked) and RedactPII (edits pii_email, pii_ip).

The Beam glue of the pure rules in pipeline.urls and pipeline.pii. UrlFilter runs right after parsing, before any
costly stage looks at a document it would drop; every input document becomes exactly one of (kept, rejected), so
read == kept + rejected still holds. RedactPII runs last, after both dedup stages and just before tokenizing: the
duplicates are judged on the text as published, and what is redacted is exactly what reaches the shards.

With a ``progress_dir`` (local runs), UrlFilter reports its rejections under the "filter" stage and RedactPII its
replacements under "redact" (pipeline.progress).
"""
from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from pipeline import documents, pii, urls
from pipeline.bundles import in_global_window
from pipeline.files import is_remote
from pipeline.documents import Document
from pipeline.progress import FILTER
from pipeline.progress_dofn import ReportingDoFn

REDACT = "redact"  # the progress stage of RedactPII: "redact pii_email N, pii_ip M" in a progress line


def load_blocklist(path: str) -> frozenset[str]:
    """pipeline.urls.read_blocklist for a local path or any path Beam's FileSystems opens (gs://)."""
    if not is_remote(path):
        return urls.read_blocklist(path)
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
    except Exception as e:  # noqa: BLE001 -- gcsio raises its own errors for a missing object or no access
        raise FileNotFoundError(f"--url-blocklist {path}: cannot read it ({type(e).__name__}: {e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"--url-blocklist {path} is not UTF-8 text ({e}); save it as UTF-8") from None
    return urls.parse_blocklist(text.splitlines(), path)


class _UrlFilterFn(ReportingDoFn):
    """Document -> the Document, or a url_blocked Rejection (tagged "rejected") when its URL is blocked. The
    blocklist is read in setup(), once per worker: a list of millions of domains never travels in the job graph
    (Dataflow limits its size) nor with every pickled copy of the DoFn."""

    def __init__(self, blocklist_path: str, progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.blocklist_path = blocklist_path
        self.blocklist = None

    def setup(self):
        super().setup()
        self.blocklist = load_blocklist(self.blocklist_path)

    def process(self, doc: Document):
        if doc.url and urls.url_blocked(doc.url, self.blocklist):
            # Only rejections: "passed filters" in a progress line is the quality filters' count.
            self._progress.add(FILTER, rejected=1)
            yield beam.pvalue.TaggedOutput("rejected", documents.rejection_for(doc, urls.URL_BLOCKED))
        else:
            yield doc


class UrlFilter(beam.PTransform):
    """Documents -> (kept Documents, url_blocked Rejections, each with the document's url).

    ``blocklist_path``: a blocklist file (pipeline.urls; local or gs://), read and checked here, when the pipeline
    is built, and again by each worker. A document without a URL is kept.
    """

    def __init__(self, blocklist_path: str, progress_dir: str | None = None):
        super().__init__()
        load_blocklist(blocklist_path)  # a mistake in the file fails here, naming its line, before any worker starts
        self.blocklist_path, self.progress_dir = blocklist_path, progress_dir

    def expand(self, docs):
        fn = _UrlFilterFn(self.blocklist_path, self.progress_dir)
        out = docs | "BlockedUrls" >> beam.ParDo(fn).with_outputs("rejected", main="kept")
        return out.kept, out.rejected


class _RedactFn(ReportingDoFn):
    """(dedup_key, Document) -> the pair with the document's e-mails and public IPs replaced; at the end of each
    bundle, (edit name, count) pairs tagged "edits" for the names that were counted."""

    def start_bundle(self):
        self._counts = dict.fromkeys(pii.EDITS, 0)

    def process(self, pair):
        key, doc = pair
        text, counts = pii.redact(doc.text)
        if text != doc.text:
            doc = dataclasses.replace(doc, text=text)
            for name, n in counts.items():
                self._counts[name] += n
            self._progress.add(REDACT, **{name: n for name, n in counts.items() if n})
        yield key, doc

    def finish_bundle(self):
        for name, n in self._counts.items():
            if n:
                yield in_global_window(beam.pvalue.TaggedOutput("edits", (name, n)))
        super().finish_bundle()


class RedactPII(beam.PTransform):
    """(dedup_key, Document) pairs -> (the pairs with e-mail and public IP addresses replaced by
    pipeline.pii's placeholders, (edit name, count) pairs: pii_email, pii_ip, one per name and bundle).

    The dedup_key stays that of the text before redaction (it only orders documents from here on)."""

    def __init__(self, progress_dir: str | None = None):
        super().__init__()
        self.progress_dir = progress_dir

    def expand(self, pairs):
        out = pairs | "Redact" >> beam.ParDo(_RedactFn(self.progress_dir)).with_outputs("edits", main="redacted")
        return out.redacted, out.edits
