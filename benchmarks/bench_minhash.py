"""Speed of MinHash signatures, and clustering rounds on a corpus with 10% near duplicates.

  * signatures: documents of ~2 KB (Zipf-distributed letter words, a few capitalized, punctuation), one
    process (one core): signature + band keys per second (pipeline.minhash), best of 3; next to datatrove's
    shingling + signature of the same documents (MinhashDedupSignature.get_shingles / get_signature, FineWeb's
    settings with its sha1 shingle hash, words split at whitespace) when datatrove is installed;
  * clustering: a corpus of --documents documents of which 10% are near duplicates (clusters of 2-20 edits of a
    base at Jaccard ~0.8-0.9, and chains of edits of edits); candidate edges as NearDedup makes them (each
    document linked to the smallest rank seen with the same band key), then the large-star/small-star rounds
    of pipeline.components: rounds that changed the edge set, before the fixed point.

Absolute figures depend on the machine and its load (printed with them). One markdown table row each:

    python benchmarks/bench_minhash.py
"""
from __future__ import annotations

import argparse
import os
import random
import string
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.components import components  # noqa: E402
from pipeline.minhash import NearDedupConfig, band_keys, signature  # noqa: E402


def make_vocabulary(rng: random.Random, size: int = 50_000) -> tuple[list[str], list[float]]:
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 10))) for _ in range(size)]
    weights = [1 / (i + 1) for i in range(size)]  # Zipf
    return words, weights


def document(rng: random.Random, vocab, chars: int = 2048) -> list[str]:
    words, weights = vocab
    out, size = [], 0
    while size < chars:
        batch = rng.choices(words, weights, k=64)
        for w in batch:
            if rng.random() < 0.05:
                w = w.capitalize()
            elif rng.random() < 0.05:
                w += rng.choice(".,;!?")
            out.append(w)
            size += len(w) + 1
            if size >= chars:
                break
    return out


def edit(ws: list[str], count: int, rng: random.Random) -> list[str]:
    out = list(ws)
    for i in rng.sample(range(len(out)), min(count, len(out))):
        out[i] = "z" + "".join(rng.choice(string.ascii_lowercase) for _ in range(7))
    return out


def best_rate(fn, items, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def datatrove_signer():
    try:
        from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
        from datatrove.utils.hashing import HashConfig
        from datatrove.utils.word_tokenizers import WordTokenizer
    except ImportError:
        return None

    class SplitWords(WordTokenizer):
        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    step = MinhashDedupSignature("/tmp/bench-minhash-unused", language=SplitWords(),
                                 config=MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1")))
    return lambda text: step.get_signature(step.get_shingles(text))


def corpus_with_duplicates(rng: random.Random, vocab, n: int, share: float = 0.10):
    """-> texts; ``share`` of them near duplicates of another (clusters and chains)."""
    texts: list[str] = []
    duplicates = int(n * share)
    made = 0
    while made < duplicates:
        base = document(rng, vocab, rng.randint(1000, 3000))
        texts.append(" ".join(base))
        if rng.random() < 0.2:  # a chain: each an edit of the one before
            ws = base
            for _ in range(min(rng.randint(2, 10), duplicates - made)):
                ws = edit(ws, max(1, len(ws) // 60), rng)
                texts.append(" ".join(ws))
                made += 1
        else:
            for _ in range(min(rng.randint(2, 20), duplicates - made)):
                k = max(1, round(len(base) * rng.uniform(0.011, 0.022)))
                texts.append(" ".join(edit(base, k, rng)))
                made += 1
    while len(texts) < n:
        texts.append(" ".join(document(rng, vocab, rng.randint(1000, 3000))))
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], duplicates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signature-documents", type=int, default=3000)
    parser.add_argument("--documents", type=int, default=20_000, help="corpus size of the clustering figure")
    parser.add_argument("--beam-documents", type=int, default=5000,
                        help="documents of that corpus run through the NearDedup stage on Beam (0: skip)")
    args = parser.parse_args(argv)
    cfg = NearDedupConfig()
    rng = random.Random(0)
    vocab = make_vocabulary(rng)
    print(f"Load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; numpy {np.__version__}")
    print()

    texts = [" ".join(document(rng, vocab)) for _ in range(args.signature_documents)]
    kb = sum(len(t.encode()) for t in texts) / len(texts) / 1024
    ours = best_rate(lambda t: band_keys(signature(t, cfg), cfg), texts)
    theirs_fn = datatrove_signer()
    theirs = best_rate(theirs_fn, texts) if theirs_fn else float("nan")
    print("| documents | mean KB | signatures + band keys / s / core (ours) | datatrove signatures / s / core | "
          "ours / datatrove |")
    print("|---|---|---|---|---|")
    print(f"| {len(texts)} | {kb:.2f} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.1f}x |")
    print()

    corpus, planted = corpus_with_duplicates(rng, vocab, args.documents)
    start = time.perf_counter()
    smallest: dict[bytes, int] = {}
    edges = []
    for i, text in enumerate(corpus):  # node = position (a stand-in for the rank); link to the key's smallest
        sig = signature(text, cfg)
        for key in band_keys(sig, cfg):
            held = smallest.setdefault(key, i)
            if held != i:
                edges.append((i, held))
    sign_seconds = time.perf_counter() - start
    start = time.perf_counter()
    labels, rounds = components(edges, cfg.max_rounds)
    cc_seconds = time.perf_counter() - start
    sizes: dict[int, int] = {}
    for root in labels.values():
        sizes[root] = sizes.get(root, 0) + 1
    print("| documents | planted near duplicates | candidate edges | removed | clusters | largest cluster | "
          "rounds that changed edges | rounds run by default | signing s | clustering s (in memory) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {len(corpus)} | {planted} | {len(edges)} | {len(labels)} | {len(sizes)} | "
          f"{max(sizes.values()) + 1 if sizes else 1} | {rounds} | {cfg.max_rounds} | {sign_seconds:.1f} | "
          f"{cc_seconds:.1f} |")

    if args.beam_documents:
        print()
        print(beam_row(corpus[:args.beam_documents], cfg))


def beam_row(texts: list[str], cfg: NearDedupConfig) -> str:
    """The whole NearDedup stage on Beam's local FnApiRunner (one worker), on ``texts``: documents per second
    end to end (Beam's start-up and the fixed rounds included), and how many it removed."""
    import apache_beam as beam

    from pipeline.documents import Document, dedup_key
    from pipeline.near_dedup import NearDedup
    from pipeline.prepare import pipeline_options

    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter

    docs = [(dedup_key(t), Document(f"{i:08d}", t, f"bench:{i}")) for i, t in enumerate(texts)]
    options, runner = pipeline_options([])
    start = time.perf_counter()
    p = beam.Pipeline(runner=runner, options=options)
    kept, rejected = p | beam.Create(docs, reshuffle=False) | NearDedup(cfg, buckets=4)
    counter = Metrics.counter("bench", "rejected")
    rejected | beam.Map(lambda _: counter.inc())
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    found = result.metrics().query(MetricsFilter().with_name("rejected"))["counters"]
    removed = sum(c.committed for c in found)
    return ("| stage | rounds | documents | removed | seconds (Beam start-up included) | documents / s |\n"
            "|---|---|---|---|---|---|\n"
            f"| NearDedup, FnApiRunner, 1 worker | {cfg.max_rounds} | {len(docs)} | {removed} | {seconds:.1f} | "
            f"{len(docs) / seconds:,.0f} |")

if __name__ == "__main__":
    main()
