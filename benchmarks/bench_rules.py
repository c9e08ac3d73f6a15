"""Cost of each quality rule set (Gopher, C4, FineWeb, and all three as QualityFilter runs them), of PII redaction
and of the URL blocklist check, relative to raw SentencePiece encoding of the same text, and what each set removes.

The corpus is the built-in one (pipeline.builtin_corpus, standard library + distributions) or the JSONL files
given with --jsonl ("text" field). A SentencePiece BPE model (--vocab-size) is trained on a sample of it; the
reference is that model's ``encode`` over every document, one thread, one document per call. Each measurement
is the best of --repeats runs in this one process; absolute seconds depend on the machine and its load
(printed), the ratios are the result:

    python benchmarks/bench_rules.py --work /tmp/bench-rules --out /tmp/bench-rules.md
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.builtin_corpus import write_builtin_corpus  # noqa: E402
from pipeline.c4_rules import EDITS, C4Config, c4_clean  # noqa: E402
from pipeline.documents import Document  # noqa: E402
from pipeline.filters import FilterConfig, iter_reject_reasons  # noqa: E402
from pipeline.fineweb_rules import FineWebConfig, fineweb_reason  # noqa: E402
from pipeline.pii import redact  # noqa: E402
from pipeline.urls import parse_blocklist, url_blocked  # noqa: E402
from pipeline.tokenizer import train_tokenizer  # noqa: E402


def read_texts(paths) -> list[str]:
    texts = []
    for path in paths:
        with (gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")) as f:
            texts.extend(json.loads(line)["text"] for line in f if line.strip())
    return [t for t in texts if isinstance(t, str) and t.strip()]


def best_of(repeats: int, fn):
    """(least seconds over ``repeats`` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def quality_stage(texts: list[str], gopher, c4, fineweb) -> list[str | None]:
    """The reasons (None = kept) that pipeline.filter_stage's QualityFilter DoFn gives, run without a runner."""
    import apache_beam as beam
    from apache_beam.utils.windowed_value import WindowedValue

    from pipeline.filter_stage import _QualityFn
    fn = _QualityFn(gopher, c4, fineweb)
    fn.start_bundle()
    out = []
    for i, text in enumerate(texts):
        out.extend(fn.process(Document(id=str(i), text=text, source="bench")))
    out.extend(fn.finish_bundle())
    reasons = []
    for o in out:
        tag, value = (o.tag, o.value) if isinstance(o, beam.pvalue.TaggedOutput) else (None, o)
        value = value.value if isinstance(value, WindowedValue) else value
        if tag != "edits":
            reasons.append(value.reason if tag == "rejected" else None)
    return reasons


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/bench-rules")
    parser.add_argument("--jsonl", nargs="*", default=None, help="JSONL(.gz) files to use instead of the built-in corpus")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the results as markdown here")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    say(f"Load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; Python {sys.version.split()[0]}")
    paths = args.jsonl or write_builtin_corpus(os.path.join(args.work, "corpus"))
    texts = read_texts(paths)
    chars = sum(map(len, texts))
    say(f"{len(texts)} documents, {chars / 1e6:.2f} M characters ({'given files' if args.jsonl else 'built-in corpus'})")

    import sentencepiece as spm
    model = os.path.join(args.work, "bench.model")
    train_tokenizer(texts[: max(1, len(texts) // 2)], model, args.vocab_size)
    sp = spm.SentencePieceProcessor(model_file=model, num_threads=1)
    t_spm, _ = best_of(args.repeats, lambda: [sp.encode(t) for t in texts])
    say(f"SentencePiece encode (vocab {args.vocab_size}, one document per call): {t_spm:.2f} s "
        f"({chars / t_spm / 1e6:.2f} M chars/s)")
    say("")

    gopher, c4, tfds, fineweb = FilterConfig(), C4Config(), C4Config(terminal_punct=True), FineWebConfig()
    runs = [
        ("gopher (reject_reasons, ~1 MB batches)", lambda: list(iter_reject_reasons(texts, gopher))),
        ("c4 (c4_clean, defaults)", lambda: [c4_clean(t, c4).reason for t in texts]),
        ("c4 as TFDS (terminal_punct on)", lambda: [c4_clean(t, tfds).reason for t in texts]),
        ("fineweb (fineweb_reason)", lambda: [fineweb_reason(t, fineweb) for t in texts]),
        ("QualityFilter gopher,c4,fineweb", lambda: quality_stage(texts, gopher, c4, fineweb)),
    ]
    # The built-in corpus has no URLs: each document gets one on one of 2,000 hosts, half of them blocked by
    # a list of 1,000 domains (their parents). The check looks at the URL only; its cost is per document.
    blocklist = parse_blocklist([f"site{i}.example.com" for i in range(0, 2000, 2)], "bench")
    urls = [f"https://www.site{i % 2000}.example.com/page/{i}" for i in range(len(texts))]
    extra = [
        ("PII redaction (pii.redact; drops nothing)", lambda: [None for _ in map(redact, texts)]),
        ("URL blocklist check (urls.url_blocked), 1,000 domains", lambda: [
            "url_blocked" if url_blocked(u, blocklist) else None for u in urls]),
    ]
    say("| rule set | seconds | M chars/s | cost relative to SentencePiece encode | kept documents |")
    say("|---|---|---|---|---|")
    outcomes = {}
    for name, fn in runs:
        seconds, reasons = best_of(args.repeats, fn)
        outcomes[name] = collections.Counter(r or "kept" for r in reasons)
        say(f"| {name} | {seconds:.2f} | {chars / seconds / 1e6:.2f} | {seconds / t_spm:.2f} | "
            f"{outcomes[name]['kept']} of {len(texts)} |")
    for name, fn in extra:
        seconds, reasons = best_of(args.repeats, fn)
        say(f"| {name} | {seconds:.2f} | {chars / seconds / 1e6:.2f} | {seconds / t_spm:.2f} | "
            f"{sum(r is None for r in reasons)} of {len(texts)} |")
    say("")
    say("What each set removes (documents per reason; C4's line edits over the documents it keeps):")
    for name, counts in outcomes.items():
        say(f"- {name}: " + ", ".join(f"{r} {n}" for r, n in counts.most_common() if r != "kept"))
    totals = collections.Counter()
    for t in texts:
        v = c4_clean(t, c4)
        if v.reason is None:
            totals.update(dict(zip(EDITS, v.edits)))
    say("- c4 line edits: " + ", ".join(f"{e} {totals[e]}" for e in EDITS))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
