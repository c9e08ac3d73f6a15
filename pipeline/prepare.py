"""Data preparation: raw text -> filtered, deduplicated, tokenized Megatron shards + manifest.json.

One Apache Beam pipeline; build_pipeline wires these stages, in this order, each from its own module:

    pipeline.read             ReadFiles / ReadHuggingFace   input files (JSONL, Parquet, text, WET) or dataset
                                                            rows -> raw records
    pipeline.filter_stage     ParseRecords                  raw record -> Document | Rejection (invalid_utf8, ...)
    pipeline.web_stages       UrlFilter                     --url-blocklist: Document -> kept | url_blocked
    pipeline.language_stage   LanguageFilter                lid.176: Document -> kept with .language | language
    pipeline.filter_stage     QualityFilter                 --rules gopher,c4,fineweb: Document -> kept (C4's lines
                                                            removed) | Rejection (too_few_words, c4_..., fineweb_...)
    pipeline.dedup            ExactDedup                    copies dropped where they are read, then per bucket of
                                                            text hashes: one document per text stays, no hot key
    pipeline.near_dedup       NearDedup                     MinHash LSH band links -> connected components
                                                            (pipeline.components) -> one per cluster | near_duplicate
    pipeline.web_stages       RedactPII                     --redact-pii: e-mail and public IP addresses replaced
    pipeline.tokenizer_stage  TrainTokenizer / GivenTokenizer   hash sample -> DIR/tokenizer.model -> tokenizer info
    pipeline.write            PlanWrite                     filtered text size -> parts per shard (bounded groups)
    pipeline.tokenizer_stage  TokenizeAndAssign             Document -> token bytes, batched per (split, shard, part)
                                                            (pipeline.split: hashes of the document_key)
    pipeline.write            WriteShards                   per part: a key-sorted run file; per shard: k-way merge
                                                            of its runs -> .bin, then .idx (one part: written directly)
    pipeline.rejected         WriteRejected                 each dropping stage's Rejections -> DIR/rejected/,
                                                            and their counts per reason
    pipeline.manifest_stage   WriteManifest                 totals -> DIR/manifest.json (written last)

The tokenizer is trained inside the same pipeline: the sample is a CombineGlobally over the deduplicated
documents, the trained model is a singleton side input of the tokenize stage, so the runner finishes the
sample before tokenizing and nothing is read or filtered twice. Heavy objects (the tokenizer, a Hugging Face
dataset) are built in ``setup()`` or once per worker, never pickled with a DoFn. Hashes use sha256, never
Python's ``hash()``, so every worker and every run agrees. pipeline.layout names every file of DIR; --overwrite
removes exactly those files and refuses a DIR holding anything else.

Run it (local, two worker processes; Beam flags pass straight through):

    python -m pipeline.prepare --builtin-corpus --output data/ --vocab-size 8000 --direct_num_workers 2
    python -m pipeline.prepare --input 'corpus/*.jsonl.gz' --input 'extra/*.parquet' --output data/

On Dataflow (inputs and output on GCS):

    python -m pipeline.prepare --input 'gs://B/raw/*.jsonl.zst' --output gs://B/data \\
        --runner DataflowRunner --project P --region R --temp_location gs://B/tmp --setup_file ./setup.py

Without --runner the local FnApiRunner is used directly (in-process, or one process per worker with
--direct_num_workers N), Beam's own, so Beam never tries to download its Prism runner. Every grouping is
bounded by the pipeline's shape, not by the runner (docs/data.md, "Groups and their bounds").
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields

from pipeline import layout
from pipeline.c4_rules import C4Config
from pipeline.files import is_remote, list_tree, remove_listed
from pipeline.filters import FilterConfig
from pipeline.fineweb_rules import FineWebConfig
from pipeline.gc_freeze import frozen_run
from pipeline.language import LanguageConfig, model_info
from pipeline.minhash import NearDedupConfig
from pipeline.manifest import MANIFEST_NAME, load_manifest
from pipeline.progress import ProgressPrinter

LOG = logging.getLogger("pipeline.prepare")

MIN_VOCAB_SIZE = 320  # 256 byte-fallback pieces + 3 specials + room for merges
MAX_SHARDS = 99_999  # shard names have five digits
DEFAULT_MAX_GROUP_MB = 256.0
DEFAULT_REMOTE_GROUPS = 64  # a runner whose worker count is not given up front (Dataflow autoscaling)
LOCAL_RUNNERS = (None, "DirectRunner", "SwitchingDirectRunner", "FnApiRunner")  # --runner values run locally
RULE_SETS = ("gopher", "c4", "fineweb")  # --rules; "none" turns every quality rule off
DEFAULT_RULES = "gopher,c4,fineweb"  # FineWeb's sets (docs/filters.md)
NEAR_DEDUP_SCOPES = ("corpus", "input")  # --near-dedup-by
# Config dataclasses whose fields are flags "--PREFIX-FIELD" (dest PREFIX_FIELD); FilterConfig's have no prefix.
CONFIG_FLAGS = (("", FilterConfig), ("c4", C4Config), ("fineweb", FineWebConfig), ("minhash", NearDedupConfig))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.prepare",
        description="Filter, deduplicate and tokenize text into Megatron-compatible shards. "
        "Unknown flags (--runner, --direct_num_workers, --project, ...) go to Beam's PipelineOptions.",
        allow_abbrev=False,  # never let a Beam flag be taken for an abbreviation of ours
    )
    src = p.add_argument_group("inputs")
    src.add_argument("--input", action="append", default=[], metavar="GLOB",
                     help="input files: JSONL, Parquet or .txt, optionally .gz/.zst; local or gs://; repeatable")
    src.add_argument("--format", choices=("auto", "jsonl", "parquet", "text", "wet"), default="auto",
                     help="input format; auto = by extension (.jsonl/.json/.ndjson, .parquet, .warc.wet.gz/.wet.gz/.wet "
                     "= Common Crawl WET, anything else = text)")
    src.add_argument("--text-field", default="text", help="JSONL key / Parquet column / dataset column of the text")
    src.add_argument("--id-field", default="id", help="key/column of the document id (optional in the data)")
    src.add_argument("--url-field", default="url",
                     help="key/column of the page URL (optional in the data; WET records always carry theirs)")
    src.add_argument("--builtin-corpus", action="store_true",
                     help="gather the built-in corpus (stdlib docstrings, package descriptions) into DIR/_corpus "
                     "and use it as input")
    src.add_argument("--builtin-corpus-mb", type=float, default=None,
                     help="cap the built-in corpus at this many MB (default: all of it)")
    src.add_argument("--builtin-site-packages", action="store_true",
                     help="add docstrings of installed site-packages to the built-in corpus (more text)")
    src.add_argument("--builtin-sources", default="stdlib,dist", metavar="NAMES",
                     help="built-in corpus sources, comma-separated, of stdlib, dist, site (default stdlib,dist)")
    src.add_argument("--hf-dataset", default=None, metavar="NAME_OR_PATH",
                     help="a Hugging Face dataset: a directory saved with save_to_disk, or a hub name (local runs)")
    src.add_argument("--hf-split", default="train", help="split of --hf-dataset")

    out = p.add_argument_group("output")
    out.add_argument("--output", required=True, metavar="DIR", help="output directory (local or gs://)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run's outputs in DIR: removes exactly the files this tool writes, and "
                     "refuses a DIR that holds anything else (without it, a non-empty DIR is refused)")
    out.add_argument("--train-shards", type=int, default=8, help="number of train shards")
    out.add_argument("--val-shards", type=int, default=1, help="number of val shards")
    out.add_argument("--val-fraction", type=float, default=0.01,
                     help="fraction of documents in the val split (hash of the document key); 0 = no val split")
    out.add_argument("--rejected-files", type=int, default=0,
                     help="rejected/STAGE-*.jsonl.gz files per dropping stage (parse, quality, dedup_early, dedup); 0 = one per "
                     "bundle, written where the records are dropped (no shuffle of the rejected text)")

    tok = p.add_argument_group("tokenizer")
    tok.add_argument("--tokenizer", default=None, metavar="PATH",
                     help="use this tokenizer instead of training one: a SentencePiece .model file, or a Hugging "
                     "Face tokenizer (a tokenizer.json, a folder holding one, or a Hub name such as gpt2)")
    tok.add_argument("--eos-token", default=None, metavar="TOKEN",
                     help="Hugging Face tokenizers: the special token that ends each document (default: the "
                     "eos_token of the tokenizer_config.json beside tokenizer.json)")
    tok.add_argument("--vocab-size", type=int, default=32000, help="vocabulary size of the trained tokenizer")
    tok.add_argument("--tokenizer-sample-mb", type=float, default=32.0,
                     help="train the tokenizer on this many MB (million characters) of kept documents, "
                     "chosen by hash of the document key")

    out.add_argument("--no-progress", dest="progress", action="store_false",
                     help="local runs: do not print a progress line to stderr every 10 s and at each new stage")
    out.add_argument("--max-group-mb", type=float, default=DEFAULT_MAX_GROUP_MB,
                     help="bound on one group of the dedup and write steps (the values under one key as they cross "
                     "the shuffle): dedup buckets and parts per shard are planned to stay under it")
    out.add_argument("--min-groups", type=int, default=0,
                     help="at least this many dedup buckets and train write groups, so that every worker gets "
                     "work; 0 = the local worker count, or Dataflow's --max_num_workers / --num_workers, else "
                     f"{DEFAULT_REMOTE_GROUPS}")

    web = p.add_argument_group("web pages (docs/filters.md)")
    web.add_argument("--url-blocklist", default=None, metavar="FILE",
                     help="drop documents whose URL's host, or a parent domain of it, is listed in FILE (one domain "
                     "a line, # comments); reason url_blocked")
    web.add_argument("--redact-pii", action="store_true",
                     help="replace e-mail addresses and public IP addresses with fixed placeholders after dedup "
                     "(FineWeb's step); counted under edits pii_email, pii_ip")

    lid = p.add_argument_group("language identification (fastText lid.176)")
    lid.add_argument("--no-language-id", dest="language_id", action="store_false",
                     help="skip language identification (on by default: it labels every document, and with "
                     "--languages keeps only those); the manifest's languages is then empty")
    defaults = LanguageConfig()
    lid.add_argument("--languages", default="", metavar="CODES",
                     help=_field_help(LanguageConfig, "languages"))
    lid.add_argument("--min-language-score", type=float, default=defaults.min_score,
                     help=_field_help(LanguageConfig, "min_score"))

    flt = p.add_argument_group("quality rules (Gopher: Rae et al. 2021, Table A1; C4: Raffel et al. 2020; FineWeb)")
    flt.add_argument("--rules", default=DEFAULT_RULES, metavar="SETS",
                     help=f"quality rule sets to apply, comma-separated, of {', '.join(RULE_SETS)}; or none "
                     f"(default {DEFAULT_RULES})")
    _add_config_flags(flt, FilterConfig, "")
    _add_config_flags(flt, C4Config, "c4")
    _add_config_flags(flt, FineWebConfig, "fineweb")

    near = p.add_argument_group("near-duplicate removal (MinHash LSH, docs/near_dedup.md)")
    near.add_argument("--no-near-dedup", dest="near_dedup", action="store_false",
                      help="skip MinHash near-duplicate removal (on by default)")
    near.add_argument("--near-dedup-by", choices=NEAR_DEDUP_SCOPES, default="corpus",
                      help="corpus: one document of each cluster of near-duplicates stays corpus-wide; input: within "
                      "each --input glob only (FineWeb dedups each crawl separately)")
    _add_config_flags(near, NearDedupConfig, "minhash")
    return p


def _field_help(cls, name: str) -> str | None:
    return next(f.metadata.get("help") for f in fields(cls) if f.name == name)


def _add_config_flags(group, cls, prefix: str) -> None:
    """One flag per field of the config dataclass ``cls``: --PREFIX-FIELD (dest PREFIX_FIELD), or --FIELD without a
    prefix; bools are --x / --no-x."""
    for f in fields(cls):
        dest = f"{prefix}_{f.name}" if prefix else f.name
        flag = "--" + dest.replace("_", "-")
        if f.type in ("bool", bool):
            group.add_argument(flag, dest=dest, default=f.default, action=argparse.BooleanOptionalAction,
                               help=f.metadata.get("help"))
        else:
            group.add_argument(flag, dest=dest, default=f.default, type=int if f.type in ("int", int) else float,
                               help=f.metadata.get("help"))


def _config_from_args(args: argparse.Namespace, cls, prefix: str):
    return cls(**{f.name: getattr(args, f"{prefix}_{f.name}" if prefix else f.name) for f in fields(cls)})


def _config_dests() -> set[str]:
    """The argparse dests of every config-dataclass flag (recorded in the manifest as their configs instead)."""
    return {f"{prefix}_{f.name}" if prefix else f.name for prefix, cls in CONFIG_FLAGS for f in fields(cls)}


@dataclass(frozen=True)
class Stages:
    """Which optional stages run and with what settings; None = the stage is off."""

    gopher: FilterConfig | None
    c4: C4Config | None
    fineweb: FineWebConfig | None
    language: LanguageConfig | None
    near_dedup: NearDedupConfig | None
    blocklist: str | None  # the --url-blocklist file, checked
    redact_pii: bool


def stage_configs(args: argparse.Namespace) -> Stages:
    """Every stage's config from the flags, each checked (a mistake names its flag); reads --url-blocklist."""
    sets = rule_sets(args.rules)
    configs = {}
    for name, cls, prefix in (("gopher", FilterConfig, ""), ("c4", C4Config, "c4"), ("fineweb", FineWebConfig, "fineweb")):
        cfg = _config_from_args(args, cls, prefix)
        cfg.validate()  # checked even when --rules leaves it unused
        configs[name] = cfg if name in sets else None
    if args.languages and not args.language_id:
        raise ValueError("--languages needs language identification: drop --no-language-id, or drop --languages")
    language = LanguageConfig(languages=args.languages, min_score=args.min_language_score)
    language.validate()
    near = _config_from_args(args, NearDedupConfig, "minhash")
    near.validate()
    if args.url_blocklist:
        from pipeline.web_stages import load_blocklist

        load_blocklist(args.url_blocklist)  # each line checked before anything runs
    return Stages(configs["gopher"], configs["c4"], configs["fineweb"], language if args.language_id else None,
                  near if args.near_dedup else None,
                  args.url_blocklist or None, args.redact_pii)


