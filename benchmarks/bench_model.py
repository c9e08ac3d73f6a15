"""Benchmark of model/decoder.py and model/generate.py against transformers' LlamaForCausalLM of identical shape.

    python benchmarks/bench_model.py
    python benchmarks/bench_model.py --dtype bfloat16 --device cuda --d-model 1024 --layers 8 --seq-len 1024

Both models hold the same weights (ours converted with model.export.hf_state_dict) and run side by side in this
process, repetitions interleaved (ours, theirs, ours, theirs, ...) so that load from other processes hits both
alike; the reported figure is the median of the per-pair ratios ours/theirs (> 1.0 = ours faster).

1. Training step: forward + backward tokens/s (batch x seq_len tokens per step, loss = mean cross-entropy;
   HF's loss is computed from labels shifted inside LlamaForCausalLM, ours from targets shifted here).
2. Decoding: new tokens/s of greedy generation with a KV cache, ours (model.generate.generate) vs
   transformers' generate(do_sample=False, use_cache=True), same prompt batch, same number of new tokens (no EOS
   stop). The generated ids are checked to be identical, so both do the same work.

The 1-minute load average is printed next to every figure: this machine's CPU is shared.
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
from model.export import hf_config, hf_state_dict  # noqa: E402
from model.generate import generate  # noqa: E402


def build_pair(cfg: DecoderConfig, dtype: torch.dtype, device: str):
    """(ours, theirs): our Decoder and a LlamaForCausalLM holding copies of the same weights, in eval mode."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    ours = Decoder(cfg)
    hf_cfg = hf_config(cfg, eos_id=2, bos_id=1, dtype=dtype)
    hf_cfg._attn_implementation = "sdpa"          # transformers' fastest built-in CPU/GPU attention
    theirs = LlamaForCausalLM(hf_cfg)
    theirs.load_state_dict({k: v.detach().clone() for k, v in hf_state_dict(cfg, ours.state_dict()).items()},
                           strict=not cfg.tie_embeddings)
    if cfg.tie_embeddings:
        theirs.tie_weights()
    ours = ours.to(device=device, dtype=dtype).eval()
    theirs = theirs.to(device=device, dtype=dtype).eval()
    return ours, theirs


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def paired_ratio(fn_ours, fn_theirs, repeats: int, device: str) -> tuple[float, float, float]:
    """(median seconds ours, median seconds theirs, median per-pair ratio theirs/ours) over interleaved runs."""
    fn_ours(), fn_theirs()                          # warm-up: allocator, kernel selection, lazy init
    t_ours, t_theirs, ratios = [], [], []
    for i in range(repeats):
        pair = []
        # Alternate which one goes first so neither always runs right after the other's cache-warming.
        order = (fn_ours, fn_theirs) if i % 2 == 0 else (fn_theirs, fn_ours)
        for fn in order:
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            pair.append((fn, time.perf_counter() - t0))
        d = dict((id(fn), t) for fn, t in pair)
        t_ours.append(d[id(fn_ours)])
        t_theirs.append(d[id(fn_theirs)])
        ratios.append(d[id(fn_theirs)] / d[id(fn_ours)])
    return statistics.median(t_ours), statistics.median(t_theirs), statistics.median(ratios)


def bench_train_step(ours, theirs, cfg, batch: int, seq_len: int, repeats: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=gen).to(device)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(inputs, targets).backward()

    def step_theirs():
        theirs.zero_grad(set_to_none=True)
        theirs(input_ids=x[:, :-1], labels=x[:, :-1]).loss.backward()   # HF shifts labels internally

    # Same loss on the same weights (HF sees one token fewer of targets: its last position has no label).
    with torch.no_grad():
        lo = ours(inputs[:, :-1], targets[:, :-1]).item()
        lt = theirs(input_ids=inputs, labels=inputs).loss.item()
    ours.train(), theirs.train()
    s_ours, s_theirs, ratio = paired_ratio(step_ours, step_theirs, repeats, device)
    ours.eval(), theirs.eval()
    tokens = batch * seq_len
    return {"ours_tok_s": tokens / s_ours, "theirs_tok_s": tokens / s_theirs, "ratio": ratio,
            "loss_ours": lo, "loss_theirs": lt}


def bench_decode(ours, theirs, cfg, batch: int, prompt_len: int, new_tokens: int, repeats: int,
                 device: str) -> dict:
    gen = torch.Generator().manual_seed(2)
    prompts = torch.randint(3, cfg.vocab_size, (batch, prompt_len), generator=gen)
    prompt_lists = prompts.tolist()
    prompts = prompts.to(device)
    mask = torch.ones_like(prompts)
    out = {}

    def dec_ours():
        out["ours"] = generate(ours, prompt_lists, new_tokens, temperature=0.0)

    def dec_theirs():
        with torch.no_grad():
            ids = theirs.generate(prompts, attention_mask=mask, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, use_cache=True, eos_token_id=None,
                                  pad_token_id=0)
        out["theirs"] = ids[:, prompt_len:].tolist()

    s_ours, s_theirs, ratio = paired_ratio(dec_ours, dec_theirs, repeats, device)
    same = out["ours"] == out["theirs"]
    tokens = batch * new_tokens
    return {"ours_tok_s": tokens / s_ours, "theirs_tok_s": tokens / s_theirs, "ratio": ratio, "same_ids": same}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--untied", action="store_true", help="separate LM head (default: tied)")
    p.add_argument("--batch", type=int, default=4, help="training-step batch (sequences)")
    p.add_argument("--seq-len", type=int, default=256, help="training-step sequence length")
    p.add_argument("--decode-batch", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=9, help="interleaved pairs per measurement")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    dtype = getattr(torch, args.dtype)
    cfg = DecoderConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                        n_kv_heads=args.kv_heads, max_seq_len=max(args.seq_len, args.prompt_len + args.new_tokens),
                        tie_embeddings=not args.untied).validate()
    ours, theirs = build_pair(cfg, dtype, args.device)
    load = lambda: os.getloadavg()[0]   # noqa: E731
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}, "
          f"dtype {args.dtype}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(f"model: {cfg.to_dict()} ({count_params(cfg) / 1e6:.2f}M params)")

    load_before = load()
    r = bench_train_step(ours, theirs, cfg, args.batch, args.seq_len, args.repeats, args.device)
    print(f"train step  B={args.batch} T={args.seq_len}: ours {r['ours_tok_s']:,.0f} tok/s, transformers "
          f"{r['theirs_tok_s']:,.0f} tok/s, median ratio {r['ratio']:.2f}x (loss {r['loss_ours']:.4f} vs "
          f"{r['loss_theirs']:.4f}; load avg {load_before:.2f} -> {load():.2f})")
    load_before = load()
    d = bench_decode(ours, theirs, cfg, args.decode_batch, args.prompt_len, args.new_tokens, args.repeats,
                     args.device)
    print(f"decode      B={args.decode_batch} prompt={args.prompt_len} new={args.new_tokens}: ours "
          f"{d['ours_tok_s']:,.0f} tok/s, transformers {d['theirs_tok_s']:,.0f} tok/s, median ratio "
          f"{d['ratio']:.2f}x (same greedy ids: {d['same_ids']}; load avg {load_before:.2f} -> {load():.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
