"""Benchmark of the training data stream (launch/data.py): seek cost and throughput against the model.

    python benchmarks/bench_data.py

1. Seek cost: wall time to produce one rank's batch at optimizer step 10, 10,000 and 10,000,000 from a
   freshly built loader (no cached permutation), side by side in this process. A ratio near 1.0 means resume
   cost does not grow with the step (no replay, no permutation array). The permutation alone is also timed at
   the size of a 100B-token corpus (48.8M windows of 2048 tokens), at the start and the end of an epoch.
2. Throughput: samples/s the loader produces for the tiny and quickstart run configs (their seq_len and
   global batch), against samples/s the tiny model consumes on this machine (forward + backward + AdamW,
   one process), measured here in the same run.
3. Blends (launch/blend.py): the same shards as three sources (every third shard, weights 0.5/0.3/0.2)
   against the single stream over all of them: per-sample loader time, blended / single, interleaved over
   repetitions (range reported), at the quickstart's batch (16 x 128) and one rank's batch of a 1B run
   (64 x 2048); the blend's one-off set-up; and its seek cost at steps 10 / 10,000 / 10,000,000 as in 1.

The synthetic corpus is written with pipeline.shards.write_shard into a temporary directory.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch.blend import BlendedStream, source_seed  # noqa: E402
from launch.data import FeistelPermutation, RankLoader, SampleStream  # noqa: E402
from model.decoder import SIZES, Decoder, DecoderConfig, flops_per_token  # noqa: E402
from pipeline.shards import write_shard  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_corpus(directory: str, tokens: int, shards: int, vocab: int, seed: int = 0) -> list[str]:
    """Shards of documents with lognormal lengths (median ~600 tokens), ids uniform in [3, vocab), EOS=2."""
    rng = np.random.default_rng(seed)
    prefixes = []
    per_shard = tokens // shards
    for s in range(shards):
        lengths = np.maximum(1, rng.lognormal(6.4, 1.0, size=per_shard // 300).astype(np.int64))
        lengths = lengths[np.cumsum(lengths) <= per_shard]
        ids = rng.integers(3, vocab, size=int(lengths.sum()), dtype=np.int64)
        docs = (np.append(d, 2) for d in np.split(ids, np.cumsum(lengths)[:-1]))
        prefix = os.path.join(directory, f"shard-{s:05d}-of-{shards:05d}")
        write_shard(prefix, docs, vocab)
        prefixes.append(prefix)
    return prefixes


def time_call(fn, repeats: int) -> float:
    """Median wall seconds of fn() over repeats, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def seek_cost(prefixes, seq_len, global_batch, micro_batch, world_size, repeats) -> dict:
    stream = SampleStream(prefixes, seq_len, seed=1234)

    def first_batch(step):
        stream.drop_caches()  # cold: build the epoch's permutation keys as a resumed run would
        return next(iter(RankLoader(stream, global_batch, micro_batch, 0, world_size, start_step=step)))

    out = {"samples_per_epoch": stream.samples_per_epoch, "steps": {}}
    for step in (10, 10_000, 10_000_000):  # the warm-up call pages the touched shard regions in
        seconds = time_call(lambda: first_batch(step), repeats)
        out["steps"][step] = {"seconds": seconds, "epoch": step * global_batch // stream.samples_per_epoch}
    base = out["steps"][10]["seconds"]
    for v in out["steps"].values():
        v["ratio_vs_step_10"] = v["seconds"] / base
    return out


def permutation_at_scale(repeats: int) -> dict:
    n = 100_000_000_000 // 2048  # windows in a 100B-token corpus at seq_len 2048
    perm = FeistelPermutation(n, seed=1234, epoch=3)
    # 32 consecutive blocks of 512 at each end: cycle walking makes one block's cost vary with its longest walk.
    blocks = 32

    def run(first):
        for b in range(blocks):
            perm(np.arange(first + b * 512, first + (b + 1) * 512))

    start = time_call(lambda: run(0), repeats) / blocks
    end = time_call(lambda: run(n - blocks * 512), repeats) / blocks
    return {"windows": n, "seconds_512_at_start": start, "seconds_512_at_end": end, "ratio_end_vs_start": end / start}


def loader_rate(prefixes, seq_len, global_batch, micro_batch, steps) -> float:
    """Global samples/s of one process producing every micro-batch of `steps` global batches."""
    stream = SampleStream(prefixes, seq_len, seed=1234)
    loader = iter(RankLoader(stream, global_batch, micro_batch, 0, 1, start_step=0))
    next(loader)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(loader)
    return steps * global_batch / (time.perf_counter() - t0)


def blend_cost(prefixes, seq_len, global_batch, micro_batch, steps, repeats) -> dict:
    """Blended vs single-stream loader over the same shards: per-repetition time ratio, set-up, seek cost."""
    weights, names = [0.5, 0.3, 0.2], ["a", "b", "c"]

    def make_blend():
        return BlendedStream([SampleStream(prefixes[i::3], seq_len, source_seed(1234, i)) for i in range(3)],
                             weights, names)

    single, blend = SampleStream(prefixes, seq_len, seed=1234), make_blend()

    def run(stream):
        loader = iter(RankLoader(stream, global_batch, micro_batch, 0, 1, start_step=0))
        t0 = time.perf_counter()
        for _ in range(steps):
            next(loader)
        return time.perf_counter() - t0

    run(single), run(blend)  # warm-up: page the shards in
    ratios = []
    for r in range(repeats):
        if r % 2:
            b, s = run(blend), run(single)
        else:
            s, b = run(single), run(blend)
        ratios.append(b / s)
    setup = time_call(make_blend, max(3, repeats // 4))

    def first_batch(step):
        blend.drop_caches()  # cold, as in seek_cost
        return next(iter(RankLoader(blend, global_batch, micro_batch, 0, 1, start_step=step)))

    seek = {step: time_call(lambda: first_batch(step), repeats) for step in (10, 10_000, 10_000_000)}
    return {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "setup_seconds": setup, "seek_seconds": seek,
            "seek_ratio_10m_vs_10": seek[10_000_000] / seek[10]}


def model_rate(size: str, vocab: int, seq_len: int, global_batch: int, micro_batch: int, steps: int) -> dict:
    """Global samples/s the model trains at in one process: forward + backward per micro-batch, AdamW per step."""
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=vocab, max_seq_len=seq_len, **SIZES[size])
    model = Decoder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(3, vocab, (micro_batch, seq_len))
    micro_steps = global_batch // micro_batch

    def train_step():
        for _ in range(micro_steps):
            model(x, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    seconds = time.perf_counter() - t0
    return {"samples_per_s": steps * global_batch / seconds, "flops_per_token": flops_per_token(cfg, seq_len)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=20_000_000, help="synthetic corpus size in tokens")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=2048, help="seq_len of the seek benchmark")
    parser.add_argument("--global-batch", type=int, default=512)
    parser.add_argument("--world-size", type=int, default=8, help="the seek benchmark times rank 0 of this many")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    results = {"args": vars(args), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prefixes = make_corpus(tmp, args.tokens, args.shards, args.vocab)
        print(f"corpus: {args.tokens:,} tokens in {args.shards} shards, written in {time.perf_counter() - t0:.1f}s")

        per_rank = args.global_batch // args.world_size
        seek = seek_cost(prefixes, args.seq_len, args.global_batch, min(per_rank, 8), args.world_size, args.repeats)
        results["seek"] = seek
        print(f"\nseek: rank 0 of {args.world_size}, {per_rank} samples x {args.seq_len + 1} tokens per batch, "
              f"{seek['samples_per_epoch']:,} windows per epoch, median of {args.repeats} cold starts")
        for step, v in seek["steps"].items():
            print(f"  step {step:>12,} (epoch {v['epoch']:>7,}): {v['seconds'] * 1e3:7.2f} ms   "
                  f"ratio vs step 10: {v['ratio_vs_step_10']:.2f}")
        scale = permutation_at_scale(args.repeats)
        results["permutation_100b"] = scale
        print(f"  permutation over {scale['windows']:,} windows (100B tokens): 512 lookups (mean of 32 blocks) "
              f"{scale['seconds_512_at_start'] * 1e3:.2f} ms at the epoch start, "
              f"{scale['seconds_512_at_end'] * 1e3:.2f} ms at its end (ratio {scale['ratio_end_vs_start']:.2f})")

        print("\nthroughput (one process; model = forward + backward + AdamW of the tiny decoder on CPU):")
        results["throughput"] = {}
        for name in ("tiny", "quickstart"):
            with open(os.path.join(ROOT, "launch", "configs", f"{name}.json")) as f:
                cfg = json.load(f)
            seq_len, gb, mb = cfg["seq_len"], cfg["global_batch"], cfg["micro_batch"]
            loader = loader_rate(prefixes, seq_len, gb, mb, steps=max(20, 4000 // gb))
            model = model_rate(cfg["model"]["size"], 8000, seq_len, gb, mb, steps=5)
            results["throughput"][name] = {"loader_samples_per_s": loader, "model_samples_per_s": model["samples_per_s"],
                                           "loader_over_model": loader / model["samples_per_s"]}
            print(f"  {name:<10} seq_len {seq_len:>4}, global batch {gb:>3}: loader {loader:>9,.0f} samples/s, "
                  f"model {model['samples_per_s']:>7,.1f} samples/s  -> loader/model = {loader / model['samples_per_s']:,.0f}x")

        # What a GPU would ask of one rank's loader: a 1B model at 45% MFU on an H100 (989 TFLOP/s bf16).
        cfg_1b = DecoderConfig(vocab_size=32000, max_seq_len=2048, **SIZES["1b"])
        need = 0.45 * 989e12 / flops_per_token(cfg_1b, 2048) / 2048
        big = loader_rate(prefixes, 2048, 64, 8, steps=20)
        results["gpu_estimate"] = {"h100_1b_samples_per_s_needed": need, "loader_samples_per_s_seq2048": big}
        print(f"  seq_len 2048: loader {big:,.0f} samples/s per process; a 1B model at 45% MFU on one H100 needs "
              f"~{need:,.1f} samples/s (estimate from FLOPs, not measured) -> {big / need:,.0f}x headroom")

        results["blend"] = {}
        # The quickstart config's batch (16 x 128), and one rank's share of a 1B run's (64 x 2048).
        for sl, gb, mb in ((128, 16, 4), (2048, 64, 8)):
            blend = blend_cost(prefixes, sl, gb, mb, steps=200, repeats=args.repeats)
            results["blend"][f"{gb}x{sl}"] = blend
            print(f"\nblend of 3 sources (0.5/0.3/0.2) vs one stream over the same shards, {gb} samples x {sl} "
                  f"tokens per batch, 200 steps x {args.repeats} interleaved repetitions: blended / single time = "
                  f"{blend['ratio_median']:.3f} (range {blend['ratio_min']:.3f}-{blend['ratio_max']:.3f}); set-up "
                  f"{blend['setup_seconds'] * 1e3:.0f} ms once per process; seek (first batch, cold) "
                  + ", ".join(f"step {k:,} {v * 1e3:.2f} ms" for k, v in blend["seek_seconds"].items())
                  + f" (10M / 10 = {blend['seek_ratio_10m_vs_10']:.2f})")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
