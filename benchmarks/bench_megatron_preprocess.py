"""Tokenize-and-write side by side with Megatron-LM's ``tools/preprocess_data.py``, on equal work.

Both sides get the same documents (the built-in corpus, deduplicated, ``--size-mb`` MB of text), the same
SentencePiece model and 2 worker processes, and each runs as a subprocess, timed from launch to exit:

  * ours: ``python -m pipeline.prepare`` of this checkout with every Gopher rule off (``--rules none`` when the
    checkout has it; otherwise each threshold set to a value that rejects nothing: the rules still run and cost
    their time), ``--val-fraction 0``, ``--direct_num_workers 2 --direct_running_mode multi_processing``;
  * Megatron: ``DIR/tools/preprocess_data.py --tokenizer-type SentencePieceTokenizer --workers 2 --append-eod
    --json-keys text``, run unchanged from a Megatron-LM checkout (``--megatron-lm DIR``).

Then: both kept every document, and every document's token ids (read back with Megatron's
``megatron.core.datasets.indexed_dataset.IndexedDataset``) are the same on both sides as a multiset (our shards
are in document-key order, Megatron's in input order). The result is the wall-time ratio ours / Megatron in
each repetition (interleaved: ours, Megatron, ours, ...), with the peak RSS of each side (psutil, the process
tree polled every 0.1 s) and the load average before and after.

Input. Each side gets its natural best input, the same records in the same order: Megatron reads ONE
uncompressed JSONL file (it cannot read .gz, and its one reader process feeds a Pool); ours reads the same
records cut into uncompressed files of ``--our-file-mb`` MB (default 2; our reader parallelizes over files, as
a real corpus of many files gives it), or the very same single file with ``--our-file-mb 0``.

The corpus (written once into WORK/megatron-corpus-<size>/): the built-in corpus with installed packages'
docstrings (benchmarks/bench_prepare.builtin_files), each record parsed by the pipeline's own JSONL parser
(pipeline.documents.parse_json_line: records it rejects are left out, and its normalized text, e.g. CRLF to LF,
is what both sides get), deduplicated with the pipeline's dedup key (pipeline.documents.dedup_key: the text with
whitespace runs collapsed, stricter than equal text, so our dedup stage drops nothing), without the few documents
that the rules-off thresholds still reject (``max_symbol_word_ratio`` is a fraction capped at 1, and a text can
hold more "#" than words). Past the end of the built-in corpus, documents come again as variants with a last
line "[variant k]", as in bench_prepare.corpus_files.

Getting Megatron-LM (its code is not copied here; any checkout works, run unchanged)::

    git clone https://github.com/NVIDIA/Megatron-LM /tmp/megatron-lm
    # or, from a bare mirror (read-only):  mkdir /tmp/megatron-lm && git --git-dir=MIRROR archive HEAD | tar -x -C /tmp/megatron-lm
    # (git --git-dir=MIRROR worktree add /tmp/megatron-lm also works, and records the work tree in MIRROR)
    # or a release matching the installed megatron-core:  git -C /tmp/megatron-lm checkout core_v0.16.1

What it needs to run in this project's venv (Python 3.11, megatron-core 0.16.1, no GPU):

  * ``PYTHONPATH=DIR``: the script imports ``megatron.training`` (not in the megatron-core wheel) and, on current
    main, ``megatron.core.tokenizers.utils`` (newer than 0.16.1); it appends DIR to sys.path itself, after
    site-packages, so the installed megatron-core would win without it. (Also PYTHONWARNINGS=ignore: the
    warnings that Transformer Engine and Apex are missing, on every import of megatron.core.)
  * triton: imported at module level, kernels decorated with ``@triton.jit`` (main:
    ``megatron/core/transformer/moe/ops/paged_stash.py``, reached from ``megatron/core/__init__.py``;
    core_v0.16.1: ``megatron/core/transformer/custom_layers/batch_invariant_kernels.py``, reached from
    ``megatron.training.initialize``). No kernel runs on this code path, but the import must succeed, and torch's
    CPU wheel does not bring triton. Install it outside the venv and pass the folder with
    ``--megatron-pythonpath``::

        pip install --no-deps --target /tmp/megatron-deps triton   # a ~290 MB wheel, ~1 GB unpacked

  * Python >= 3.12 on current main (its pyproject says so): ``megatron/training/models/gpt.py`` and
    ``hybrid.py`` import ``override`` from ``typing`` (3.12+). Under an older Python this benchmark copies
    DIR/megatron and DIR/tools/preprocess_data.py into WORK/megatron-lm-py<ver>/ (about 13 MB, before any
    timing) and changes exactly those import lines to take ``override`` from ``typing_extensions``; it prints
    each changed line. Tag core_v0.16.1 needs no edit.

Nothing else: without ``--split-sentences`` nltk is not needed (its import is optional), and the
SentencePiece tokenizer needs only ``sentencepiece``.

    python benchmarks/bench_megatron_preprocess.py --megatron-lm /tmp/megatron-lm \\
        --megatron-pythonpath /tmp/megatron-deps --size-mb 90 --repeats 3 --work /tmp/bench-megatron \\
        --out /tmp/bench-megatron.md

Absolute seconds depend on the machine and its load; the ratio, measured side by side, is the result.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.bench_prepare import VOCAB_SIZE, builtin_files, ensure_tokenizer, run_measured  # noqa: E402
from pipeline import documents  # noqa: E402
from pipeline.filters import BATCH_CHARS, FilterConfig, iter_reject_reasons  # noqa: E402
from pipeline.tokenizer import ENCODE_CHUNK_CHARS, Tokenizer  # noqa: E402

WORKERS = 2
# Megatron's builder names its output PREFIX_<json key>_document.{bin,idx}.
MEGATRON_KEY = "text"
# typing.override is new in Python 3.12; typing_extensions has the same decorator.
_OVERRIDE_IMPORT = re.compile(r"^from typing import (?P<names>[^()\n]*\boverride\b[^()\n]*)$", re.M)


# ---- the corpus -------------------------------------------------------------------------------------------

def rules_off(repo: str) -> tuple[list[str], FilterConfig, str]:
    """Flags that turn every Gopher rule of the checkout at ``repo`` off, the FilterConfig those thresholds
    make, and a sentence for the report. ``--rules none`` when the checkout's prepare has it; else every
    threshold at a value that rejects nothing (the rules still run)."""
    help_text = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--help"], cwd=repo, capture_output=True,
                               text=True, env=dict(os.environ, PYTHONPATH=repo), check=True).stdout
    values = {}
    for f in dataclasses.fields(FilterConfig):
        is_int = f.type in ("int", int)
        if f.name.startswith("min_"):
            values[f.name] = 0
        elif f.name.endswith(("_ratio", "_fraction")):
            values[f.name] = 1.0  # fractions are capped at 1 (FilterConfig.validate); "above 1" never fires
        else:
            values[f.name] = 10 ** 12 if is_int else 1e12
    cfg = FilterConfig(**values)
    cfg.validate()
    described = re.search(r"^\s+--rules\b", help_text, re.M)  # the option's own entry, not the usage line
    if described and "none" in help_text[described.start():described.start() + 400]:
        # Megatron's tool only tokenizes: the stages that have a switch and are not rules go off too.
        extra = [flag for flag in ("--no-language-id", "--no-near-dedup") if flag in help_text]
        return ["--rules", "none", *extra], cfg, f"`--rules none {' '.join(extra)}`".rstrip() + " (no rule runs)"
    flags = []
    for name, value in values.items():
        flags += ["--" + name.replace("_", "-"), str(value)]
    return flags, cfg, ("every threshold set to reject nothing (min_* 0, fractions and ratios 1, other max_* 1e12): "
                        "the rules still run and cost their time, and reject nothing")


def build_corpus(work: str, size_mb: float, our_file_mb: float, cfg: FilterConfig) -> dict:
    """The deduplicated corpus as one JSONL file for Megatron and as ``our_file_mb`` MB files for ours (the same
    records in the same order; the single file itself when our_file_mb is 0). Written once; returns its stats."""
    out = os.path.join(work, f"megatron-corpus-{size_mb:g}")
    stats_path = os.path.join(out, "stats.json")
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            stats = json.load(f)
    else:
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        stats = _write_single(out, builtin_files(work), size_mb, cfg)
        with open(stats_path, "w") as f:
            json.dump(stats, f, indent=1)
    if our_file_mb <= 0:
        stats["our_files"] = [stats["single"]]
        return stats
    parts = os.path.join(out, f"parts-{our_file_mb:g}")
    if not os.path.exists(os.path.join(parts, "DONE")):
        shutil.rmtree(parts, ignore_errors=True)
        os.makedirs(parts)
        part, in_file, dst = 0, 0, None
        with open(stats["single"], "rb") as src:
            for line in src:
                if dst is None or in_file >= our_file_mb * 1e6:
                    if dst is not None:
                        dst.close()
                    dst = open(os.path.join(parts, f"part-{part:05d}.jsonl"), "wb")
                    part, in_file = part + 1, 0
                dst.write(line)
                in_file += len(line)
        dst.close()
        open(os.path.join(parts, "DONE"), "w").close()
    stats["our_files"] = sorted(os.path.join(parts, p) for p in os.listdir(parts) if p.endswith(".jsonl"))
    return stats


def _write_single(out: str, sources: list[str], size_mb: float, cfg: FilterConfig) -> dict:
    path = os.path.join(out, "corpus.jsonl")
    budget, total, docs, variant = size_mb * 1e6, 0, 0, 0
    seen: set[bytes] = set()
    dropped = collections.Counter()
    batch: list[tuple[str, str]] = []  # (id, text) waiting for the rules-off check, judged ~1 MB at a time
    batch_chars = 0

    def flush(dst) -> None:
        nonlocal total, docs, batch_chars
        for (doc_id, text), reason in zip(batch, iter_reject_reasons([t for _, t in batch], cfg)):
            if total >= budget:
                break
            if reason is not None:
                dropped[f"rules-off still rejects ({reason})"] += 1
                continue
            dst.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            total += len(text.encode("utf-8"))
            docs += 1
        batch.clear()
        batch_chars = 0

    with open(path, "w", encoding="utf-8") as dst:
        while total < budget:
            added = 0
            for src_path in sources:
                with gzip.open(src_path, "rb") as src:
                    for raw in src:
                        if variant:
                            rec = json.loads(raw)
                            rec = {"id": f"{rec['id']}#v{variant}", "text": f"{rec['text']}\n\n[variant {variant}]"}
                            raw = json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogatepass")
                        doc = documents.parse_json_line(raw, src_path)
                        if not isinstance(doc, documents.Document):
                            dropped[f"parse ({doc.reason})"] += 1
                            continue
                        key = bytes.fromhex(documents.dedup_key(doc.text))
                        if key in seen:
                            dropped["duplicate"] += 1
                            continue
                        seen.add(key)
                        added += 1
                        batch.append((doc.id, doc.text))
                        batch_chars += len(doc.text)
                        if batch_chars >= BATCH_CHARS:
                            flush(dst)
                            if total >= budget:
                                break
                if total >= budget:
                    break
            flush(dst)
            if not added:
                raise ValueError(f"the built-in corpus gives no new document for variant {variant}: "
                                 f"lower --size-mb (now {size_mb:g})")
            variant += 1
    return {"single": path, "docs": docs, "mb": round(total / 1e6, 2), "variants": variant - 1,
            "dropped": dict(dropped)}


def tokenizer_model(work: str, corpus: str, given: str | None) -> str:
    """``given``, or a BPE model (VOCAB_SIZE) trained once on the corpus's first TOKENIZER_SAMPLE_CHARS characters."""
    if given:
        if not os.path.isfile(given):
            raise FileNotFoundError(f"--tokenizer {given}: no such file; give a SentencePiece .model or leave it out")
        return os.path.abspath(given)
    path = os.path.join(work, f"megatron-tokenizer-{VOCAB_SIZE}.model")
    with open(corpus, encoding="utf-8") as f:
        ensure_tokenizer(path, (json.loads(line)["text"] for line in f))
    return path