def validate_args(args: argparse.Namespace) -> None:
    """Option checks that need no I/O; each message names the flag and the fix."""
    if not (args.input or args.builtin_corpus or args.hf_dataset):
        raise ValueError("no input: pass --input GLOB (repeatable), --builtin-corpus or --hf-dataset NAME_OR_PATH")
    if args.vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"--vocab-size {args.vocab_size} is too small: use at least {MIN_VOCAB_SIZE} "
                         "(256 byte-fallback pieces and the special tokens come first)")
    if args.eos_token is not None and not args.tokenizer:
        raise ValueError("--eos-token names the EOS of a given Hugging Face tokenizer: pass --tokenizer too, or drop "
                         "--eos-token (a trained tokenizer has its own EOS)")
    if not 0 < args.tokenizer_sample_mb <= 1e5:
        raise ValueError(f"--tokenizer-sample-mb {args.tokenizer_sample_mb}: use a positive number of MB")
    if not 0 <= args.val_fraction < 1:
        raise ValueError(f"--val-fraction {args.val_fraction}: use a fraction in [0, 1), e.g. 0.01")
    for flag, value in (("--train-shards", args.train_shards), ("--val-shards", args.val_shards)):
        if not 1 <= value <= MAX_SHARDS:
            raise ValueError(f"{flag} {value}: use a count between 1 and {MAX_SHARDS}")
    if not 0 <= args.rejected_files <= MAX_SHARDS:
        raise ValueError(f"--rejected-files {args.rejected_files}: use 0 (one file per bundle) or a count up to "
                         f"{MAX_SHARDS}")
    if not 0.001 <= args.max_group_mb <= 1e6:
        raise ValueError(f"--max-group-mb {args.max_group_mb}: use a size in MB between 0.001 and 1e6")
    if not 0 <= args.min_groups <= MAX_SHARDS:
        raise ValueError(f"--min-groups {args.min_groups}: use 0 (automatic) or a count up to {MAX_SHARDS}")
    rule_sets(args.rules)
    if args.builtin_corpus:
        from pipeline.builtin_corpus import parse_sources

        try:
            parse_sources(args.builtin_sources)
        except ValueError as e:
            raise ValueError(f"--builtin-sources: {e}") from None
    if args.builtin_corpus_mb is not None and args.builtin_corpus_mb <= 0:
        raise ValueError(f"--builtin-corpus-mb {args.builtin_corpus_mb}: use a positive number of MB")
    for flag, value in (("--text-field", args.text_field), ("--id-field", args.id_field),
                        ("--url-field", args.url_field)):
        if not value:
            raise ValueError(f"{flag} must not be empty")
    if args.builtin_corpus and is_remote(args.output):
        raise ValueError("--builtin-corpus gathers files on this machine and needs a local --output; for a gs:// "
                         "output, run `python -m pipeline.builtin_corpus --out DIR`, upload DIR, and pass --input")


