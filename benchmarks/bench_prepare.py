"""Throughput and memory of `python -m pipeline.prepare` against raw SentencePiece encoding of the same text.

In one run, on the same cores and the same corpus:
  * raw: Tokenizer.encode_document over every input document, in 1 process and split over 2 processes
    (the practical limit of the pipeline: tokenizing is its heaviest per-byte step);
  * the same per-document work without Beam (Gopher filter every text, encode the kept ones), 1 process;
  * pipeline: the whole prepare command (read, parse, Gopher filter, dedup, tokenize, shard, write, manifest)
    as a subprocess with 1 worker (in-process) and 2 workers (multi_processing), with the same tokenizer
    given via --tokenizer so both sides encode with the same model;
  * peak RSS of the launching process and of each worker process (polled with psutil every 0.1 s), at each
    corpus size (Beam's stock FnApiRunner: the launcher keeps the data between stages, a worker receives its
    share of a grouped stage);
  * the largest group of each grouping step, as the pipeline reports it (its distribution metrics), against
    the write bound (--group-mb, passed as --max-group-mb);
  * whether the 1- and 2-worker runs wrote byte-identical shards (sha256 in their manifests), and with
    --baseline-tree whether another checkout wrote the same shards.

With --hot-copies N, one more corpus: the 50 MB one plus one document repeated N times (each copy its own id),
run once with 2 workers: exactly one copy must stay, and no dedup group may hold more than one document.

Ratios are the result (pipeline / raw, 2 workers / 1 worker); absolute numbers depend on the machine and
its load, which is printed (os.getloadavg()).

    python benchmarks/bench_prepare.py --sizes-mb 50 200 --work /tmp/bench-prepare --out /tmp/bench-prepare.md

The corpus is the built-in one (pipeline.builtin_corpus, with installed packages' docstrings), cut to each
size or extended with marked variants of its documents past its end (see corpus_files); it is gathered once
into WORK/ and reused.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.builtin_corpus import write_builtin_corpus  # noqa: E402
from pipeline.filters import FilterConfig, iter_reject_reasons, reject_reason  # noqa: E402
from pipeline.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

VOCAB_SIZE = 8000
TOKENIZER_SAMPLE_CHARS = 8_000_000


def builtin_files(work: str) -> list[str]:
    """All of the built-in corpus with installed packages' docstrings, gathered once into WORK/builtin."""
    out = os.path.join(work, "builtin")
    if not os.path.exists(os.path.join(out, "DONE")):
        shutil.rmtree(out, ignore_errors=True)
        write_builtin_corpus(out, include_site_packages=True)
        open(os.path.join(out, "DONE"), "w").close()
    return sorted(glob.glob(os.path.join(out, "*.jsonl.gz")))


def corpus_files(work: str, size_mb: int, file_mb: float = 2.0) -> list[str]:
    """``size_mb`` MB of text (UTF-8) in files of ~``file_mb`` MB, written once into WORK/corpus-<size>-f<file_mb>.

    The prepare pipeline parallelizes over files (a gzip file is read start to end by one worker), so a
    corpus needs many more files than workers, as real ones have (thousands of files); a corpus in a few
    large files leaves workers idle for part of the read stage.

    The built-in corpus in its own order; past its end (its size depends on what is installed) the documents come again as
    variants, each with a last line "[variant k]" so exact dedup keeps them: realistic text for the
    tokenizer and filters, and every document distinct.
    """
    out = os.path.join(work, f"corpus-{size_mb}-f{file_mb:g}")
    if os.path.exists(os.path.join(out, "DONE")):
        return sorted(glob.glob(os.path.join(out, "*.jsonl.gz")))
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    source = builtin_files(work)
    budget, total, part, f, in_file = size_mb * 1_000_000, 0, 0, None, 0
    variant = 0
    while total < budget:
        for path in source:
            with gzip.open(path, "rt", encoding="utf-8") as src:
                for line in src:
                    rec = json.loads(line)
                    if variant:
                        rec = {"id": f"{rec['id']}#v{variant}", "text": f"{rec['text']}\n\n[variant {variant}]"}
                    if f is None or in_file >= file_mb * 1e6:
                        if f is not None:
                            f.close()
                        f = gzip.open(os.path.join(out, f"part-{part:05d}.jsonl.gz"), "wt", encoding="utf-8",
                                      compresslevel=1)
                        part, in_file = part + 1, 0
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    n = len(rec["text"].encode("utf-8"))
                    total, in_file = total + n, in_file + n
                    if total >= budget:
                        break
            if total >= budget:
                break
        variant += 1
    f.close()
    open(os.path.join(out, "DONE"), "w").close()
    return sorted(glob.glob(os.path.join(out, "*.jsonl.gz")))


