"""Cost of the pure data-preparation steps, each as a ratio against a reference measured in the same run.

  * built-in corpus: MB and documents from the standard library + distributions, and with site-packages;
  * Gopher filters over that corpus: time of reject_reasons (in ~1 MB batches; and of reject_reason one
    document at a time) vs the time of `text.split()` over the same
    documents (the least any word-level rule must do), and how many documents each reason drops;
  * linearity on one-line documents of 2, 20 and 50 MB: reject_reason with the default max_words (stops
    early) and with max_words lifted (every rule runs over all of it), time ratio against the 2 MB case;
  * encoding one-line documents of 2, 20 and 50 MB: Tokenizer.encode_document (chunked at spaces) vs
    SentencePiece encoding the whole line at once, time ratio, identical ids, and peak RSS of each in a
    fresh process.

Absolute seconds depend on the machine and its load (printed); the ratios are the result. It runs for minutes
and needs a few GB of memory (the 50 MB document with max_words lifted); SentencePiece's whole-line
reference is skipped above 20 MB. benchmarks/RESULTS.md holds one run's output under a summary:

    python benchmarks/bench_filters.py --work /tmp/bench-filters --out /tmp/bench-filters.md
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.builtin_corpus import write_builtin_corpus  # noqa: E402
from pipeline.documents import Document, parse_value  # noqa: E402
from pipeline.filters import FilterConfig, iter_reject_reasons, reject_reason  # noqa: E402
from pipeline.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

SIZES_MB = (2, 20, 50)
# SentencePiece on a whole line holds several bytes of state per character; past this size the reference is
# skipped so a shared machine is not pushed out of memory.
WHOLE_LINE_MAX_MB = 20


def read_texts(paths) -> list[str]:
    texts = []
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f)
    return texts


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def one_line(texts: list[str], size: int) -> str:
    """``size`` characters of real corpus text joined into one line (newlines -> spaces)."""
    parts, total, i = [], 0, 0
    while total < size:
        t = texts[i % len(texts)].replace("\n", " ")
        parts.append(t)
        total += len(t) + 1
        i += 1
    return " ".join(parts)[:size]


# Peak RSS from /proc/self/status VmHWM: it belongs to the process image, so unlike ru_maxrss it does not
# inherit the (large) peak of the benchmark process that forked this one.
_CHILD = r"""
import sys, time
def peak_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
sys.path.insert(0, {root!r})
import sentencepiece as spm
from pipeline.tokenizer import Tokenizer
text = open({path!r}, encoding="utf-8").read()
base = peak_mib()
start = time.perf_counter()
if {mode!r} == "chunked":
    n = len(Tokenizer({model!r}).encode_document(text))
else:
    n = len(spm.SentencePieceProcessor(model_file={model!r}).encode(text)) + 1
