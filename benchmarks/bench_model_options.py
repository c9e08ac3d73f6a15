"""Benchmark of the run-config model options, each against its plain counterpart, side by side in one process.

    python benchmarks/bench_model_options.py
    python benchmarks/bench_model_options.py --device cuda --dtype bfloat16 --d-model 1024 --layers 8 --seq-len 2048

Three pairs, each timing one training step (forward + backward, no optimizer) of the same weights on the same
tokens:

1. document mask vs causal: model.document_mask=true against plain causal attention, on sequences packed from
   documents of random length (mean --doc-len tokens, each ending in EOS);
2. chunked vs plain loss: the LM head + cross-entropy in chunks of --loss-chunk-tokens tokens (model/loss.py)
   against the whole (tokens x vocab) logits at once;
3. compiled vs eager: every block wrapped by torch.compile (Module.compile, default inductor) against eager.

Within a pair, repetitions are interleaved (A, B, B, A, A, B, ...) so that load from other processes hits both
alike; first the compile/warm-up steps of both run untimed. Reported: median tokens/s of each, and the per-pair
ratio B/A as median [min, max] over the repetitions (> 1 = B faster); peak memory of one step above the memory
held before it (B / A likewise). Peak memory is the process's resident high-water mark on CPU (Linux VmHWM,
reset before each step through /proc/self/clear_refs; torch's CPU allocations are invisible to tracemalloc) and
torch.cuda.max_memory_allocated on CUDA.

The 1-minute load average is printed: this machine's CPU may be shared.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.decoder import Decoder, DecoderConfig, count_params  # noqa: E402

EOS = 2


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


class PeakMemory:
    """Bytes of the peak above the start, of what runs between start() and stop()."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")           # resets VmHWM to the current resident size
            self.base = _status_bytes("VmHWM")

    def stop(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _status_bytes("VmHWM") - self.base


def packed_tokens(batch: int, seq_len: int, vocab: int, doc_len: int, seed: int) -> torch.Tensor:
    """(batch, seq_len + 1) ids: documents of uniform random length in [doc_len / 2, 3 doc_len / 2], each
    ending in EOS, packed end to end (the first and last document of a row are cut, as in training)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (batch, seq_len + 1), generator=gen)
    for row in x:
        at = -int(torch.randint(0, doc_len, (1,), generator=gen))   # a document in progress at the start
        while True:
            at += int(torch.randint(doc_len // 2, doc_len * 3 // 2 + 1, (1,), generator=gen))
            if at >= seq_len + 1:
                break
            if at >= 0:
                row[at] = EOS
    return x


def measure_pair(step_a, step_b, repeats: int, tokens: int, device: str) -> dict:
    """Interleaved timing and peak memory of two step functions; see the module docstring."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for fn in (step_a, step_b, step_a, step_b):          # warm-up: compilation, allocator, kernel selection
        fn()
    peak = PeakMemory(device)
    times = {"a": [], "b": []}
    mems = {"a": [], "b": []}
    for i in range(repeats):
        order = (("a", step_a), ("b", step_b)) if i % 2 == 0 else (("b", step_b), ("a", step_a))
        for name, fn in order:
            sync()
            peak.start()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            mems[name].append(peak.stop())
    ratios = [a / b for a, b in zip(times["a"], times["b"])]     # B's speed / A's speed = t_A / t_B
    return {"tok_s_a": tokens / statistics.median(times["a"]), "tok_s_b": tokens / statistics.median(times["b"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "mem_a": statistics.median(mems["a"]), "mem_b": statistics.median(mems["b"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--doc-len", type=int, default=128, help="mean document length for the document-mask pair")
    p.add_argument("--loss-chunk-tokens", type=int, default=1024, help="the chunked side (the run-config default)")
    p.add_argument("--repeats", type=int, default=7, help="timed steps of each side per pair")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--skip-compile", action="store_true", help="leave out the compiled-vs-eager pair")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    base = dict(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                n_kv_heads=args.kv_heads, max_seq_len=args.seq_len)
    cfg = DecoderConfig(**base).validate()
    torch.manual_seed(0)
    reference = Decoder(cfg)

    def model(**overrides) -> Decoder:
        m = Decoder(DecoderConfig(**base, **overrides))
        m.load_state_dict(reference.state_dict())
        return m.to(device=args.device, dtype=dtype).train()

    x = packed_tokens(args.batch, args.seq_len, args.vocab, args.doc_len, seed=1).to(args.device)
    inputs, targets = x[:, :-1], x[:, 1:]
    tokens = args.batch * args.seq_len
    documents = int((inputs == EOS).sum()) + args.batch

    def step(m: Decoder, chunk: int):
        def run():
            m.zero_grad(set_to_none=True)
            m(inputs, targets, loss_chunk_tokens=chunk).loss.backward()
        return run

    causal, masked = model(), model(document_mask=True, eos_id=EOS)
    chunk = args.loss_chunk_tokens
    pairs = [("document mask vs causal", "causal", "document mask", step(causal, chunk), step(masked, chunk)),
             ("chunked vs plain loss", "plain loss", f"chunked ({chunk} tokens)", step(causal, 0),
              step(causal, chunk))]
    if not args.skip_compile:
        compiled = model()
        for block in compiled.blocks:
            block.compile()
        pairs.append(("compiled vs eager", "eager", "compiled blocks", step(causal, chunk), step(compiled, chunk)))

    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}")
    print(f"model: {count_params(cfg) / 1e6:.2f}M params, d_model {args.d_model}, {args.layers} layers, "
          f"{args.heads}/{args.kv_heads} heads, vocab {args.vocab}; step: {args.batch} x {args.seq_len} tokens "
          f"({documents} documents, mean length {tokens / documents:.0f}); {args.repeats} timed steps per side")
    print()
    print("| comparison | A | B | A tok/s | B tok/s | speed B/A median [min, max] | A peak MB | B peak MB | "
          "memory B/A | load avg |")
    print("|---|---|---|---:|---:|---|---:|---:|---:|---|")
    for title, name_a, name_b, step_a, step_b in pairs:
        load_before = os.getloadavg()[0]
        r = measure_pair(step_a, step_b, args.repeats, tokens, args.device)
        print(f"| {title} | {name_a} | {name_b} | {r['tok_s_a']:,.0f} | {r['tok_s_b']:,.0f} | "
              f"{r['ratio']:.2f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] | {r['mem_a'] / 1e6:,.0f} | "
              f"{r['mem_b'] / 1e6:,.0f} | {r['mem_b'] / max(r['mem_a'], 1):.2f} | "
              f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
