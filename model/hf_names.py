"""The one map between our state-dict keys and Hugging Face LlamaForCausalLM's, used in both directions.

    to_hf(cfg, ours)    -> {HF key: tensor}   (model.export writes these)
    from_hf(cfg, theirs) -> {our key: tensor} (model.hf_import reads these)

Our decoder uses HF Llama's rotary layout ("rotate_half"), so the map is a renaming plus our two fused
projections: wqkv = [q_proj; k_proj; v_proj] and w_gate_up = [gate_proj; up_proj], stacked along rows (dim 0).
No permutation anywhere. to_hf returns views (row blocks of the fused tensors); from_hf concatenates (one copy).
"""
from __future__ import annotations

import torch

from model.decoder import DecoderConfig

# Whole-model tensors: our key -> HF key. lm_head exists only when the head is untied.
TOP = {"embedding": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "lm_head": "lm_head.weight"}
# Per layer, unfused: our key under blocks.{i}. -> HF key under model.layers.{i}.
LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wo": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_down": "mlp.down_proj.weight",
}
# Per layer, fused: our key -> HF keys of its row blocks, in order.
FUSED = {
    "attn.wqkv": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "mlp.w_gate_up": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}
# HF keys that carry no weights of the model (buffers some older checkpoints saved); skipped on import.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def fused_rows(cfg: DecoderConfig, key: str) -> list[int]:
    """Rows of each HF block of the fused tensor `key`: q/k/v = H*D, K*D, K*D; gate/up = F, F."""
    if key == "attn.wqkv":
        return [cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim]
    return [cfg.ffn_dim, cfg.ffn_dim]


def _top_keys(cfg: DecoderConfig) -> dict[str, str]:
    return {k: v for k, v in TOP.items() if k != "lm_head" or not cfg.tie_embeddings}


def to_hf(cfg: DecoderConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> LlamaForCausalLM keys; fused projections split into row blocks (views, no copies)."""
    out = {theirs: state[ours] for ours, theirs in _top_keys(cfg).items()}
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out.update({theirs + hf: state[ours + k] for k, hf in LAYER.items()})
        for k, hf_keys in FUSED.items():
            parts = state[ours + k].split(fused_rows(cfg, k), dim=0)
            out.update({theirs + hf: part for hf, part in zip(hf_keys, parts)})
    return out


def from_hf(cfg: DecoderConfig, hf: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM keys -> our keys (fused blocks concatenated). ValueError naming `source` when a key our
    config needs is missing or a key we would drop is present. A tied model's saved lm_head.weight (some
    exporters write it) is dropped, as transformers drops it: the head is the embedding."""
    used, out = set(), {}

    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise ValueError(f"{source}: tensor {key} is missing; the weights do not match config.json "
                             f"(n_layers={cfg.n_layers}, tie_word_embeddings={cfg.tie_embeddings})")
        used.add(key)
        return hf[key]

    for ours, theirs in _top_keys(cfg).items():
        out[ours] = take(theirs)
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out.update({ours + k: take(theirs + hf_key) for k, hf_key in LAYER.items()})
        for k, hf_keys in FUSED.items():
            out[ours + k] = torch.cat([take(theirs + h) for h in hf_keys], dim=0)
    skipped = {TOP["lm_head"]} if cfg.tie_embeddings else set()
    extra = sorted(k for k in set(hf) - used - skipped if not k.endswith(IGNORED_SUFFIXES))
    if extra:
        raise ValueError(f"{source}: tensors our decoder has no place for: {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''} ({len(extra)} in all); the checkpoint is not a "
                         f"plain Llama of the shape config.json describes")
    return out
