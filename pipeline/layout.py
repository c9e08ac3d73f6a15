"""The layout of an output directory: every name ``pipeline.prepare`` writes there, and nothing else.

One home for those names, so that the stages that write them and ``--overwrite``, which removes them, cannot
disagree. Standard library only (``pipeline.prepare`` checks the output before it imports Beam)::

    DIR/manifest.json                              written last; its presence marks a finished run
    DIR/tokenizer.model                            trained, or a copy of --tokenizer (SentencePiece)
    DIR/tokenizer.json, DIR/tokenizer_config.json  instead, for a Hugging Face --tokenizer (pipeline.hf_tokenizer)
    DIR/train/shard-SSSSS-of-NNNNN.bin / .idx      token shards (pipeline.shards), .idx renamed last
    DIR/val/shard-SSSSS-of-NNNNN.bin / .idx
    DIR/rejected/STAGE-SSSSS-of-NNNNN.jsonl.gz     dropped records of one stage (parse, quality,
                                                   dedup_early, dedup)
    DIR/_corpus/builtin-NNNNN.jsonl.gz             --builtin-corpus input (pipeline.builtin_corpus)
    DIR/_runs/SPLIT-SSSSS-part-PPPPP.run           key-sorted pieces of a shard (pipeline.runs), removed
                                                   once every shard is written, before the manifest

plus the temporary names of those files while they are written (``NAME.tmp-...``, pipeline.files.TEMP_MARKER)
and Beam's temporary folders for the rejected files (``rejected/beam-temp-STAGE-<32 hex digits>/``), which a
crashed run leaves behind.
"""
from __future__ import annotations

import re

from pipeline.files import TEMP_MARKER
from pipeline.manifest import MANIFEST_NAME

TOKENIZER_NAME = "tokenizer.model"
HF_TOKENIZER_NAME, HF_CONFIG_NAME = "tokenizer.json", "tokenizer_config.json"
SPLITS = ("train", "val")  # one folder of shards each, in manifest order
REJECTED_DIR = "rejected"
CORPUS_DIR = "_corpus"
RUNS_DIR = "_runs"

OUTPUT_FILES = (MANIFEST_NAME, TOKENIZER_NAME, HF_TOKENIZER_NAME, HF_CONFIG_NAME)
OUTPUT_DIRS = SPLITS + (REJECTED_DIR, CORPUS_DIR, RUNS_DIR)

_TEMP = re.escape(TEMP_MARKER) + r"[0-9a-f-]+"
_SHARD = re.compile(r"shard-\d{5}-of-\d{5}\.(bin|idx)(" + _TEMP + ")?")
# In a folder this tool owns: the names it writes there, each optionally under its temporary name.
_OWN_IN_DIR = {
    **{split: _SHARD for split in SPLITS},
    REJECTED_DIR: re.compile(r"[a-z_]+-\d{5}-of-\d{5}\.jsonl\.gz"),
    CORPUS_DIR: re.compile(r"builtin-\d{5}\.jsonl\.gz"),
    RUNS_DIR: re.compile(r"(" + "|".join(SPLITS) + r")-\d{5}-part-\d{5}\.run(" + _TEMP + ")?"),
}
_OWN_FILE = re.compile("(" + "|".join(map(re.escape, OUTPUT_FILES)) + ")(" + _TEMP + ")?"
                       + r"|\.write-test-.*")  # prepare's check that DIR is writable (a NamedTemporaryFile)
_BEAM_TEMP_DIR = re.compile(r"beam-temp-[a-z_]+-[0-9a-f]{32}")  # WriteToText's, anything inside it is Beam's


def shard_path(split: str, index: int, count: int) -> str:
    """Shard prefix relative to the output directory, e.g. "train/shard-00000-of-00008"."""
    return f"{split}/shard-{index:05d}-of-{count:05d}"


def run_path(split: str, shard: int, part: int) -> str:
    """A run file relative to the output directory, e.g. "_runs/train-00003-part-00001.run"."""
    return f"{RUNS_DIR}/{split}-{shard:05d}-part-{part:05d}.run"


def is_run_file(name: str) -> bool:
    """Whether ``name`` (a file name inside RUNS_DIR) is a run file or a run file's temporary name."""
    return bool(_OWN_IN_DIR[RUNS_DIR].fullmatch(name))


def is_output(rel: str) -> bool:
    """Whether ``rel``, a file's path relative to the output directory with "/" separators, is one this tool
    writes (finished or temporary). Folders are not files: "train" alone is not an output file."""
    parts = rel.split("/")
    if len(parts) == 1:
        return bool(_OWN_FILE.fullmatch(parts[0]))
    if parts[0] not in _OWN_IN_DIR:
        return False
    if len(parts) == 2:
        return bool(_OWN_IN_DIR[parts[0]].fullmatch(parts[1]))
    return parts[0] == REJECTED_DIR and bool(_BEAM_TEMP_DIR.fullmatch(parts[1]))


def is_output_dir(rel: str) -> bool:
    """Whether the folder ``rel`` (relative, "/" separators) is one this tool writes, or Beam's inside one."""
    parts = rel.split("/")
    if len(parts) == 1:
        return parts[0] in OUTPUT_DIRS
    return parts[0] == REJECTED_DIR and bool(_BEAM_TEMP_DIR.fullmatch(parts[1]))
