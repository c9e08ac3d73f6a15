"""Tokenizer stages: a deterministic sample -> a trained (or given) tokenizer -> documents as token bytes.

    SampleForTokenizer   (dedup_key, Document) -> the documents with the smallest hash of their document_key,
                         up to a character budget (bottom-k: the same sample whatever the runner's splits)
    TrainTokenizer       sample -> SentencePiece model, written to DIR/tokenizer.model -> tokenizer info
    GivenTokenizer       --tokenizer PATH (SentencePiece, or Hugging Face: pipeline.hf_tokenizer), copied to
                         DIR/tokenizer.model or DIR/tokenizer.json + tokenizer_config.json -> tokenizer info
    TokenizeAndAssign    (dedup_key, Document) -> ((split, shard, part), packed batch of ((document_key,
                         dedup_key), token bytes)), with the tokenizer info and the write plan
                         (pipeline.write.PlanWrite) as singleton side inputs

The tokenizer info is one dict (kind, the files' bytes, vocab size, eos id, sha256) passed as a side input, so the runner
finishes training before any document is tokenized, and nothing is read or filtered twice. pipeline.tokenizer
is the SentencePiece code itself, without Beam.
"""
from __future__ import annotations

import hashlib

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import documents
from pipeline.bundles import in_global_window
from pipeline.counters import COUNTER_NAMESPACE
from pipeline.layout import REJECTED_DIR
from pipeline.packing import batch_limit, pack_token_batch
from pipeline.progress import TOKENIZE
from pipeline.progress_dofn import ReportingDoFn
from pipeline.shards import dtype_for_vocab
from pipeline.split import assign_part, assign_shard, hash_unit
from pipeline.tokenizer_file import HUGGINGFACE, SENTENCEPIECE, file_names, open_tokenizer
from pipeline.write import write_bytes


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


def tokenizer_info(model_bytes: bytes, trained: bool, sample_chars: int = 0, *, kind: str = SENTENCEPIECE,
                   config: bytes | None = None) -> dict:
    """The tokenizer-info dict passed between stages (the files' bytes included) and summarized in the manifest.

    ``kind`` and ``config`` as in pipeline.tokenizer_file: a Hugging Face tokenizer is its tokenizer.json
    (``model_bytes``) plus the tokenizer_config.json naming its EOS token (``config``).
    """
    tok = open_tokenizer(kind, model_bytes, config)
    return {
        "kind": kind,
        "model": model_bytes,
        "config": config,
        "path": file_names(kind)[0],
        "vocab_size": int(tok.vocab_size),
        "eos_id": int(tok.eos_id),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "trained": trained,
        "sample_chars": sample_chars,
    }


def write_tokenizer_files(output_dir: str, info: dict) -> None:
    """The tokenizer's files into the output directory (tokenizer.model, or tokenizer.json + its config)."""
    files = {info["path"]: info["model"]}
    if info["kind"] == HUGGINGFACE:
        files[file_names(HUGGINGFACE)[1]] = info["config"]
    for name, data in files.items():
        write_bytes(FileSystems.join(output_dir, name), data)


class _TrainTokenizerFn(beam.DoFn):
    def __init__(self, vocab_size: int, output_dir: str):
        self.vocab_size, self.output_dir = vocab_size, output_dir

    def process(self, sample):
        from pipeline.tokenizer import train_tokenizer_bytes

        if not sample:
            raise ValueError(
                "no document survived parsing, filtering and dedup, so there is nothing to train a tokenizer on; "
                f"see {FileSystems.join(self.output_dir, REJECTED_DIR)}/ for why each record was dropped, and loosen "
                "the filter options (e.g. --min-words) or check --input / --text-field"
            )
        # The sample arrives sorted by hash: the trainer sees the same sentences in the same order on every
        # run and worker count, so the model file is byte-identical.
        model = train_tokenizer_bytes((text for _, text in sample), self.vocab_size)
        info = tokenizer_info(model, trained=True, sample_chars=sum(len(t) for _, t in sample))
        write_tokenizer_files(self.output_dir, info)
        yield info


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
        write_tokenizer_files(self.output_dir, info)
        yield info


class GivenTokenizer(beam.PTransform):
    """PBegin -> [tokenizer info] for an existing tokenizer (--tokenizer PATH), its files copied into DIR."""

    def __init__(self, info: dict, output_dir: str):
        super().__init__()
        self.info, self.output_dir = info, output_dir

    def expand(self, pbegin):
        return pbegin | "Model" >> beam.Create([self.info]) | "Copy" >> beam.ParDo(_CopyTokenizerFn(self.output_dir))


