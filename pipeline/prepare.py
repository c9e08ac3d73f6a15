"""Data preparation: raw text -> filtered, deduplicated, tokenized Megatron shards + manifest.json.

One Apache Beam pipeline; build_pipeline wires these stages, in this order, each from its own module:

    pipeline.read             ReadFiles / ReadHuggingFace   input files or dataset rows -> raw records
    pipeline.filter_stage     ParseRecords                  raw record -> Document | Rejection (invalid_utf8, ...)
                              GopherFilter                  Document -> kept | Rejection (too_few_words, ...)
    pipeline.dedup            ExactDedup                    global GroupByKey on dedup_key; one document per key stays
    pipeline.tokenizer_stage  TrainTokenizer / GivenTokenizer   hash sample -> DIR/tokenizer.model -> tokenizer info
                              TokenizeAndAssign             Document -> token bytes, batched per (split, shard)
                                                            (pipeline.split: a hash of the document_key)
    pipeline.write            WriteShards                   per shard: sort by key, write .bin, then .idx
    pipeline.rejected         WriteRejected, CountRejected  each dropping stage's Rejections -> DIR/rejected/
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
--direct_num_workers N), so Beam never tries to download its Prism runner.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict, fields

from pipeline import layout
from pipeline.files import is_remote, list_tree, remove_listed
from pipeline.filters import FilterConfig
from pipeline.local_runner import DEFAULT_TRANSFER_BYTES
from pipeline.manifest import MANIFEST_NAME, load_manifest

LOG = logging.getLogger("pipeline.prepare")

MIN_VOCAB_SIZE = 320  # 256 byte-fallback pieces + 3 specials + room for merges
MAX_SHARDS = 99_999  # shard names have five digits


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
    src.add_argument("--format", choices=("auto", "jsonl", "parquet", "text"), default="auto",
                     help="input format; auto = by extension (.jsonl/.json/.ndjson, .parquet, anything else = text)")
    src.add_argument("--text-field", default="text", help="JSONL key / Parquet column / dataset column of the text")
    src.add_argument("--id-field", default="id", help="key/column of the document id (optional in the data)")
    src.add_argument("--builtin-corpus", action="store_true",
                     help="gather the built-in corpus (stdlib docstrings, package descriptions) into DIR/_corpus "
                     "and use it as input")
    src.add_argument("--builtin-corpus-mb", type=float, default=None,
                     help="cap the built-in corpus at this many MB (default: all of it)")
    src.add_argument("--builtin-site-packages", action="store_true",
                     help="add docstrings of installed site-packages to the built-in corpus (more text)")
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
                     help="rejected/STAGE-*.jsonl.gz files per dropping stage (parse, quality, dedup); 0 = one per "
                     "bundle, written where the records are dropped (no shuffle of the rejected text)")

    tok = p.add_argument_group("tokenizer")
    tok.add_argument("--tokenizer", default=None, metavar="PATH",
                     help="use this SentencePiece model instead of training one")
    tok.add_argument("--vocab-size", type=int, default=32000, help="vocabulary size of the trained tokenizer")
    tok.add_argument("--tokenizer-sample-mb", type=float, default=32.0,
                     help="train the tokenizer on this many MB (million characters) of kept documents, "
                     "chosen by hash of the document key")

    loc = p.add_argument_group("local runs (the FnApiRunner used without --runner)")
    loc.add_argument("--local-transfer-mb", type=float, default=DEFAULT_TRANSFER_BYTES / (1 << 20),
                     help="data messages between the local runner and its workers, both ways, of about this many "
                     "MB, so a worker never holds its whole share of a grouped stage nor 10 MB output buffers; "
                     "0 = Beam's stock runner and worker, which send that share as one message and outputs in "
                     "10 MB messages (same results, more worker memory)")

    flt = p.add_argument_group("filters (Gopher, Rae et al. 2021, Table A1)")
    for f in fields(FilterConfig):
        flt.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=f.default,
                         type=int if f.type in ("int", int) else float, help=f.metadata.get("help"))
    return p


def filter_config(args: argparse.Namespace) -> FilterConfig:
    cfg = FilterConfig(**{f.name: getattr(args, f.name) for f in fields(FilterConfig)})
    cfg.validate()
    return cfg


def validate_args(args: argparse.Namespace) -> None:
    """Option checks that need no I/O; each message names the flag and the fix."""
    if not (args.input or args.builtin_corpus or args.hf_dataset):
        raise ValueError("no input: pass --input GLOB (repeatable), --builtin-corpus or --hf-dataset NAME_OR_PATH")
    if args.vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"--vocab-size {args.vocab_size} is too small: use at least {MIN_VOCAB_SIZE} "
                         "(256 byte-fallback pieces and the special tokens come first)")
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
    if not 0 <= args.local_transfer_mb <= 1024:
        raise ValueError(f"--local-transfer-mb {args.local_transfer_mb}: use a size in MB up to 1024, "
                         "or 0 for Beam's stock transfers")
    if args.builtin_corpus_mb is not None and args.builtin_corpus_mb <= 0:
        raise ValueError(f"--builtin-corpus-mb {args.builtin_corpus_mb}: use a positive number of MB")
    for flag, value in (("--text-field", args.text_field), ("--id-field", args.id_field)):
        if not value:
            raise ValueError(f"{flag} must not be empty")
    if args.builtin_corpus and is_remote(args.output):
        raise ValueError("--builtin-corpus gathers files on this machine and needs a local --output; for a gs:// "
                         "output, run `python -m pipeline.builtin_corpus --out DIR`, upload DIR, and pass --input")


def resolve_inputs(globs: list[str]) -> list[str]:
    """Every file matched by the globs (local or gs://), sorted and de-duplicated; a glob matching nothing is an error."""
    from apache_beam.io.filesystems import FileSystems

    files = set()
    for pattern in globs:
        if not is_remote(pattern) and os.path.isdir(pattern):
            raise ValueError(f"--input {pattern} is a directory; pass a glob such as '{pattern.rstrip('/')}/*.jsonl.gz'")
        matched = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        matched = [m for m in matched if is_remote(m) or not os.path.isdir(m)]
        if not matched:
            raise FileNotFoundError(f"--input {pattern} matches no file; check the path (quote globs so the shell "
                                    "does not expand them)")
        files.update(matched)
    return sorted(files)


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


def load_given_tokenizer(path: str) -> dict:
    """Read and check --tokenizer PATH up front; returns the tokenizer-info dict the pipeline passes around."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.tokenizer_stage import tokenizer_info

    if not FileSystems.exists(path):
        raise FileNotFoundError(f"--tokenizer {path} does not exist; pass a SentencePiece .model file, or omit "
                                "--tokenizer to train one")
    if not is_remote(path):
        from pipeline.tokenizer import Tokenizer

        Tokenizer(path)  # raises naming the file if it is not a SentencePiece model
    with FileSystems.open(path) as f:
        model = f.read()
    try:
        return tokenizer_info(model, trained=False)
    except (ValueError, RuntimeError, OSError) as e:
        raise ValueError(f"--tokenizer {path} is not a SentencePiece model ({e})") from e


def pipeline_options(beam_args: list[str], transfer_bytes: int, fork_server=None):
    """PipelineOptions from the pass-through flags, plus the runner instance to use (None = the named runner).
    A local runner and its workers exchange data in messages of about ``transfer_bytes`` (pipeline.local_runner);
    its multi_processing workers are forked from ``fork_server`` (pipeline.local_worker.ForkServer).

    Without --runner (or with DirectRunner) this returns Beam's FnApiRunner: Beam's DirectRunner would
    first try the Prism runner, which downloads a binary. --direct_num_workers N > 1 implies
    --direct_running_mode=multi_processing unless another mode is given.
    """
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    args = list(beam_args)
    options = PipelineOptions(args)
    direct = options.view_as(DirectOptions)
    if direct.direct_num_workers != 1 and not any(a.startswith("--direct_running_mode") for a in args):
        args.append("--direct_running_mode=multi_processing")
        options = PipelineOptions(args)
    runner = options.view_as(StandardOptions).runner
    from pipeline.local_runner import LOCAL_RUNNERS, make_local_runner

    if runner not in LOCAL_RUNNERS:
        return options, None

    return options, make_local_runner(options, transfer_bytes, fork_server)


def build_pipeline(p, args, cfg: FilterConfig, files: list[str], hf_rows: int, given_tokenizer: dict | None,
                   config: dict) -> None:
    """Attach every stage to pipeline ``p``, in the order of the module docstring."""
    import apache_beam as beam

    from pipeline.dedup import ExactDedup
    from pipeline.filter_stage import GopherFilter, ParseRecords
    from pipeline.manifest_stage import WriteManifest
    from pipeline.read import ReadFiles, ReadHuggingFace
    from pipeline.rejected import CountRejected, WriteRejected
    from pipeline.tokenizer_stage import GivenTokenizer, TokenizeAndAssign, TrainTokenizer
    from pipeline.write import WriteShards

    out = args.output
    sources = []
    if files:
        sources.append(p | "ReadFiles" >> ReadFiles(files, args.format, args.text_field, args.id_field))
    if args.hf_dataset:
        sources.append(p | "ReadHuggingFace" >> ReadHuggingFace(
            args.hf_dataset, args.hf_split, hf_rows, args.text_field, args.id_field))
    records = tuple(sources) | "AllRecords" >> beam.Flatten()

    docs, unparsable = records | "ParseRecords" >> ParseRecords(args.text_field, args.id_field)
    kept, low_quality = docs | "GopherFilter" >> GopherFilter(cfg)
    unique, duplicates = kept | "ExactDedup" >> ExactDedup()
    if given_tokenizer is not None:
        tokenizer = p | "GivenTokenizer" >> GivenTokenizer(given_tokenizer, out)
    else:
        tokenizer = unique | "TrainTokenizer" >> TrainTokenizer(
            args.vocab_size, int(args.tokenizer_sample_mb * 1e6), out)
    val_shards = args.val_shards if args.val_fraction > 0 else 0
    keyed = unique | "Tokenize" >> TokenizeAndAssign(tokenizer, args.val_fraction, args.train_shards, val_shards)
    shard_stats = keyed | "WriteShards" >> WriteShards(tokenizer, out, args.train_shards, val_shards)
    # Each dropping stage writes and counts its own rejections (no Flatten first), so that work fuses into
    # the stage and the rejected text never passes through the runner; only file names and counts meet.
    files, counts = [], []
    for stage, rejected in (("parse", unparsable), ("quality", low_quality), ("dedup", duplicates)):
        files.append(rejected | f"WriteRejected-{stage}" >> WriteRejected(out, stage, args.rejected_files))
        counts.append(rejected | f"CountRejected-{stage}" >> CountRejected())
    rejected_files = files | "AllRejectedFiles" >> beam.Flatten()
    reason_counts = counts | "AllReasonCounts" >> beam.Flatten()
    _ = p | "WriteManifest" >> WriteManifest(out, config, records, reason_counts, shard_stats, tokenizer,
                                             rejected_files)


def run(argv: list[str] | None = None) -> dict:
    """Parse flags, check everything that can be checked up front, run the pipeline, return the manifest."""
    from pipeline.local_worker import start_fork_server

    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    validate_args(args)
    cfg = filter_config(args)
    transfer_bytes = int(args.local_transfer_mb * (1 << 20))
    # Before this process imports Beam, so that the fork server's import of it overlaps this one
    # (pipeline.local_worker); it exits with the run.
    fork_server = start_fork_server(beam_args, transfer_bytes)
    try:
        return _run(args, beam_args, cfg, transfer_bytes, fork_server)
    finally:
        if fork_server is not None:
            fork_server.close()


def _run(args: argparse.Namespace, beam_args: list[str], cfg: FilterConfig, transfer_bytes: int,
         fork_server) -> dict:
    import apache_beam as beam

    options, runner = pipeline_options(beam_args, transfer_bytes, fork_server)

    files = resolve_inputs(args.input)
    given = load_given_tokenizer(args.tokenizer) if args.tokenizer else None
    hf_rows = 0
    if args.hf_dataset:
        from pipeline.read import load_hf_dataset

        ds = load_hf_dataset(args.hf_dataset, args.hf_split)
        if args.text_field not in ds.column_names:
            raise ValueError(f"--hf-dataset {args.hf_dataset} has no column {args.text_field!r} "
                             f"(columns: {ds.column_names}); set --text-field")
        hf_rows = len(ds)
    check_output(args.output, args.overwrite)
    if args.builtin_corpus:
        from pipeline.builtin_corpus import write_builtin_corpus

        max_bytes = int(args.builtin_corpus_mb * 1e6) if args.builtin_corpus_mb else None
        corpus = write_builtin_corpus(os.path.join(args.output, layout.CORPUS_DIR), max_bytes=max_bytes,
                                      include_site_packages=args.builtin_site_packages)
        files = sorted(set(files) | set(os.path.abspath(c) for c in corpus))
    if not files and not hf_rows:
        raise ValueError("the inputs hold no records (empty dataset); check --input / --hf-dataset")

    config = {k: v for k, v in sorted(vars(args).items()) if k not in {f.name for f in fields(FilterConfig)}}
    config.update(filters=asdict(cfg), beam_args=list(beam_args), input_files=len(files))
    p = beam.Pipeline(runner=runner, options=options)
    build_pipeline(p, args, cfg, files, hf_rows, given, config)
    p.run().wait_until_finish()

    if is_remote(args.output):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(FileSystems.join(args.output, MANIFEST_NAME)) as f:
            return json.loads(f.read().decode("utf-8"))
    return load_manifest(args.output)


def summary(manifest: dict) -> str:
    docs, tokens = manifest["documents"], manifest["tokens"]
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(docs["rejected"].items(), key=lambda kv: -kv[1]) if n)
    return (f"read {docs['read']} | kept {docs['kept']} | rejected {docs['read'] - docs['kept']} ({reasons or 'none'}) | "
            f"tokens train {tokens['train']} val {tokens['val']} | vocab {manifest['tokenizer']['vocab_size']}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Local worker processes forward start-up notices ("No semi_persistent_directory", discarded runner
    # flags) as warnings on every run; their errors still come through.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    try:
        manifest = run(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