def rule_sets(value: str) -> tuple[str, ...]:
    """The rule sets of --rules ("gopher", "none", ...), checked."""
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in RULE_SETS]
    if unknown or not names:
        raise ValueError(f"--rules {value!r}: use a comma-separated list of {', '.join(RULE_SETS)}, or none")
    return names


def resolve_inputs(globs: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    """({path: size in bytes}, {path: its input group}) of every file matched by the globs (local or gs://), sorted
    by path, each once; a glob matching nothing is an error. A file's group ("input-N") names the first --input
    glob that matched it, N its position among the --input flags (--near-dedup-by input)."""
    from apache_beam.io.filesystems import FileSystems

    files, groups = {}, {}
    for i, pattern in enumerate(globs):
        if not is_remote(pattern) and os.path.isdir(pattern):
            raise ValueError(f"--input {pattern} is a directory; pass a glob such as '{pattern.rstrip('/')}/*.jsonl.gz'")
        matched = [m for m in FileSystems.match([pattern])[0].metadata_list
                   if is_remote(m.path) or not os.path.isdir(m.path)]
        if not matched:
            raise FileNotFoundError(f"--input {pattern} matches no file; check the path (quote globs so the shell "
                                    "does not expand them)")
        files.update((m.path, m.size_in_bytes) for m in matched)
        for m in matched:
            groups.setdefault(m.path, f"input-{i}")
    return dict(sorted(files.items())), groups


def check_output(output: str, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless --overwrite; refuse an unwritable one. Then clear ours.

    --overwrite removes exactly the files this tool writes (pipeline.layout) and then, on a local disk, its
    emptied folders. Anything else in the directory, or in a folder this tool writes, is refused before a
    single file is deleted: a file is never removed because its name merely resembles one of ours.
    """
    if not is_remote(output):
        if os.path.exists(output) and not os.path.isdir(output):
            raise ValueError(f"--output {output} is a file; pass a directory")
        try:
            os.makedirs(output, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=output, prefix=".write-test-"):
                pass
        except OSError as e:
            raise ValueError(f"--output {output} is not writable ({e}); pick a directory you can write to") from e
    files, folders = _list_output(output)
    if not files and not folders:
        return
    if not overwrite:
        names = sorted({p.split("/")[0] for p in files + folders})
        done = "a finished run" if MANIFEST_NAME in names else "an unfinished run or other files"
        raise ValueError(f"--output {output} is not empty (holds {done}: {', '.join(names[:5])}); pass --overwrite to "
                         "replace this tool's outputs there, or choose a new directory")
    foreign = sorted([p for p in files if not layout.is_output(p)]
                     + [d for d in folders if not layout.is_output_dir(d)])
    top = [p for p in foreign if "/" not in p]
    if top:
        raise ValueError(f"--output {output} holds files or folders this tool did not write ({', '.join(top[:5])}); "
                         "--overwrite only replaces its own outputs: move them or choose a new directory")
    if foreign:
        raise ValueError(f"--output {output}: {', '.join(foreign[:5])} is in a folder this tool writes but is not "
                         "one of its files (--overwrite would leave it among the new outputs); move it out or choose "
                         "a new directory")
    # The manifest goes first, so an interrupted clean-up never leaves a directory that looks finished.
    first, rest = [p for p in files if p == MANIFEST_NAME], [p for p in files if p != MANIFEST_NAME]
    if is_remote(output):
        from apache_beam.io.filesystems import FileSystems

        for batch in (first, rest):
            if batch:
                FileSystems.delete([FileSystems.join(output, *p.split("/")) for p in batch])
        return
    remove_listed(output, first + rest, folders)


def _list_output(output: str) -> tuple[list[str], list[str]]:
    """(files, folders) under ``output``, relative with "/" separators. A symbolic link counts as a file (it is
    removed, never followed). On gs:// there are no folders, only files whose names hold "/"."""
    if is_remote(output):
        from apache_beam.io.filesystems import FileSystems

        base = output.rstrip("/") + "/"
        matched = FileSystems.match([base + "**"])[0].metadata_list
        return sorted(m.path[len(base):] for m in matched if not m.path.endswith("/")), []
    return list_tree(output)


# What a Hugging Face Hub repository name looks like ("gpt2", "EleutherAI/gpt-neox-20b"), as opposed to a path.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def load_given_tokenizer(path: str, eos_token: str | None = None) -> dict:
    """Read and check --tokenizer PATH up front; returns the tokenizer-info dict the pipeline passes around.

    PATH is a SentencePiece .model file, or a Hugging Face tokenizer: a tokenizer.json, a folder holding one, or
    a Hub name (pipeline.hf_tokenizer, which also says where the EOS token comes from).
    """
    from apache_beam.io.filesystems import FileSystems

    from pipeline.hf_tokenizer import resolve_hf_tokenizer
    from pipeline.tokenizer_file import HUGGINGFACE
    from pipeline.tokenizer_stage import tokenizer_info

    local_dir = not is_remote(path) and os.path.isdir(path)
    exists = local_dir or FileSystems.exists(path)
    if not exists and (path.endswith((".model", ".json")) or not _HUB_NAME.fullmatch(path)):
        raise FileNotFoundError(f"--tokenizer {path} does not exist; pass a SentencePiece .model file, a Hugging Face "
                                "tokenizer.json or tokenizer folder, or omit --tokenizer to train one")
    if exists and not local_dir and not path.endswith(".json"):
        if eos_token is not None:
            raise ValueError(f"--eos-token applies to Hugging Face tokenizers; the SentencePiece model {path} names "
                             "its own EOS piece: drop --eos-token")
        with FileSystems.open(path) as f:
            model = f.read()
        try:
            return tokenizer_info(model, trained=False)
        except (ValueError, RuntimeError, OSError) as e:
            raise ValueError(f"--tokenizer {path} is not a SentencePiece model ({e}); pass a SentencePiece .model "
                             "file, or a Hugging Face tokenizer.json or tokenizer folder") from e
    tok = resolve_hf_tokenizer(path, eos_token)
    return tokenizer_info(tok.model_proto, trained=False, kind=HUGGINGFACE, config=tok.config_json)


def pipeline_options(beam_args: list[str]):
    """PipelineOptions from the pass-through flags, plus the runner instance to use (None = the named runner).

    Without --runner (or with DirectRunner) this returns Beam's FnApiRunner, given the options the way Beam's
    DirectRunner gives them to its workers: DirectRunner itself would first try the Prism runner, which downloads
    a binary. --direct_num_workers N > 1 implies --direct_running_mode=multi_processing unless another mode is
    given.
    """
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    args = list(beam_args)
    options = PipelineOptions(args)
    direct = options.view_as(DirectOptions)
    if direct.direct_num_workers != 1 and not any(a.startswith("--direct_running_mode") for a in args):
        args.append("--direct_running_mode=multi_processing")
        options = PipelineOptions(args)
    if options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        return options, None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return options, FnApiRunner(provision_info=info)


def local_workers(options) -> int | None:
    """Worker processes (or threads) of a local run, None for another runner."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    if options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        return None
    return options.view_as(DirectOptions).direct_num_workers or os.cpu_count() or 1


def min_groups(args: argparse.Namespace, options) -> int:
    """--min-groups, or when 0: every local worker, or Dataflow's worker cap, gets a dedup and a write group."""
    if args.min_groups:
        return args.min_groups
    local = local_workers(options)
    if local is not None:
        return local
    from apache_beam.options.pipeline_options import WorkerOptions

    workers = options.view_as(WorkerOptions)
    return workers.max_num_workers or workers.num_workers or DEFAULT_REMOTE_GROUPS


def plan_buckets(input_bytes: int, max_group_bytes: int, min_buckets: int) -> int:
    """Dedup buckets (pipeline.dedup): at least ``min_buckets``, and enough that a bucket's packed documents stay
    under ``max_group_bytes``. Documents cross the dedup shuffle zstd-compressed, about as small as gzip makes
    them; the input's size on disk (compressed or not) counted twice covers them with room to spare."""
    return max(1, min_buckets, math.ceil(2 * input_bytes / max_group_bytes))


def is_dry_run(options) -> bool:
    """Dataflow's --dry_run True: the job is built (translated, every DoFn pickled) and not submitted."""
    from apache_beam.options.pipeline_options import TestOptions

    return bool(options.view_as(TestOptions).dry_run)


def build_pipeline(p, args, stages: Stages, sizes: dict[str, int], hf_rows: int,
                   given_tokenizer: dict | None, config: dict, groups: int, dedup_buckets: int,
                   progress_dir: str | None = None, input_groups: dict[str, str] | None = None) -> None:
    """Attach every stage to pipeline ``p``, in the order of the module docstring. ``stages``: which optional
    stages run; ``sizes``: {input file: bytes}; ``groups``: the least number of train write groups;
    ``progress_dir``: where workers report progress (pipeline.progress), or None; ``input_groups``: {input file:
    group} when near-dedup runs per input group."""
    import apache_beam as beam

    from pipeline.dedup import ExactDedup
    from pipeline.filter_stage import ParseRecords, QualityFilter
    from pipeline.input_groups import InputGroups
    from pipeline.language_stage import LanguageFilter
    from pipeline.manifest_stage import WriteManifest
    from pipeline.near_dedup import NearDedup
    from pipeline.read import ReadFiles, ReadHuggingFace
    from pipeline.rejected import WriteRejected
    from pipeline.tokenizer_stage import GivenTokenizer, TokenizeAndAssign, TrainTokenizer
    from pipeline.web_stages import RedactPII, UrlFilter
    from pipeline.write import PlanWrite, WriteShards

    out = args.output
    sources = []
    progress = progress_dir
    if sizes:
        sources.append(p | "ReadFiles" >> ReadFiles(list(sizes), args.format, args.text_field, args.id_field,
                                                    sizes=sizes, progress_dir=progress, url_field=args.url_field))
    if args.hf_dataset:
        sources.append(p | "ReadHuggingFace" >> ReadHuggingFace(
            args.hf_dataset, args.hf_split, hf_rows, args.text_field, args.id_field, progress_dir=progress,
            url_field=args.url_field))
    records = tuple(sources) | "AllRecords" >> beam.Flatten()

    docs, unparsable, record_counts = records | "ParseRecords" >> ParseRecords(
        args.text_field, args.id_field, progress, url_field=args.url_field)
    dropping = [("parse", unparsable)]  # (stage, Rejections): each writes rejected/STAGE-*.jsonl.gz
    edits = []  # (edit, count) PCollections of the stages that change text
    if stages.blocklist is not None:
        docs, blocked = docs | "UrlFilter" >> UrlFilter(stages.blocklist, progress)
        dropping.append(("url", blocked))
    if stages.language is not None:
        docs, other_language = docs | "LanguageFilter" >> LanguageFilter(stages.language, progress)
        dropping.append(("language", other_language))
    kept = docs
    if stages.gopher or stages.c4 or stages.fineweb:
        kept, low_quality, quality_edits = docs | "QualityFilter" >> QualityFilter(
            stages.gopher, stages.c4, stages.fineweb, progress)
        dropping.append(("quality", low_quality))
        edits.append(quality_edits)
    unique, dropped_early, duplicates = kept | "ExactDedup" >> ExactDedup(dedup_buckets, progress)
    dropping += [("dedup_early", dropped_early), ("dedup", duplicates)]
    if stages.near_dedup is not None:
        group_of = InputGroups(input_groups) if input_groups is not None else None
        unique, near_duplicates = unique | "NearDedup" >> NearDedup(stages.near_dedup, dedup_buckets, group_of,
                                                                    progress)
        dropping.append(("near_dedup", near_duplicates))
    if stages.redact_pii:
        unique, pii_edits = unique | "RedactPII" >> RedactPII(progress)
        edits.append(pii_edits)
    if given_tokenizer is not None:
        tokenizer = p | "GivenTokenizer" >> GivenTokenizer(given_tokenizer, out)
    else:
        tokenizer = unique | "TrainTokenizer" >> TrainTokenizer(
            args.vocab_size, int(args.tokenizer_sample_mb * 1e6), out)
    val_shards = args.val_shards if args.val_fraction > 0 else 0
    plan = kept | "PlanWrite" >> PlanWrite(tokenizer, args.val_fraction, args.train_shards, val_shards,
                                           int(args.max_group_mb * (1 << 20)), groups)
    keyed, language_counts = unique | "Tokenize" >> TokenizeAndAssign(tokenizer, plan, args.val_fraction, args.train_shards,
                                                     val_shards, progress_dir=progress)
    shard_stats = keyed | "WriteShards" >> WriteShards(tokenizer, plan, out, args.train_shards, val_shards, progress)
    # Each dropping stage writes and counts its own rejections (no Flatten first), so that work fuses into
    # the stage and the rejected text never passes through the runner; only file names and counts meet.
    files, counts = [], []
    for stage, rejected in dropping:
        stage_files, stage_counts = rejected | f"WriteRejected-{stage}" >> WriteRejected(out, stage, args.rejected_files)
        files.append(stage_files)
        counts.append(stage_counts)
    rejected_files = files | "AllRejectedFiles" >> beam.Flatten()
    reason_counts = counts | "AllReasonCounts" >> beam.Flatten()
    edit_counts = edits | "AllEditCounts" >> beam.Flatten() if edits else p | "NoEdits" >> beam.Create([])
    _ = p | "WriteManifest" >> WriteManifest(out, config, record_counts, reason_counts, shard_stats, tokenizer,
                                             rejected_files, edit_counts, language_counts)


@dataclass
class Outcome:
    """What a run gives back: the manifest (None for a dry run), the largest group of each grouping step in bytes
    and how many groups it had (pipeline.counters.GROUP_METRICS; empty where the runner reports no metrics), the
    write groups' bound in bytes, and for a dry run the number of transforms of the job that was built."""

    manifest: dict | None
    largest_groups: dict[str, int] = field(default_factory=dict)
    group_counts: dict[str, int] = field(default_factory=dict)
    max_group_bytes: int = 0
    dry_run_transforms: int = 0


def run(argv: list[str] | None = None) -> dict:
    """Parse flags, check everything that can be checked up front, run the pipeline, return the manifest."""
    outcome = prepare(argv)
    if outcome.manifest is None:
        raise ValueError("a dry run (--dry_run True) builds the job without running it: there is no manifest")
    return outcome.manifest


def prepare(argv: list[str] | None = None) -> Outcome:
    """run(), returning the whole Outcome."""
    import apache_beam as beam

    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    validate_args(args)
    stages = stage_configs(args)
    options, runner = pipeline_options(beam_args)
    dry_run = is_dry_run(options)

    sizes, file_groups = resolve_inputs(args.input)
    files = list(sizes)
    given = load_given_tokenizer(args.tokenizer, args.eos_token) if args.tokenizer else None
    hf_rows, hf_bytes = 0, 0
    if args.hf_dataset:
        from pipeline.read import load_hf_dataset

        ds = load_hf_dataset(args.hf_dataset, args.hf_split)
        if args.text_field not in ds.column_names:
            raise ValueError(f"--hf-dataset {args.hf_dataset} has no column {args.text_field!r} "
                             f"(columns: {ds.column_names}); set --text-field")
        hf_rows, hf_bytes = len(ds), int(ds.data.nbytes)
    if dry_run and is_remote(args.output):
        # Listing or writing a gs:// output needs Cloud Storage credentials, which a dry run must not need.
        LOG.warning("dry run: the checks of --output %s are skipped (they need Cloud Storage access)", args.output)
    else:
        check_output(args.output, args.overwrite)
    if args.builtin_corpus:
        from pipeline.builtin_corpus import parse_sources, write_builtin_corpus

        max_bytes = int(args.builtin_corpus_mb * 1e6) if args.builtin_corpus_mb else None
        corpus = write_builtin_corpus(os.path.join(args.output, layout.CORPUS_DIR), max_bytes=max_bytes,
                                      include_site_packages=args.builtin_site_packages,
                                      sources=parse_sources(args.builtin_sources))
        for c in corpus:
            sizes[os.path.abspath(c)] = os.path.getsize(c)
        files = sorted(sizes)
    if not files and not hf_rows:
        raise ValueError("the inputs hold no records (empty dataset); check --input / --hf-dataset")

    config = {k: v for k, v in sorted(vars(args).items()) if k not in _config_dests()}
    config.update(filters=asdict(stages.gopher) if stages.gopher else None,
                  c4=asdict(stages.c4) if stages.c4 else None,
                  fineweb=asdict(stages.fineweb) if stages.fineweb else None,
                  language=dict(asdict(stages.language), model=model_info()) if stages.language else None,
                  near_dedup=asdict(stages.near_dedup) if stages.near_dedup else None,
                  beam_args=list(beam_args), input_files=len(files))
    input_groups = None
    if stages.near_dedup is not None and args.near_dedup_by == "input":
        input_groups = {f: file_groups.get(f, "builtin") for f in files}  # the built-in corpus: a group of its own
    groups = min_groups(args, options)
    max_group = int(args.max_group_mb * (1 << 20))
    sizes = {f: sizes[f] for f in files}
    buckets = plan_buckets(sum(sizes.values()) + hf_bytes, max_group, groups)
    if dry_run:
        p = beam.Pipeline(runner=runner, options=options)
        build_pipeline(p, args, stages, sizes, hf_rows, given, config, groups, buckets, input_groups=input_groups)
        transforms = len(p.to_runner_api().components.transforms)
        p.run().wait_until_finish()
        return Outcome(None, max_group_bytes=max_group, dry_run_transforms=transforms)
    with ExitStack() as stack:
        progress_dir = None
        if runner is not None and args.progress:  # a local run: its workers share this machine's disk
            progress_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="prepare-progress-"))
            stack.enter_context(ProgressPrinter(progress_dir, len(files), sum(sizes.values())))
        p = beam.Pipeline(runner=runner, options=options)
        build_pipeline(p, args, stages, sizes, hf_rows, given, config, groups, buckets, progress_dir, input_groups)
        stack.enter_context(frozen_run())  # the imports and the graph, out of the collector's way (gc_freeze)
        result = p.run()
        result.wait_until_finish()
    largest, counts = group_metrics(result)

    if is_remote(args.output):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(FileSystems.join(args.output, MANIFEST_NAME)) as f:
            manifest = json.loads(f.read().decode("utf-8"))
    else:
        manifest = load_manifest(args.output)
    return Outcome(manifest, largest, counts, max_group)


