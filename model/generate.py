"""Sampling from a trained decoder with a KV cache: greedy, temperature, top-k, top-p, batched prompts.

    python -m model.generate --checkpoint runs/quickstart --prompt "Once upon a time" --max-new-tokens 64
    python -m model.generate --checkpoint model.pt --tokenizer data/tokenizer.model --prompt "A" --prompt "B" \
        --temperature 0.8 --top-k 50 --top-p 0.95 --seed 1

--checkpoint is anything model.export.load_checkpoint reads (run dir, tag dir, or {"config", "model"} .pt file).
Prompts are encoded with the run's tokenizer (SentencePiece or Hugging Face) and, like every document in
training, are preceded by the EOS id, which marks a document boundary in the packed training stream (the data
has no BOS); a model trained with document_mask saw every document alone from position 0, so its prompts are
not.
Prompts of different lengths share one batch: they are left-padded, the cache masks the padding, and each
sequence counts rotary positions from its own first token, so a prompt decodes the same alone or in a batch.
"""
from __future__ import annotations

import argparse
import sys

import torch

from model.decoder import Decoder, KVCache


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,). temperature 0 = greedy (argmax); top-k, then top-p (nucleus) filtering."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]                  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the most likely one always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: Decoder, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             seed: int | None = None) -> list[list[int]]:
    """Continue each prompt by up to max_new_tokens ids; returns only the new ids of each prompt.

    A sequence stops after emitting eos_id (which is included in its output). Generation also stops at the model's
    max_seq_len (prompt + new tokens never exceed it). A prompt that alone fills the context raises ValueError.
    """
    cfg = model.cfg
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token id (use the EOS id to start a document)")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError(f"generate: need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got {temperature}, "
                         f"{top_k}, {top_p}")
    longest = max(len(p) for p in prompts)
    if longest >= cfg.max_seq_len:
        raise ValueError(f"generate: prompt of {longest} tokens leaves no room in the context of "
                         f"{cfg.max_seq_len} tokens (max_seq_len); shorten the prompt to < {cfg.max_seq_len}")
    steps = min(max_new_tokens, cfg.max_seq_len - longest)
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    b = len(prompts)
    tokens = torch.zeros(b, longest, dtype=torch.long)
    pad_mask = torch.zeros(b, longest, dtype=torch.bool)
    for i, p in enumerate(prompts):                      # left padding: real tokens end at the same column
        tokens[i, longest - len(p):] = torch.tensor(p, dtype=torch.long)
        pad_mask[i, longest - len(p):] = True
    tokens, pad_mask = tokens.to(device), pad_mask.to(device)
    dtype = next(model.parameters()).dtype
    cache = KVCache(cfg, b, longest + steps, device=device, dtype=dtype)

    was_training = model.training
    model.eval()
    try:
        logits = model(tokens, cache=cache, pad_mask=pad_mask)[:, -1]          # (B, V)
        out = torch.empty(b, 0, dtype=torch.long, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for step in range(steps):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)      # (B,)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)      # finished rows just repeat EOS
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos_id is not None:
                done |= nxt == eos_id
                if bool(done.all()):
                    break
            if step + 1 < steps:
                logits = model(nxt[:, None], cache=cache)[:, -1]
    finally:
        model.train(was_training)
    results = []
    for row in out.tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id) + 1]
        results.append(row)
    return results


def main(argv=None) -> int:
    from model.export import build_model, load_checkpoint
    from pipeline.tokenizer_file import open_tokenizer_path

    p = argparse.ArgumentParser(description="Sample continuations from a checkpoint with a KV cache.")
    p.add_argument("--checkpoint", required=True, help="RUN_DIR, RUN_DIR/checkpoints/<tag>, or FILE.pt")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: checkpoints/latest)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model or tokenizer.json (default: the run's, or next to FILE.pt)")
    p.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for a batch")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    try:  # a missing checkpoint or tokenizer, a prompt longer than the context, a bad sampling setting
        cfg, state, tokenizer = load_checkpoint(args.checkpoint, args.tag)
        tokenizer = args.tokenizer or tokenizer
        if tokenizer is None:
            raise FileNotFoundError(f"no tokenizer.model or tokenizer.json found for {args.checkpoint}; pass "
                                    "--tokenizer PATH")
        tok = open_tokenizer_path(tokenizer)
        model = build_model(cfg, state).to(device=args.device, dtype=getattr(torch, args.dtype))
        # Each prompt starts after an EOS, as every document after the first does in training; a document-masked
        # model instead saw each document alone, from position 0, so its prompts start with their own text.
        lead = [] if cfg.document_mask else [tok.eos_id]
        prompts = [lead + tok.encode(text) for text in args.prompt]
        outputs = generate(model, prompts, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, eos_id=tok.eos_id, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for prompt, new in zip(prompts, outputs):
        # Decode prompt and continuation together: SentencePiece drops the leading space of a lone fragment.
        print(tok.decode([t for t in prompt[len(lead):] + new if t != tok.eos_id]))
        print("-" * 40)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