def read_texts(files: list[str]) -> list[str]:
    texts = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts


def ensure_tokenizer(model_path: str, texts: Iterable[str]) -> None:
    """Train the benchmarks' SentencePiece model (VOCAB_SIZE) on the first TOKENIZER_SAMPLE_CHARS characters of
    ``texts`` unless ``model_path`` exists (every run in WORK uses the same model); ``texts`` may be lazy: only
    the sample is read."""
    if os.path.exists(model_path):
        return
    sample, chars = [], 0
    for t in texts:
        if chars >= TOKENIZER_SAMPLE_CHARS:
            break
        sample.append(t)
        chars += len(t)
    train_tokenizer(sample, model_path, VOCAB_SIZE)


def _encode_all(args) -> int:
    model_path, texts = args
    tok = Tokenizer(model_path)
    return sum(len(tok.encode_document(t)) for t in texts)


def plain_loop(model_path: str, texts: list[str]) -> tuple[float, float, int]:
    """Wall and CPU seconds for the same per-document work without Beam, in this process: Gopher filter every text
    in ~1 MB batches (iter_reject_reasons, as the pipeline's filter stage batches them), encode the ones it keeps
    (no dedup, no I/O). Separates the cost of the rules and the tokenizer from the cost of the pipeline."""
    tok, cfg, kept = Tokenizer(model_path), FilterConfig(), 0
    start, cpu = time.perf_counter(), time.process_time()
    for text, reason in zip(texts, iter_reject_reasons(texts, cfg)):
        if reason is None:
            tok.encode_document(text)
            kept += 1
    return time.perf_counter() - start, time.process_time() - cpu, kept


def raw_encode(model_path: str, texts: list[str], processes: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and tokens to encode every text with `processes` processes (round-robin)."""
    parts = [(model_path, texts[i::processes]) for i in range(processes)]
    if processes == 1:
        start, cpu = time.perf_counter(), time.process_time()
        tokens = _encode_all(parts[0])
        return time.perf_counter() - start, time.process_time() - cpu, tokens
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with mp.get_context("fork").Pool(processes) as pool:
        pool.map(_encode_all, [(model_path, ["warm up"])] * processes)  # start-up outside the timing
        start = time.perf_counter()
        tokens = sum(pool.map(_encode_all, parts))
        wall = time.perf_counter() - start
        pool.close()
        pool.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), tokens


def run_prepare(files_glob: str, out: str, model_path: str, workers: int, extra: tuple[str, ...] = (),
                train_shards: int = 8, tree: str | None = None, group_mb: float | None = None) -> dict:
    """Run the prepare command of this checkout (or of the checkout at ``tree``); returns wall seconds, peak RSS
    (MB) of the launcher and of its worker processes."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.prepare", "--input", files_glob, "--output", out,
           "--tokenizer", model_path, "--train-shards", str(train_shards), "--val-shards", "1", *extra]
    if group_mb is not None:
        cmd += ["--max-group-mb", str(group_mb), "--no-progress"]
    # This benchmark's workload, for a baseline checkout too: the Gopher rules, exact dedup, tokenizing and shards
    # (the corpus-quality stages have benchmarks of their own: bench_fineweb, bench_minhash, bench_language,
    # bench_rules).
    cmd += ["--rules", "gopher", "--no-language-id", "--no-near-dedup"]
    if workers > 1:
        cmd += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    repo = tree or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = run_measured(cmd, repo, dict(os.environ, PYTHONPATH=repo))
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    output = res["output"]
    return {"seconds": res["seconds"], "rss_main_mb": res["rss_main_mb"], "rss_worker_mb": res["rss_child_mb"],
            "manifest": manifest, "launcher_cpu_s": res["launcher_cpu_s"], "worker_cpu_s": res["worker_cpu_s"],
            "summary": output.strip().splitlines()[-1],
            "groups": next((line for line in output.splitlines() if line.startswith("largest group:")), "")}