def group_metrics(result) -> tuple[dict[str, int], dict[str, int]]:
    """({step: bytes of its largest group}, {step: number of groups}) from the run's distribution metrics
    (pipeline.counters.GROUP_METRICS); empty for a runner that reports none."""
    from apache_beam.metrics.metric import MetricsFilter

    from pipeline.counters import COUNTER_NAMESPACE, GROUP_METRICS

    largest, counts = {}, {}
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["distributions"]
    except (NotImplementedError, AttributeError):  # a runner without metrics
        return largest, counts
    for step, name in GROUP_METRICS.items():
        for m in found:
            value = m.committed if m.committed is not None else m.attempted
            if m.key.metric.name != name or value is None or not value.count:
                continue
            largest[step] = max(largest.get(step, 0), value.max)
            counts[step] = counts.get(step, 0) + value.count
    return largest, counts


def summary(manifest: dict) -> str:
    docs, tokens = manifest["documents"], manifest["tokens"]
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(docs["rejected"].items(), key=lambda kv: -kv[1]) if n)
    return (f"read {docs['read']} | kept {docs['kept']} | rejected {docs['read'] - docs['kept']} ({reasons or 'none'}) | "
            f"tokens train {tokens['train']} val {tokens['val']} | vocab {manifest['tokenizer']['vocab_size']}")


