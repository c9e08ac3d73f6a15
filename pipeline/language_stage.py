"""The language stage: Documents -> (kept Documents labelled with their language, Rejections ``language``).

The Beam glue of pipeline.language. Every input document becomes exactly one of the two outputs, which keeps
the manifest's read == kept + rejected. A kept document is a new Document (``dataclasses.replace``) whose
``language`` is lid.176's label; a dropped one is a Rejection whose record carries ``language`` and
``language_score``.

The model is loaded in ``setup()``, once per worker process (pipeline.language.load_model caches it for every
DoFn instance there): a fastText model cannot be pickled, and the DoFn is. Documents are predicted one at a
time: fasttext-predict's only batch call (``multilinePredict``) returns labels without their probabilities,
and each prediction costs the same alone or in a batch (it is linear in the document's words), so batching
would save nothing but a Python call per document.

With a ``progress_dir`` the stage reports under "filter": ``rejected`` (added to the run's rejected total) and
``identified`` (documents labelled). It leaves ``passed`` to the quality rules that run after it, so that the
progress line's "passed filters" counts each document once.
"""
from __future__ import annotations

import dataclasses

import apache_beam as beam

from pipeline import documents, language
from pipeline.documents import Document
from pipeline.language import LanguageConfig
from pipeline.progress import FILTER
from pipeline.progress_dofn import ReportingDoFn


class _LanguageFn(ReportingDoFn):
    """Document -> the Document with ``language`` set | a tagged ``rejected`` Rejection."""

    def __init__(self, cfg: LanguageConfig, progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.cfg = cfg
        self._model = None

    def setup(self):
        super().setup()
        self._model = language.load_model()

    def process(self, doc: Document):
        if self._model is None:  # called without setup() (a test calling process directly)
            self._model = language.load_model()
        label, score = language.identify(doc.text, self._model)
        reason = language.reject_reason(label, score, self.cfg)
        self._progress.add(FILTER, identified=1, rejected=int(reason is not None))
        if reason is None:
            yield dataclasses.replace(doc, language=label)
        else:
            yield beam.pvalue.TaggedOutput(
                "rejected", documents.rejection_for(doc, reason, language=label, language_score=score))

    def __getstate__(self):  # the model stays in its process: a pickled DoFn carries the config only
        state = dict(self.__dict__)
        state["_model"] = None
        return state


class LanguageFilter(beam.PTransform):
    """Documents -> (kept Documents with ``language`` set, Rejections ``language`` with details language and
    language_score)."""

    def __init__(self, cfg: LanguageConfig, progress_dir: str | None = None):
        super().__init__()
        cfg.validate()
        self.cfg, self.progress_dir = cfg, progress_dir

    def expand(self, docs):
        fn = _LanguageFn(self.cfg, self.progress_dir)
        out = docs | "IdentifyLanguage" >> beam.ParDo(fn).with_outputs("rejected", main="kept")
        return out.kept, out.rejected