def run_measured(cmd: list[str], cwd: str, env: dict) -> dict:
    """Run ``cmd`` (polled with psutil every 0.1 s); raise with its output's tail if it fails. Returns wall seconds
    from launch to exit, peak RSS (MB) of the launched process, of its largest descendant and of the whole tree
    at one poll (the sum counts pages shared after fork once per process), CPU seconds of the launched process
    and of each descendant that used at least one (last poll: shows whether the work was split between them
    even when a loaded machine hides the wall-clock gain), and the output (stdout and stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peak_main = peak_child = peak_tree = 0
    cpu_main, cpu_child = 0.0, {}
    while proc.poll() is None:
        try:
            rss_main = root.memory_info().rss
            times = root.cpu_times()
            cpu_main = times.user + times.system
            tree = rss_main
            for child in root.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    times = child.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                cpu_child[child.pid] = times.user + times.system
                peak_child = max(peak_child, rss)
                tree += rss
            peak_main, peak_tree = max(peak_main, rss_main), max(peak_tree, tree)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    output = proc.stdout.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"seconds": seconds, "rss_main_mb": peak_main / 1e6, "rss_child_mb": peak_child / 1e6,
            "rss_tree_mb": peak_tree / 1e6, "launcher_cpu_s": round(cpu_main, 1),
            "worker_cpu_s": sorted((round(v, 1) for v in cpu_child.values() if v >= 1.0), reverse=True),
            "output": output}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--work", default="/tmp/bench-prepare")
    parser.add_argument("--out", default=None, help="append a markdown report to this file")
    parser.add_argument("--file-mb", type=float, default=2.0, help="size of each corpus file (MB of text)")
    parser.add_argument("--one-worker-sizes", type=int, nargs="*", default=None,
                        help="sizes that also get the 1-worker and raw runs (default: every size)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="repeat raw encode and both pipeline runs this many times per size (interleaved) and "
                        "report the median and range of each ratio: other jobs on a shared machine slow one run "
                        "or another by 20%% or more")
    parser.add_argument("--baseline-tree", default=None, metavar="DIR",
                        help="another checkout of this project (e.g. `git worktree add DIR REV`): its 2-worker "
                        "pipeline runs right after ours in every repetition, as a side-by-side reference for a change")
    parser.add_argument("--scale-shards", action="store_true",
                        help="8 train shards at the smallest size and proportionally more at larger ones (the same "
                        "shard size everywhere), instead of 8 at every size")
    parser.add_argument("--group-mb", type=float, default=None,
                        help="--max-group-mb of the pipeline runs (default: the pipeline's)")
    parser.add_argument("--hot-copies", type=int, default=0,
                        help="also run a corpus of the smallest size plus one document repeated this many times")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    full = args.sizes_mb if args.one_worker_sizes is None else args.one_worker_sizes

    lines = [f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}"]
    print(lines[0], flush=True)
    model_path = os.path.join(args.work, "tokenizer.model")
    peaks: dict[int, list[float]] = {}  # size -> largest worker's peak RSS (MB) of each 2-worker run
    for size in args.sizes_mb:
        shards = round(8 * size / min(args.sizes_mb)) if args.scale_shards else 8
        files = corpus_files(args.work, size, args.file_mb)
        texts = read_texts(files)
        mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        ensure_tokenizer(model_path, texts)
        glob_ = os.path.join(os.path.dirname(files[0]), "*.jsonl.gz")
        reps = []
        for rep in range(args.repeats if size in full else 1):
            row = {"size_mb": round(mb, 1), "docs": len(texts), "train_shards": shards}
            if size in full:
                for procs in (1, 2):
                    sec, cpu, tokens = raw_encode(model_path, texts, procs)
                    row[f"raw{procs}_mbs"], row[f"raw{procs}_cpu"] = mb / sec, cpu
                    row["tokens"] = tokens
                    print(f"{size} MB raw encode, {procs} process(es): {sec:.1f} s, {mb / sec:.2f} MB/s, "
                          f"CPU {cpu:.1f} s", flush=True)
                if rep == 0:
                    sec, cpu, kept = plain_loop(model_path, texts)
                    plain = {"plain_mbs": mb / sec, "plain_cpu": cpu}
                    print(f"{size} MB filter + encode kept ({kept}) without Beam, 1 process: {sec:.1f} s, "
                          f"{mb / sec:.2f} MB/s, CPU {cpu:.1f} s", flush=True)
                row.update(plain)
            for workers in ((1, 2) if size in full else (2,)):
                res = run_prepare(glob_, os.path.join(args.work, f"out-{size}-{workers}"), model_path, workers,
                                  train_shards=shards, group_mb=args.group_mb)
                row[f"pipe{workers}"] = res
                print(f"{size} MB pipeline, {workers} worker(s): {res['seconds']:.1f} s, {mb / res['seconds']:.2f} MB/s, "
                      f"peak RSS launcher {res['rss_main_mb']:.0f} MB, worker {res['rss_worker_mb']:.0f} MB, "
                      f"CPU s launcher {res['launcher_cpu_s']} workers {res['worker_cpu_s']} | "
                      f"{res['groups']} | {res['summary']}", flush=True)
            if args.baseline_tree:
                base = run_prepare(glob_, os.path.join(args.work, f"out-{size}-baseline"), model_path, 2,
                                   train_shards=shards, tree=os.path.abspath(args.baseline_tree),
                                   group_mb=args.group_mb)
                row["base2"] = base
                print(f"{size} MB pipeline, 2 workers, baseline tree: {base['seconds']:.1f} s, peak RSS launcher "
                      f"{base['rss_main_mb']:.0f} MB, worker {base['rss_worker_mb']:.0f} MB, byte-identical shards: "
                      f"{shard_sums(base) == shard_sums(row['pipe2'])}", flush=True)
            peaks.setdefault(size, []).append(row["pipe2"]["rss_worker_mb"])
            if "pipe1" in row:
                same = shard_sums(row["pipe1"]) == shard_sums(row["pipe2"])
                same &= row["pipe1"]["manifest"]["tokenizer"]["sha256"] == row["pipe2"]["manifest"]["tokenizer"]["sha256"]
                row["identical"] = same
            reps.append(row)
        del texts
        lines.append(report_rows(reps[-1]))
        if len(reps) > 1:
            lines.append(repeat_summary(reps))
        print(lines[-1], flush=True)
    if len(peaks) > 1:
        first = min(peaks)
        lines.append("largest worker's peak RSS, 2 workers, median over repetitions: " + ", ".join(
            f"{size} MB input {statistics.median(v):.0f} MB ({statistics.median(v) / statistics.median(peaks[first]):.2f}x"
            f" of {first} MB)" for size, v in sorted(peaks.items())))
        print(lines[-1], flush=True)
    if args.hot_copies:
        lines.append(hot_key_run(args, model_path))
        print(lines[-1], flush=True)
    lines.append(f"load average after: {os.getloadavg()}")
    print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


def hot_document(path: str) -> str:
    """The first short document of ``path`` that the Gopher rules keep: the text the hot-key corpus repeats."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return next(t for t in (json.loads(line)["text"] for line in f)
                    if 400 < len(t) < 1500 and reject_reason(t, FilterConfig()) is None)


