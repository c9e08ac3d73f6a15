"""Memory and time of putting one write group's documents in key order: in_key_order (through a temporary file, one
batch at a time) against sorting every decompressed (key, tokens) pair in memory, the simple alternative.

    python benchmarks/bench_shard_writer.py [--batches 40]

Each batch is ~1 MB of uint16 tokens (1,500 documents of 350 tokens, random 64-hex-digit keys), packed as the
tokenize stage packs it. Peak memory is tracemalloc's, beyond the packed batches themselves (both orders hold
those: the runner hands the run writer its whole write group).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipeline.packing import pack_token_batch, unpack_token_batch  # noqa: E402
from pipeline.write import in_key_order  # noqa: E402


def make_batches(count: int) -> list:
    rng = random.Random(0)
    batches = []
    for b in range(count):
        items = [(("%064x" % rng.getrandbits(256), "%064x" % rng.getrandbits(256)),
                  np.random.default_rng(b * 10000 + i).integers(0, 8000, 350, dtype=np.uint16).tobytes())
                 for i in range(1500)]
        batches.append(pack_token_batch(items))
    return batches


def sorted_in_memory(batches):
    """The simple alternative: every (key, tokens) pair decompressed and sorted at once."""
    yield from sorted(item for batch in batches for item in unpack_token_batch(batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="~1 MB of tokens each")
    args = parser.parse_args()
    batches = make_batches(args.batches)
    tokens_mb = sum(sum(lengths) for _, lengths, _ in batches) / 1e6
    results = {}
    for name, order in (("sorted in memory", sorted_in_memory), ("in_key_order", in_key_order)):
        tracemalloc.start()
        start, digest = time.perf_counter(), 0
        for _, token_bytes in order(batches):
            digest = (digest * 31 + hash(token_bytes)) & 0xFFFFFFFF
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        results[name] = digest
        print(f"{name}: {tokens_mb:.1f} MB of tokens, peak {peak:.1f} MB beyond the batches, {seconds:.2f} s")
    print("same order:", len(set(results.values())) == 1)


if __name__ == "__main__":
    main()
