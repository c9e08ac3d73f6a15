"""Document boundaries in packed sequences: per-token document ids, positions within the document, attention masks.

A training sequence packs several documents end to end, each ending in the EOS id (the EOS belongs to the
document it ends; the sequence may start or stop mid-document). With DecoderConfig.document_mask a token
attends only to earlier tokens of its own document and its rotary position counts from that document's first
token in the sequence, so every document is computed exactly as if it were alone (Llama 3, torchtitan's
"block_causal" mask).

    tokens      5  7  E  9  4  E  3
    document    0  0  0  1  1  1  2
    position    0  1  2  0  1  2  0

The mask has two forms, with the same meaning (True = attend):
- on CPU, a dense bool tensor (B, 1, T, T) for torch's scaled_dot_product_attention. FlexAttention cannot run a
  backward on CPU in torch 2.13, eager or compiled ("FlexAttention does not support backward on CPU"), and its
  eager forward is a slow unfused reference; SDPA's fused CPU kernel with a bool mask costs about what the
  plain causal one does (the mask costs B * T^2 bytes);
- elsewhere (CUDA), a FlexAttention BlockMask: the fused kernel skips the blocks the mask empties, so packed
  documents cost less than full causal attention. flex_attention must run compiled to be fused (eager it is
  the unfused reference), so it is wrapped in torch.compile once, on first use.
"""
from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

_compiled_flex_attention = None


def document_ids(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) ids -> (B, T) int64 index of each token's document within its row; an EOS closes its document."""
    is_eos = (tokens == eos_id).long()
    return is_eos.cumsum(-1) - is_eos          # documents before this token = EOS tokens strictly before it


def document_positions(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) ids -> (B, T) int64 position of each token within its document (0 at a document's first token)."""
    t = tokens.shape[-1]
    index = torch.arange(t, device=tokens.device).expand_as(tokens)
    starts = torch.zeros_like(tokens, dtype=torch.bool)
    starts[..., 1:] = tokens[..., :-1] == eos_id                 # a document starts right after an EOS
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(-1).values   # its first token's index
    return index - first


def dense_document_mask(documents: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, 1, T, T) bool: key <= query and both in the same document."""
    t = documents.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=documents.device).tril()
    return ((documents[:, :, None] == documents[:, None, :]) & causal)[:, None]


def block_document_mask(documents: torch.Tensor) -> BlockMask:
    """(B, T) document ids -> FlexAttention BlockMask with dense_document_mask's meaning, shared by all heads."""
    b, t = documents.shape

    def same_document_causal(batch, head, q, kv):
        return (documents[batch, q] == documents[batch, kv]) & (kv <= q)

    return create_block_mask(same_document_causal, b, None, t, t, device=documents.device)


def document_mask(documents: torch.Tensor) -> torch.Tensor | BlockMask:
    """The mask form that attends fastest on documents.device (see the module docstring)."""
    return dense_document_mask(documents) if documents.device.type == "cpu" else block_document_mask(documents)


def flex_document_attention(q, k, v, block_mask: BlockMask) -> torch.Tensor:
    """q (B, H, T, D), k/v (B, K, T, D) -> (B, H, T, D) through compiled FlexAttention (GQA when K < H)."""
    global _compiled_flex_attention
    if _compiled_flex_attention is None:
        _compiled_flex_attention = torch.compile(flex_attention)
    return _compiled_flex_attention(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])