def hot_key_run(args, model_path: str) -> str:
    """The smallest corpus plus one document repeated ``args.hot_copies`` times (ids hot-000000...), 2 workers."""
    size = min(args.sizes_mb)
    src = corpus_files(args.work, size, args.file_mb)
    out_dir = os.path.join(args.work, f"corpus-{size}-hot{args.hot_copies}")
    if not os.path.exists(os.path.join(out_dir, "DONE")):
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        for path in src:
            shutil.copy(path, out_dir)
        hot = hot_document(src[0])
        per_file = 10_000
        for start in range(0, args.hot_copies, per_file):
            with gzip.open(os.path.join(out_dir, f"hot-{start // per_file:05d}.jsonl.gz"), "wt", encoding="utf-8",
                           compresslevel=1) as f:
                for i in range(start, min(start + per_file, args.hot_copies)):
                    f.write(json.dumps({"id": f"hot-{i:06d}", "text": hot}) + "\n")
        open(os.path.join(out_dir, "DONE"), "w").close()
    hot = hot_document(src[0])
    res = run_prepare(os.path.join(out_dir, "*.jsonl.gz"), os.path.join(args.work, "out-hot"), model_path, 2,
                      group_mb=args.group_mb)
    counts = res["manifest"]["documents"]
    base = run_prepare(os.path.join(os.path.dirname(src[0]), "*.jsonl.gz"), os.path.join(args.work, "out-hot-base"),
                       model_path, 2, group_mb=args.group_mb)["manifest"]["documents"]
    return (f"hot key: {size} MB corpus + one document ({len(hot)} characters) x {args.hot_copies:,} copies, "
            f"2 workers: {res['seconds']:.1f} s, peak RSS launcher {res['rss_main_mb']:.0f} MB, worker "
            f"{res['rss_worker_mb']:.0f} MB; kept {counts['kept']:,} (without the copies {base['kept']:,}), "
            f"exact_duplicate {counts['rejected']['exact_duplicate']:,} (without the copies "
            f"{base['rejected']['exact_duplicate']:,}) | {res['groups']}")


def shard_sums(res: dict) -> list[str]:
    return [s["sha256_bin"] + s["sha256_idx"] for s in res["manifest"]["shards"]]