def groups_line(outcome: Outcome) -> str:
    """One line: the largest group of each grouping step, against the write bound."""
    mb = 1 << 20
    sizes = ", ".join(f"{step} {n / mb:.3f} MB of {outcome.group_counts[step]} groups"
                      for step, n in sorted(outcome.largest_groups.items()))
    return (f"largest group: {sizes or 'not reported by this runner'} "
            f"(dedup and write groups bounded at {outcome.max_group_bytes / mb:.3g} MB)")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Local worker processes forward start-up notices ("No semi_persistent_directory", discarded runner
    # flags) as warnings on every run; their errors still come through.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    try:
        outcome = prepare(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if outcome.manifest is None:
        print(f"dry run: the Dataflow job was built ({outcome.dry_run_transforms} transforms, every DoFn pickled) "
              "and not submitted")
        return 0
    print(groups_line(outcome))
    print(summary(outcome.manifest))
    return 0


def exit_now(code: int) -> None:
    """End the command with ``code`` once main() has returned, without the interpreter's teardown.

    By then every output is closed and renamed into place, the manifest written and Beam's worker processes
    stopped; what is left is freeing Beam's, gRPC's and NumPy's modules object by object, a fixed few tenths of
    a second on every run (benchmarks/RESULTS.md, data preparation). Logging and the standard streams are
    flushed first; exceptions never get here, they exit the usual way with their traceback."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