print(time.perf_counter() - start, n, peak_mib(), base)
"""


def encode_in_child(mode: str, path: str, model: str, repeats: int = 2) -> tuple[float, int, float, float]:
    """(seconds, ids, peak RSS MiB, RSS MiB with the text loaded) of encoding ``path`` in a fresh process;
    the best time of ``repeats`` runs (the machine is shared), the largest peak."""
    code = _CHILD.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path=path,
                         model=model, mode=mode)
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        seconds, ids, peak, base = out.split()
        runs.append((float(seconds), int(ids), float(peak), float(base)))
    return min(r[0] for r in runs), runs[0][1], max(r[2] for r in runs), max(r[3] for r in runs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/bench-filters")
    parser.add_argument("--out", default=None, help="write the results as markdown here")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    lines = [f"Load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
             f"Python {sys.version.split()[0]}", ""]

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    say("## Built-in corpus")
    say("")
    say("| sources | files | documents | MB of text | seconds to gather |")
    say("|---|---|---|---|---|")
    corpora = {}
    for site in (False, True):
        seconds, paths = timed(lambda: write_builtin_corpus(os.path.join(args.work, "site" if site else "stdlib"),
                                                            include_site_packages=site))
        texts = read_texts(paths)
        corpora[site] = texts
        mb = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
        say(f"| {'stdlib + dist + site-packages' if site else 'stdlib + dist'} | {len(paths)} | {len(texts)} | "
            f"{mb:.1f} | {seconds:.1f} |")
    texts = corpora[True]

    say("")
    say("## Gopher filters over the built-in corpus (with site-packages)")
    say("")
    cfg = FilterConfig()
    docs = [d for d in (parse_value(t, str(i), "bench") for i, t in enumerate(texts)) if isinstance(d, Document)]
    t_split, _ = timed(lambda: [d.text.split() for d in docs])
    t_filter, reasons = timed(lambda: list(iter_reject_reasons((d.text for d in docs), cfg)))
    t_single, single = timed(lambda: [reject_reason(d.text, cfg) for d in docs])
    mb = sum(len(d.text) for d in docs) / 1e6
    say(f"{len(docs)} documents, {mb:.1f} M characters: reject_reasons over ~1 MB batches (as the pipeline runs "
        f"them) {t_filter:.1f} s ({mb / t_filter:.1f} M chars/s), reject_reason one document at a time "
        f"{t_single:.1f} s, str.split {t_split:.1f} s; ratio filter / split = {t_filter / t_split:.1f}; "
        f"same reasons both ways: {reasons == single}")
    say("")
    counts = collections.Counter(r or "kept" for r in reasons)
    chars = collections.Counter()
    for d, r in zip(docs, reasons):
        chars[r or "kept"] += len(d.text)
    say("| outcome | documents | share | M characters |")
    say("|---|---|---|---|")
    for reason, n in counts.most_common():
        say(f"| {reason} | {n} | {100 * n / len(docs):.1f}% | {chars[reason] / 1e6:.1f} |")

    say("")
    say("## Linearity: one-line documents of real text")
    say("")
    unbounded = FilterConfig(max_words=10**9)
    say("| size | reject_reason (default) | ratio to 2 MB | reject_reason (max_words lifted) | ratio to 2 MB | "
        "reason |")
    say("|---|---|---|---|---|---|")
    base = None
    for size_mb in SIZES_MB:
        text = one_line(texts, size_mb * 1_000_000)
        t_default, r_default = timed(lambda: reject_reason(text, cfg))
        t_all, r_all = timed(lambda: reject_reason(text, unbounded))
        base = base or (t_default, t_all)
        say(f"| {size_mb} MB | {t_default:.3f} s | {t_default / base[0]:.1f}x | {t_all:.2f} s | "
            f"{t_all / base[1]:.1f}x | {r_default} / {r_all} |")
        del text

    say("")
    say("## Encoding one-line documents: chunked (ours) vs SentencePiece on the whole line")
    say("")
    model = os.path.join(args.work, "tokenizer.model")
    rng = random.Random(0)
    sample = rng.sample(texts, min(len(texts), 20_000))
    t_train, _ = timed(lambda: train_tokenizer(sample, model, 8000))
    say(f"Tokenizer: vocab 8000 trained on {len(sample)} corpus documents in {t_train:.1f} s.")
    say("")
    say("Each encoding runs in a fresh process (best time of 2); peak RSS is that process's VmHWM at the end, and "
        "'before encoding' its VmHWM once the text was read (the time includes loading the model).")
    say("")
    say("| size | whole line (SentencePiece) | peak RSS | chunked (encode_document) | peak RSS | before encoding | "
        "whole / chunked | chunked ratio to 2 MB | same ids |")
    say("|---|---|---|---|---|---|---|---|---|")
    base = None
    tok = Tokenizer(model)
    for size_mb in SIZES_MB:
        path = os.path.join(args.work, f"line-{size_mb}.txt")
        text = one_line(texts, size_mb * 1_000_000)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        t_chunk, n_chunk, rss_chunk, rss_text = encode_in_child("chunked", path, model)
        t_whole = n_whole = rss_whole = float("nan")
        if size_mb <= WHOLE_LINE_MAX_MB:
            t_whole, n_whole, rss_whole, _ = encode_in_child("whole", path, model)
        same = "-"
        if size_mb <= 20:  # comparing the ids in this process as well costs a full encode each
            import sentencepiece as spm
            same = str(tok.encode(text) == spm.SentencePieceProcessor(model_file=model).encode(text))
        base = base or t_chunk
        ran = n_whole == n_whole  # not NaN
        whole = f"{t_whole:.2f} s | {rss_whole:.0f} MiB" if ran else "not run | -"
        ratio = f"{t_whole / t_chunk:.2f}" if ran else "-"
        say(f"| {size_mb} MB | {whole} | {t_chunk:.2f} s | {rss_chunk:.0f} MiB | {rss_text:.0f} MiB | {ratio} | "
            f"{t_chunk / base:.1f}x | "
            f"{same} ({n_chunk} ids) |")
        os.unlink(path)

    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
