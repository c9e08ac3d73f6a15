"""Cost of language identification (pipeline.language) against raw SentencePiece encoding of the same text.

Documents of about 2 KB (``--doc-chars``) cut at whitespace from the built-in corpus (stdlib docstrings and
installed distributions' descriptions: real English prose, with code and tables mixed in, as web text has).
In one process (one core), best of ``--repeats`` passes each:

  * lid.176 on each whole document (pipeline.language.identify: newlines to spaces, fastText predict, k=1);
  * SentencePiece encoding each document (``SentencePieceProcessor.encode(text)``, one thread), with a
    tokenizer of ``--vocab-size`` trained on a sample of the corpus;

and prints documents per second per core of each and the ratio (language ID time / encoding time). It also
prints what the default LanguageConfig (every language, min_score 0.65) would drop from the built-in corpus
and the labels it gives, since the quickstart runs on that corpus.

Absolute rates depend on the machine and its load (printed); the ratio is the result:

    python benchmarks/bench_language.py --work /tmp/bench-language
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.builtin_corpus import write_builtin_corpus  # noqa: E402
from pipeline.filters import FilterConfig, reject_reasons  # noqa: E402
from pipeline.language import LanguageConfig, identify, load_model, reject_reason  # noqa: E402
from pipeline.tokenizer import train_tokenizer  # noqa: E402


def read_texts(paths) -> list[str]:
    texts = []
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f)
    return texts


def cut_documents(texts: list[str], doc_chars: int, limit: int) -> list[str]:
    """Consecutive pieces of about ``doc_chars`` characters of the joined corpus, each cut at whitespace."""
    joined, docs, start = "\n\n".join(texts), [], 0
    while len(docs) < limit and start < len(joined):
        end = joined.find(" ", start + doc_chars)
        end = len(joined) if end < 0 else end
        piece = joined[start:end].strip()
        if piece:
            docs.append(piece)
        start = end + 1
    return docs


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/bench-language")
    parser.add_argument("--doc-chars", type=int, default=2000)
    parser.add_argument("--docs", type=int, default=5000, help="documents timed")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    print(f"Load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; Python {sys.version.split()[0]}")

    texts = read_texts(write_builtin_corpus(os.path.join(args.work, "corpus")))
    docs = cut_documents(texts, args.doc_chars, args.docs)
    chars = sum(map(len, docs))
    print(f"{len(docs)} documents of ~{args.doc_chars} characters ({chars / 1e6:.1f} M characters) from "
          f"{len(texts)} built-in corpus documents")

    import sentencepiece as spm

    model_path = os.path.join(args.work, "tokenizer.model")
    sample = random.Random(0).sample(texts, min(len(texts), 20_000))
    train_tokenizer(sample, model_path, args.vocab_size)
    sp = spm.SentencePieceProcessor(model_file=model_path)
    model = load_model()

    t_lid, predictions = best_time(lambda: [identify(d, model) for d in docs], args.repeats)
    t_sp, ids = best_time(lambda: [sp.encode(d) for d in docs], args.repeats)
    tokens = sum(map(len, ids))
    print()
    print("| step | documents/s per core | M characters/s | time / SentencePiece |")
    print("|---|---|---|---|")
    print(f"| language ID (lid.176.ftz, whole document) | {len(docs) / t_lid:,.0f} | {chars / t_lid / 1e6:.2f} | "
          f"{t_lid / t_sp:.2f} |")
    print(f"| SentencePiece encode (vocab {args.vocab_size}, {tokens / len(docs):.0f} tokens/document) | "
          f"{len(docs) / t_sp:,.0f} | {chars / t_sp / 1e6:.2f} | 1.00 |")

    cfg = LanguageConfig()
    dropped = sum(reject_reason(label, score, cfg) is not None for label, score in predictions)
    labels = collections.Counter(label for label, _ in predictions)
    print()
    print(f"Default LanguageConfig (every language, min_score {cfg.min_score}) on these documents: drops {dropped} "
          f"of {len(docs)} ({100 * dropped / len(docs):.1f}%); labels: "
          + ", ".join(f"{label} {n}" for label, n in labels.most_common(8)))
    whole = [identify(t, model) for t in texts]
    dropped_whole = sum(reject_reason(label, score, cfg) is not None for label, score in whole)
    print(f"On the built-in corpus's own {len(whole)} documents (as the quickstart reads them): drops "
          f"{dropped_whole} ({100 * dropped_whole / len(whole):.1f}%)")
    gopher = reject_reasons(texts, FilterConfig())
    passed = [(t, p) for t, p, r in zip(texts, whole, gopher) if r is None]
    dropped_passed = [(t, p) for t, p in passed if reject_reason(*p, cfg) is not None]
    lost_chars, passed_chars = sum(len(t) for t, _ in dropped_passed), sum(len(t) for t, _ in passed)
    lost_labels = collections.Counter(p[0] for _, p in dropped_passed)
    print(f"Of the {len(passed)} that pass the Gopher rules, it drops {len(dropped_passed)} "
          f"({100 * len(dropped_passed) / max(len(passed), 1):.1f}%), {lost_chars / 1e6:.2f} of "
          f"{passed_chars / 1e6:.2f} M characters; their labels: "
          + ", ".join(f"{label} {n}" for label, n in lost_labels.most_common(8)))


if __name__ == "__main__":
    main()