# ---- Megatron-LM's environment ----------------------------------------------------------------------------

def megatron_tree(megatron_lm: str, work: str) -> tuple[str, list[str]]:
    """The tree to run preprocess_data.py from: ``megatron_lm`` itself, or (Python < 3.12 and the checkout
    imports typing.override) a copy of its megatron/ and tools/preprocess_data.py with only those import lines
    changed. Returns the tree and one line per edit."""
    script = os.path.join(megatron_lm, "tools", "preprocess_data.py")
    if not os.path.isfile(script):
        raise FileNotFoundError(f"--megatron-lm {megatron_lm}: no tools/preprocess_data.py there; give a Megatron-LM "
                                "checkout (git clone https://github.com/NVIDIA/Megatron-LM)")
    if sys.version_info >= (3, 12):
        return megatron_lm, []
    needs = []
    for root, _, names in os.walk(os.path.join(megatron_lm, "megatron")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    if _OVERRIDE_IMPORT.search(f.read()):
                        needs.append(os.path.relpath(path, megatron_lm))
    if not needs:
        return megatron_lm, []
    tree = os.path.join(work, f"megatron-lm-py{sys.version_info.major}{sys.version_info.minor}")
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(os.path.join(megatron_lm, "megatron"), os.path.join(tree, "megatron"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.makedirs(os.path.join(tree, "tools"))
    shutil.copy2(script, os.path.join(tree, "tools", "preprocess_data.py"))
    edits = []
    for rel in sorted(needs):
        path = os.path.join(tree, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()

        def fix(m: re.Match) -> str:
            rest = [n.strip() for n in m.group("names").split(",") if n.strip() != "override"]
            new = (f"from typing import {', '.join(rest)}\n" if rest else "") + "from typing_extensions import override"
            edits.append(f"{rel}: `{m.group(0)}` -> `{new.replace(chr(10), '; ')}`")
            return new

        with open(path, "w", encoding="utf-8") as f:
            f.write(_OVERRIDE_IMPORT.sub(fix, text))
    return tree, edits


def megatron_env(tree: str, extra_paths: list[str]) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([tree, *extra_paths]), PYTHONWARNINGS="ignore")


def check_megatron_runs(tree: str, env: dict) -> None:
    """Import Megatron's script (``--help``) before any timing; a missing module raises with the fix."""
    proc = subprocess.run([sys.executable, os.path.join(tree, "tools", "preprocess_data.py"), "--help"], env=env,
                          capture_output=True, text=True)
    if proc.returncode == 0:
        return
    missing = re.findall(r"No module named '([^']+)'", proc.stderr)
    hint = ""
    if missing and missing[-1].split(".")[0] == "triton":
        hint = ("megatron.core / megatron.training import triton at module level (no kernel runs here); install it "
                "outside the venv and pass the folder: pip install --no-deps --target /tmp/megatron-deps triton; "
                "--megatron-pythonpath /tmp/megatron-deps\n")
    raise RuntimeError(f"Megatron-LM's tools/preprocess_data.py does not import here (PYTHONPATH={env['PYTHONPATH']}):"
                       f"\n{hint}{proc.stderr[-3000:]}")


def megatron_version(megatron_lm: str) -> str:
    """The checkout's commit (when it is a git work tree) and its megatron-core version (package_info.py)."""
    parts = []
    git = subprocess.run(["git", "-C", megatron_lm, "describe", "--tags", "--always", "--long"],
                         capture_output=True, text=True)
    parts.append(f"commit {git.stdout.strip()}" if git.returncode == 0 else "not a git work tree")
    info = os.path.join(megatron_lm, "megatron", "core", "package_info.py")
    if os.path.exists(info):
        with open(info, encoding="utf-8") as f:
            text = f.read()
        nums = [re.search(rf"^{k}\s*=\s*(\S+)", text, re.M) for k in ("MAJOR", "MINOR", "PATCH", "PRE_RELEASE")]
        parts.append("package_info " + ".".join(m.group(1).strip("'\"") for m in nums[:3] if m)
                     + (nums[3].group(1).strip("'\"") if nums[3] else ""))
    return ", ".join(parts)


# ---- running and measuring --------------------------------------------------------------------------------

def run_ours(files: list[str], out: str, model: str, rule_flags: list[str], shards: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.prepare", *sum((["--input", f] for f in _input_globs(files)), []),
           "--output", out, "--tokenizer", model, "--train-shards", str(shards), "--val-fraction", "0",
           "--direct_num_workers", str(WORKERS), "--direct_running_mode", "multi_processing", *rule_flags]
    res = run_measured(cmd, REPO, dict(os.environ, PYTHONPATH=REPO))
    with open(os.path.join(out, "manifest.json")) as f:
        res["manifest"] = json.load(f)
    res["cmd"] = cmd
    return res


def _input_globs(files: list[str]) -> list[str]:
    """One glob for the part files (every file in their folder), or the single file."""
    if len(files) == 1:
        return files
    folder = os.path.dirname(files[0])
    if any(os.path.dirname(f) != folder for f in files):
        raise ValueError("our input files must share one folder")
    return [os.path.join(folder, "*.jsonl")]


def run_megatron(tree: str, env: dict, corpus: str, out: str, model: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cmd = [sys.executable, os.path.join(tree, "tools", "preprocess_data.py"), "--input", corpus,
           "--output-prefix", os.path.join(out, "corpus"), "--tokenizer-type", "SentencePieceTokenizer",
           "--tokenizer-model", model, "--workers", str(WORKERS), "--append-eod", "--json-keys", MEGATRON_KEY]
    res = run_measured(cmd, out, env)
    res["prefix"] = os.path.join(out, f"corpus_{MEGATRON_KEY}_document")
    res["cmd"] = cmd
    return res


# ---- equal tokens ------------------------------------------------------------------------------------------

def document_sequences(prefix: str):
    """Each document's token ids (int64) in a Megatron indexed dataset, in file order."""
    with warnings.catch_warnings():  # megatron.core warns that Transformer Engine and Apex are missing
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset  # slow import: only when comparing

    ds = IndexedDataset(prefix)
    bounds = ds.document_indices
    for d in range(len(bounds) - 1):
        seqs = [ds[i] for i in range(bounds[d], bounds[d + 1])]
        yield np.concatenate(seqs).astype(np.int64) if seqs else np.zeros(0, np.int64)


def _digest(ids: np.ndarray) -> bytes:
    return hashlib.blake2b(ids.tobytes(), digest_size=16).digest()


def compare_tokens(ours: dict, megatron: dict, corpus: str, model: str) -> dict:
    """Our documents and Megatron's as multisets of token sequences; the first difference explained."""
    our_prefixes = [os.path.join(ours["out"], s["path"]) for s in ours["manifest"]["shards"]]
    our_count = collections.Counter()
    our_docs = our_tokens = 0
    for prefix in our_prefixes:
        for ids in document_sequences(prefix):
            our_count[_digest(ids)] += 1
            our_docs, our_tokens = our_docs + 1, our_tokens + len(ids)
    mlm_docs = mlm_tokens = 0
    first_diff = None
    mlm_count = collections.Counter()
    for i, ids in enumerate(document_sequences(megatron["prefix"])):
        h = _digest(ids)
        mlm_count[h] += 1
        mlm_docs, mlm_tokens = mlm_docs + 1, mlm_tokens + len(ids)
        if first_diff is None and mlm_count[h] > our_count.get(h, 0):
            first_diff = (i, ids)
    result = {"identical": our_count == mlm_count, "our_docs": our_docs, "our_tokens": our_tokens,
              "megatron_docs": mlm_docs, "megatron_tokens": mlm_tokens}
    if not result["identical"]:
        result["first_difference"] = explain(first_diff, corpus, model, our_count) if first_diff else (
            "every Megatron document is among ours, but ours has extra or repeated documents")
    return result


def explain(first_diff: tuple[int, np.ndarray], corpus: str, model: str, our_count: collections.Counter) -> str:
    """Megatron's first document (input order) with no match among ours, against our tokenizer on its text."""
    index, theirs = first_diff
    with open(corpus, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == index:
                rec = json.loads(line)
                break
    mine = np.asarray(Tokenizer(model).encode_document(rec["text"]), np.int64)
    n = min(len(mine), len(theirs))
    at = next((k for k in range(n) if mine[k] != theirs[k]), n)
    lines = [f"input document {index} (id {rec['id']!r}, {len(rec['text'])} characters): Megatron {len(theirs)} "
             f"ids, our Tokenizer.encode_document {len(mine)} ids; first difference at position {at}: Megatron "
             f"{theirs[at:at + 8].tolist()} ours {mine[at:at + 8].tolist()}; Megatron ends with {theirs[-3:].tolist()}, "
             f"ours with {mine[-3:].tolist()}"]
    lines.append("our encoding of this text is among our shards: " + str(our_count.get(_digest(mine), 0) > 0))
    if len(rec["text"]) > ENCODE_CHUNK_CHARS:
        lines.append(f"the text is longer than ENCODE_CHUNK_CHARS ({ENCODE_CHUNK_CHARS}): ours encodes it in chunks "
                     "(pipeline.tokenizer), equal to whole-text encoding except inside a run of more than that many "
                     "characters without a space")
    return "; ".join(lines)


# ---- report ------------------------------------------------------------------------------------------------

def _ratios(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module docstring for how to get Megatron-LM and what it needs.")
    parser.add_argument("--megatron-lm", required=True, metavar="DIR",
                        help="a Megatron-LM checkout (git clone https://github.com/NVIDIA/Megatron-LM DIR); "
                        "its tools/preprocess_data.py runs unchanged")
    parser.add_argument("--megatron-pythonpath", nargs="*", default=[], metavar="DIR",
                        help="folders added after the checkout on Megatron's PYTHONPATH, e.g. where triton was "
                        "installed with pip install --no-deps --target DIR triton")
    parser.add_argument("--size-mb", type=float, default=90, help="MB of text (UTF-8) after deduplication")
    parser.add_argument("--our-file-mb", type=float, default=2.0,
                        help="our input: the same records in files of this many MB (0 = the single file "
                        "Megatron reads)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (ours, Megatron, ours, ...)")
    parser.add_argument("--train-shards", type=int, default=8)
    parser.add_argument("--tokenizer", default=None, metavar="MODEL",
                        help=f"a SentencePiece model (default: train one, vocab {VOCAB_SIZE}, on the corpus)")
    parser.add_argument("--work", default="/tmp/bench-megatron",
                        help="corpus, model and outputs; WORK/builtin is shared with bench_prepare.py's --work")
    parser.add_argument("--out", default=None, help="append a markdown report to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: use 1 or more")
    if args.size_mb <= 0:
        raise ValueError(f"--size-mb {args.size_mb}: use a positive number of MB, e.g. 90")
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    megatron_lm = os.path.abspath(args.megatron_lm)
    extra = [os.path.abspath(p) for p in args.megatron_pythonpath]

    tree, edits = megatron_tree(megatron_lm, work)
    env = megatron_env(tree, extra)
    check_megatron_runs(tree, env)
    rule_flags, cfg, rules_note = rules_off(REPO)
    corpus = build_corpus(work, args.size_mb, args.our_file_mb, cfg)
    model = tokenizer_model(work, corpus["single"], args.tokenizer)

    load_before = os.getloadavg()
    log = [f"load average before: {load_before}, cpus: {os.cpu_count()}",
           f"Megatron-LM: {megatron_lm} ({megatron_version(megatron_lm)}), PYTHONPATH={env['PYTHONPATH']}",
           "Megatron-LM source edits: " + ("; ".join(edits) if edits else "none (run unchanged)"),
           f"corpus: {corpus['single']}: {corpus['docs']} documents, {corpus['mb']} MB of text, "
           f"{corpus['variants']} variant rounds; left out: {corpus['dropped']}",
           "our input: " + (f"{len(corpus['our_files'])} files of ~{args.our_file_mb:g} MB" if args.our_file_mb > 0
                             else "the same single file") + " (Megatron: the single file)",
           f"our rules: {rules_note}", f"tokenizer: {model}"]
    for line in log:
        print(line, flush=True)
    reps = []
    for rep in range(args.repeats):
        ours = run_ours(corpus["our_files"], os.path.join(work, "ours-out"), model, rule_flags, args.train_shards)
        ours["out"] = os.path.join(work, "ours-out")
        print(f"rep {rep + 1} ours: {ours['seconds']:.1f} s, peak RSS launcher {ours['rss_main_mb']:.0f} MB, largest "
              f"worker {ours['rss_child_mb']:.0f} MB, tree {ours['rss_tree_mb']:.0f} MB | "
              f"{ours['output'].strip().splitlines()[-1]}", flush=True)
        mlm = run_megatron(tree, env, corpus["single"], os.path.join(work, "megatron-out"), model)
        print(f"rep {rep + 1} Megatron: {mlm['seconds']:.1f} s, peak RSS main {mlm['rss_main_mb']:.0f} MB, largest "
              f"child {mlm['rss_child_mb']:.0f} MB, tree {mlm['rss_tree_mb']:.0f} MB; ours / Megatron "
              f"{ours['seconds'] / mlm['seconds']:.2f}x", flush=True)
        docs = ours["manifest"]["documents"]
        if docs["read"] != corpus["docs"] or docs["kept"] != corpus["docs"]:
            raise RuntimeError(f"ours read {docs['read']} and kept {docs['kept']} of {corpus['docs']} documents "
                               f"(rejected: { {k: v for k, v in docs['rejected'].items() if v} }): not equal work")
        reps.append({"ours": ours, "megatron": mlm})
    same = compare_tokens(reps[-1]["ours"], reps[-1]["megatron"], corpus["single"], model)
    if same["megatron_docs"] != corpus["docs"]:
        raise RuntimeError(f"Megatron wrote {same['megatron_docs']} documents of {corpus['docs']}: not equal work")
    load_after = os.getloadavg()

    ratios = [r["ours"]["seconds"] / r["megatron"]["seconds"] for r in reps]
    mb = corpus["mb"]
    summary = [
        f"both kept every document ({corpus['docs']}); tokens ours {same['our_tokens']}, Megatron "
        f"{same['megatron_tokens']}; the same token ids for every document (as multisets): {same['identical']}",
    ]
    if not same["identical"]:
        summary.append(f"first difference: {same['first_difference']}")
    summary.append(f"wall ours / Megatron per repetition: {', '.join(f'{r:.2f}' for r in ratios)}; {_ratios(ratios)}")
    status = ("met" if max(ratios) <= 1 else "median met, range did not" if statistics.median(ratios) <= 1
              else "not met")
    summary.append(f"target ours / Megatron <= 1.00 on equal work: {status}")
    summary.append(f"load average after: {load_after}")
    for line in summary:
        print(line, flush=True)

    if args.out:
        ours_cmd = reps[0]["ours"]["cmd"][1:]
        if rule_flags[0] != "--rules":
            ours_cmd = ours_cmd[:len(ours_cmd) - len(rule_flags)] + ["RULES-OFF-FLAGS"]
        ours_cmd = " ".join(ours_cmd).replace(work + "/", "WORK/")
        table = ["| repetition | ours s (MB/s) | Megatron s (MB/s) | ours / Megatron | ours peak RSS MB: launcher, largest "
                 "worker, tree | Megatron peak RSS MB: main, largest child, tree |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(reps):
            o, m = r["ours"], r["megatron"]
            table.append(f"| {i + 1} | {o['seconds']:.1f} ({mb / o['seconds']:.2f}) | {m['seconds']:.1f} "
                         f"({mb / m['seconds']:.2f}) | {ratios[i]:.2f}x | {o['rss_main_mb']:.0f}, {o['rss_child_mb']:.0f}, "
                         f"{o['rss_tree_mb']:.0f} | {m['rss_main_mb']:.0f}, {m['rss_child_mb']:.0f}, "
                         f"{m['rss_tree_mb']:.0f} |")
        block = [
            "### Tokenize-and-write against Megatron-LM's `tools/preprocess_data.py`", "",
            "```bash",
            f"python benchmarks/bench_megatron_preprocess.py --megatron-lm {args.megatron_lm}"
            + (f" --megatron-pythonpath {' '.join(args.megatron_pythonpath)}" if extra else "")
            + f" --size-mb {args.size_mb:g} --repeats {args.repeats} --our-file-mb {args.our_file_mb:g}"
            + f" --work {args.work} --out {args.out}",
            "```", "",
            f"Run of {datetime.date.today()}, load average {load_before[0]:.1f} at start and {load_after[0]:.1f} at the "
            f"end on {os.cpu_count()} cores, Python {platform.python_version()}; {WORKERS} workers each; "
            f"{args.repeats} repetition(s), interleaved (ours, Megatron, ...).", "",
            f"- Megatron-LM: {megatron_version(megatron_lm)}; run unchanged"
            + (f", except (Python {platform.python_version()} < 3.12) in a copy: {'; '.join(edits)}" if edits else "")
            + f"; PYTHONPATH = the checkout{' + ' + ', '.join(extra) if extra else ''}. Command: "
            f"`preprocess_data.py {' '.join(reps[0]['megatron']['cmd'][2:]).replace(work + '/', 'WORK/')}`",
            f"- ours: `python {ours_cmd}`; rules: {rules_note}"
            + (f"; RULES-OFF-FLAGS = `{' '.join(rule_flags)}`" if rule_flags[0] != "--rules" else ""),
            f"- corpus: the built-in corpus with site-packages, deduplicated (pipeline dedup key), {corpus['docs']} "
            f"documents, {mb} MB of text; Megatron reads it as one JSONL file, ours as {len(corpus['our_files'])} "
            f"file(s) of the same records; left out while building it: {corpus['dropped']}",
            f"- SentencePiece BPE, vocab {VOCAB_SIZE}, the same model file for both.", "",
            *table, "",
            f"ours / Megatron wall time: {_ratios(ratios)}; target <= 1.00: {status}. Both kept all {corpus['docs']} documents; tokens ours "
            f"{same['our_tokens']:,}, Megatron {same['megatron_tokens']:,}; the same token ids for every document: "
            f"{same['identical']}." + (f" First difference: {same['first_difference']}" if not same["identical"] else ""),
            "",
        ]
        with open(args.out, "a") as f:
            f.write("\n".join(block) + "\n")


if __name__ == "__main__":
    main()