def repeat_summary(reps: list[dict]) -> str:
    """Median and range over the repetitions of each ratio, each ratio taken within one repetition."""
    def ratios(f):
        values = sorted(f(r) for r in reps)
        return f"median {statistics.median(values):.2f}x ({', '.join(f'{v:.2f}' for v in values)})"

    mb = reps[0]["size_mb"]
    return "\n".join([
        f"  over {len(reps)} repetitions (raw 1, raw 2, pipeline 1, pipeline 2 each time):",
        "    pipeline / raw at 2 workers " + ratios(lambda r: (mb / r["pipe2"]["seconds"]) / r["raw2_mbs"]),
        "    pipeline 2 workers / 1 worker " + ratios(lambda r: r["pipe1"]["seconds"] / r["pipe2"]["seconds"]),
        "    raw encode 2 / 1 processes " + ratios(lambda r: r["raw2_mbs"] / r["raw1_mbs"]),
        "    largest worker peak RSS MB " + ", ".join(f"{r['pipe2']['rss_worker_mb']:.0f}" for r in reps)
        + "; launcher " + ", ".join(f"{r['pipe2']['rss_main_mb']:.0f}" for r in reps),
        "    1 vs 2 workers byte-identical in every repetition: " + str(all(r["identical"] for r in reps)),
    ] + ([
        "    baseline tree, 2 workers / 1 worker (ours) " + ratios(lambda r: r["pipe1"]["seconds"] / r["base2"]["seconds"]),
        "    baseline tree, 2 workers: wall s " + ", ".join(f"{r['base2']['seconds']:.1f}" for r in reps)
        + " (ours " + ", ".join(f"{r['pipe2']['seconds']:.1f}" for r in reps) + "); largest worker peak RSS MB "
        + ", ".join(f"{r['base2']['rss_worker_mb']:.0f}" for r in reps),
    ] if all("base2" in r for r in reps) else []))


def report_rows(row: dict) -> str:
    mb, out = row["size_mb"], []
    p2 = row["pipe2"]
    kept = p2["manifest"]["documents"]["kept"]
    out.append(f"corpus {mb} MB, {row['docs']} documents ({kept} kept), {row['train_shards']} train shards")
    if "pipe1" in row:
        p1 = row["pipe1"]
        t1, t2 = mb / p1["seconds"], mb / p2["seconds"]
        out.append(f"  raw encode: 1 process {row['raw1_mbs']:.2f} MB/s, 2 processes {row['raw2_mbs']:.2f} MB/s "
                   f"(2 / 1 processes {row['raw2_mbs'] / row['raw1_mbs']:.2f}x: what these cores give perfectly parallel work)")
        out.append(f"  same work without Beam (filter all, encode kept), 1 process: {row['plain_mbs']:.2f} MB/s")
        out.append(f"  pipeline:   1 worker {t1:.2f} MB/s ({row['docs'] / p1['seconds']:.0f} docs/s), "
                   f"2 workers {t2:.2f} MB/s ({row['docs'] / p2['seconds']:.0f} docs/s)")
        out.append(f"  ratios: pipeline/raw 1 worker {t1 / row['raw1_mbs']:.2f}x, 2 workers {t2 / row['raw2_mbs']:.2f}x; "
                   f"pipeline 1 worker / no-Beam loop {t1 / row['plain_mbs']:.2f}x; 2 workers / 1 worker {t2 / t1:.2f}x; 1 vs 2 workers byte-identical: {row['identical']}")
        out.append(f"  CPU seconds: raw encode {row['raw1_cpu']:.1f} (1 process) / {row['raw2_cpu']:.1f} (2), "
                   f"no-Beam loop {row['plain_cpu']:.1f}, pipeline 1 worker {p1['launcher_cpu_s']:.1f} "
                   f"(CPU-time ratio raw/pipeline {row['raw1_cpu'] / p1['launcher_cpu_s']:.2f}x, "
                   f"no-Beam loop/pipeline {row['plain_cpu'] / p1['launcher_cpu_s']:.2f}x)")
        out.append(f"  peak RSS 1 worker (in-process): {p1['rss_main_mb']:.0f} MB")
    else:
        out.append(f"  pipeline:   2 workers {mb / p2['seconds']:.2f} MB/s ({row['docs'] / p2['seconds']:.0f} docs/s)")
    out.append(f"  peak RSS 2 workers: launcher {p2['rss_main_mb']:.0f} MB, largest worker {p2['rss_worker_mb']:.0f} MB; "
               f"CPU seconds: launcher {p2['launcher_cpu_s']}, worker processes {p2['worker_cpu_s']}")
    out.append(f"  {p2['groups']}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
