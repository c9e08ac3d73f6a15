"""Manifest stage: the run's totals -> DIR/manifest.json, written last (its presence marks a finished run).

Just before it writes the manifest, it removes the write stage's run files (DIR/_runs/, pipeline.write).

pipeline.manifest is the file's contract and its reader (standard library only, for the trainer); this is the
Beam stage that gathers what the manifest says from every other stage and checks, before writing, that every
record read was either kept or rejected.
"""
from __future__ import annotations

import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.counters import EDITS, REASONS
from pipeline.layout import REJECTED_DIR, SPLITS
from pipeline.manifest import MANIFEST_NAME, manifest_json
from pipeline.write import remove_runs, write_bytes


def build_manifest(read: int, rejected: dict[str, int], shard_stats: list[dict], info: dict, config: dict,
                   rejected_files: list[str] = (), edits: dict[str, int] | None = None,
                   languages: dict[str, tuple[int, int]] | None = None) -> dict:
    """The manifest.json content from the pipeline's totals (pure; the invariant read == kept + rejected is checked).

    ``edits``: {edit name: count} (every name of counters.EDITS is listed); ``languages``: {language: (kept
    documents, tokens)} for documents whose language was identified."""
    shards = sorted(shard_stats, key=lambda s: (SPLITS.index(s["split"]), s["path"]))
    kept = sum(s["documents"] for s in shards)
    counts = {reason: 0 for reason in REASONS}
    counts.update(rejected)
    if read != kept + sum(counts.values()):  # a run that lost or duplicated records must not look finished
        raise RuntimeError(f"records read ({read}) != kept ({kept}) + rejected ({sum(counts.values())}): a stage "
                           "lost or duplicated records; the manifest was not written")
    edit_counts = {name: 0 for name in EDITS}
    edit_counts.update(edits or {})
    return {
        "documents": {"read": read, "kept": kept, "rejected": counts},
        "edits": edit_counts,
        "languages": {lang: {"documents": d, "tokens": t} for lang, (d, t) in sorted((languages or {}).items())},
        "tokens": {split: sum(s["tokens"] for s in shards if s["split"] == split) for split in SPLITS},
        "tokenizer": {
            "path": info["path"],
            "kind": info["kind"],
            "vocab_size": info["vocab_size"],
            "eos_id": info["eos_id"],
            "sha256": info["sha256"],
            "trained": info["trained"],
            "sample_chars": info["sample_chars"],
        },
        "shards": shards,
        "rejected_files": [f"{REJECTED_DIR}/{os.path.basename(p)}" for p in sorted(rejected_files)],
        "config": config,
    }


def _sum_pairs(pairs) -> tuple[int, int]:
    """(documents, tokens) pairs -> their sums (a CombinePerKey function: it may see partial sums)."""
    docs = tokens = 0
    for d, t in pairs:
        docs, tokens = docs + d, tokens + t
    return docs, tokens


class _WriteManifestFn(beam.DoFn):
    def __init__(self, output_dir: str, config: dict):
        self.output_dir, self.config = output_dir, config

    def process(self, _, read, rejected, shard_stats, info, rejected_files, edits, languages):
        manifest = build_manifest(read, dict(rejected), list(shard_stats), info, self.config, list(rejected_files),
                                  dict(edits), {lang: tuple(n) for lang, n in languages.items()})
        remove_runs(self.output_dir)  # every shard is in place (its stats are here); a retry finds none left
        path = FileSystems.join(self.output_dir, MANIFEST_NAME)
        write_bytes(path, manifest_json(manifest, path).encode("utf-8"))
        yield manifest


class WriteManifest(beam.PTransform):
    """PBegin -> [manifest]: runs after every shard, the tokenizer and the rejected files are in place.

    ``record_counts`` are the numbers of raw records parsed (ParseRecords, one per bundle); ``reason_counts``
    are (reason, count) pairs (of every WriteRejected, per bundle, flattened: a reason may appear many times);
    ``rejected_files`` the names returned by every WriteRejected; ``edit_counts`` (edit, count) pairs of the
    stages that edit text; ``language_counts`` (language, (documents, tokens)) pairs of the tokenize stage. A
    name may appear many times in each: they are summed here.
    """

    def __init__(self, output_dir: str, config: dict, record_counts, reason_counts, shard_stats, tokenizer,
                 rejected_files, edit_counts, language_counts):
        super().__init__()
        self.output_dir, self.config = output_dir, config
        self.record_counts, self.reason_counts, self.shard_stats = record_counts, reason_counts, shard_stats
        self.tokenizer, self.rejected_files = tokenizer, rejected_files
        self.edit_counts, self.language_counts = edit_counts, language_counts

    def expand(self, pbegin):
        read = self.record_counts | "SumRead" >> beam.CombineGlobally(sum)
        per_reason = self.reason_counts | "SumPerReason" >> beam.CombinePerKey(sum)
        per_edit = self.edit_counts | "SumPerEdit" >> beam.CombinePerKey(sum)
        per_language = self.language_counts | "SumPerLanguage" >> beam.CombinePerKey(_sum_pairs)
        AsList, AsDict, AsSingleton = beam.pvalue.AsList, beam.pvalue.AsDict, beam.pvalue.AsSingleton
        return (
            pbegin
            | "Once" >> beam.Create([None])
            | "Write" >> beam.ParDo(
                _WriteManifestFn(self.output_dir, self.config),
                AsSingleton(read), AsDict(per_reason), AsList(self.shard_stats), AsSingleton(self.tokenizer),
                AsList(self.rejected_files), AsDict(per_edit), AsDict(per_language),
            )
        )