class _TokenizeFn(ReportingDoFn):
    """(dedup_key, Document) -> ((split, shard, part), packed batch of ((document_key, dedup_key), token bytes)).

    Tokens travel as raw bytes in the shard dtype (uint16 for vocabularies < 65500): half the size of the
    UTF-8 text for typical English, and exactly what ShardWriter writes. Documents leave in batches per write
    group of about ``batch_bytes`` token bytes (default: pipeline.packing.batch_limit of the number of groups),
    compressed (pack_token_batch): the write grouping then handles one element per batch instead of one per
    document and fewer bytes, and a worker holds at most one open batch per group. The part of a document is a
    hash of its key into the write plan's parts per shard (pipeline.write.PlanWrite).
    """

    def __init__(self, val_fraction: float, train_shards: int, val_shards: int, batch_bytes: int | None,
                 progress_dir: str | None = None):
        super().__init__(progress_dir)
        self.val_fraction, self.train_shards, self.val_shards = val_fraction, train_shards, val_shards
        self.batch_bytes = batch_bytes
        self.kept = Metrics.counter(COUNTER_NAMESPACE, "kept")
        self.tokens = Metrics.counter(COUNTER_NAMESPACE, "tokens")
        self._tok, self._sha, self._dtype = None, None, None

    def _tokenizer(self, info: dict):
        # The model arrives as a side input (it may have been trained in this very run); build it once
        # per DoFn instance, not per element.
        if self._sha != info["sha256"]:
            self._tok = open_tokenizer(info.get("kind", SENTENCEPIECE), info["model"], info.get("config"))
            self._sha = info["sha256"]
            self._dtype = dtype_for_vocab(info["vocab_size"])
        return self._tok

    def start_bundle(self):
        self._batches: dict[tuple[str, int, int], tuple[list, int]] = {}  # group -> (items, token bytes)
        self._languages: dict[str, list[int]] = {}  # language -> [documents, tokens] of this bundle

    def process(self, element, info, plan):
        dkey, doc = element
        tok = self._tokenizer(info)
        key = documents.document_key(doc)
        split, shard = assign_shard(key, self.val_fraction, self.train_shards, self.val_shards)
        parts = plan["parts"]
        group = (split, shard, assign_part(key, parts[split]))
        batch_bytes = self.batch_bytes or batch_limit(
            self.train_shards * parts["train"] + self.val_shards * parts["val"])
        ids = tok.encode_document(doc.text)
        self.kept.inc()
        self.tokens.inc(len(ids))
        self._progress.add(TOKENIZE, documents=1, tokens=len(ids))
        if doc.language:
            counts = self._languages.setdefault(doc.language, [0, 0])
            counts[0] += 1
            counts[1] += len(ids)
        token_bytes = ids.astype(self._dtype).tobytes()
        items, size = self._batches.get(group, ([], 0))
        items.append(((key, dkey), token_bytes))
        size += len(token_bytes)
        if size >= batch_bytes:
            self._batches.pop(group, None)
            yield group, pack_token_batch(items)
        else:
            self._batches[group] = (items, size)

    def finish_bundle(self):
        for group, (items, _) in sorted(self._batches.items()):
            yield in_global_window((group, pack_token_batch(items)))
        for language, (docs, tokens) in sorted(self._languages.items()):
            yield in_global_window(beam.pvalue.TaggedOutput(LANGUAGES, (language, (docs, tokens))))
        self._batches, self._languages = {}, {}
        super().finish_bundle()


LANGUAGES = "languages"  # the tagged output of (language, (documents, tokens)) per bundle


class TokenizeAndAssign(beam.PTransform):
    """(dedup_key, Document) -> (batches of token bytes keyed by write group (split, shard, part), and
    (language, (documents, tokens)) per bundle for documents whose language is known); the tokenizer info and the
    write plan (pipeline.write.PlanWrite) are singleton side inputs. ``batch_bytes`` defaults to
    pipeline.packing.batch_limit of the number of write groups."""

    def __init__(self, tokenizer, plan, val_fraction: float, train_shards: int, val_shards: int,
                 batch_bytes: int | None = None, progress_dir: str | None = None):
        super().__init__()
        self.tokenizer, self.plan, self.batch_bytes, self.progress_dir = tokenizer, plan, batch_bytes, progress_dir
        self.val_fraction, self.train_shards, self.val_shards = val_fraction, train_shards, val_shards

    def expand(self, unique):
        fn = _TokenizeFn(self.val_fraction, self.train_shards, self.val_shards, self.batch_bytes, self.progress_dir)
        out = unique | "Encode" >> beam.ParDo(fn, beam.pvalue.AsSingleton(self.tokenizer),
                                              beam.pvalue.AsSingleton(self.plan)).with_outputs(LANGUAGES, main="batches")
        return out.batches, out[LANGUAGES]
