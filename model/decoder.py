"""A Llama-style decoder-only transformer in one file: config, RMSNorm, Attention, MLP, Block, Decoder.

    python -c "from model.decoder import *; c = DecoderConfig(vocab_size=8000, max_seq_len=256, **SIZES['tiny']); \
print(count_params(c), Decoder(c)(torch.zeros(1, 8, dtype=torch.long)).shape)"

Architecture (numerically identical to Hugging Face's LlamaForCausalLM, so export is a renaming + split of the
fused projections, no permutation):
    token embedding -> n_layers x [x + Attention(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] -> RMSNorm -> LM head
    Attention: causal, rotary position embedding in the "rotate_half" layout (the first half of each head's
    dimensions pairs with the second half), grouped-query attention when n_kv_heads < n_heads,
    torch.nn.functional.scaled_dot_product_attention. No biases anywhere.
    With document_mask (training on packed sequences, model/documents.py): attention stays inside each
    EOS-terminated document and rotary positions restart at each document; without a KV cache only, so
    generation is unaffected.

Weights are created and initialized inside the constructor of the module that owns them (never touched from
outside afterwards), so the model builds on the meta device and under deepspeed.zero.Init, which partitions each
module's own parameters the moment that module's __init__ returns. The rotary tables are not parameters or
buffers: they are computed per forward from positions (T x head_dim/2 sin/cos, negligible next to the matmuls).

Parameter layout (state-dict keys):
    embedding                    (V, C)          token embedding; also the LM head when tie_embeddings
    blocks.{i}.attn_norm.weight  (C,)
    blocks.{i}.attn.wqkv         ((H + 2K) * D, C)  rows: H query heads, K key heads, K value heads
    blocks.{i}.attn.wo           (C, H * D)
    blocks.{i}.mlp_norm.weight   (C,)
    blocks.{i}.mlp.w_gate_up     (2F, C)         rows: F gate (SiLU) rows, then F up rows
    blocks.{i}.mlp.w_down        (C, F)
    norm.weight                  (C,)
    lm_head                      (V, C)          only when tie_embeddings is False
with C = d_model, H = n_heads, K = n_kv_heads, D = head_dim = C / H, F = ffn_hidden, V = vocab_size.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask
from torch.utils.checkpoint import checkpoint

from model.documents import document_ids, document_mask, document_positions, flex_document_attention
from model.loss import linear_cross_entropy

# Llama rounds the SwiGLU width (2/3 of 4 * d_model, so the three matrices cost what two 4x matrices would) up to
# a multiple of 256 for efficient matmul tiles; with it, d_model=4096 gives Llama-2-7B's 11008.
FFN_MULTIPLE_OF = 256


def llama_ffn_hidden(d_model: int) -> int:
    """Llama's SwiGLU hidden width for a model width: ceil(int(8 * d_model / 3) / 256) * 256."""
    hidden = int(2 * (4 * d_model) / 3)
    return FFN_MULTIPLE_OF * ((hidden + FFN_MULTIPLE_OF - 1) // FFN_MULTIPLE_OF)


@dataclass
class DecoderConfig:
    """Shape and numerics of the decoder; everything about training lives in launch/."""

    vocab_size: int                 # number of token ids; ids are 0..vocab_size-1
    d_model: int                    # residual stream width C
    n_layers: int                   # number of transformer blocks
    n_heads: int                    # query heads H; head_dim = d_model / n_heads
    n_kv_heads: int | None = None   # key/value heads K (grouped-query attention); None = n_heads (plain MHA)
    ffn_hidden: int | None = None   # SwiGLU hidden width F; None = llama_ffn_hidden(d_model)
    max_seq_len: int = 2048         # longest sequence (prompt + generated tokens) the model accepts
    rope_base: float = 10000.0      # rotary embedding base (theta); larger = longer wavelengths
    norm_eps: float = 1e-5          # RMSNorm epsilon (Llama-2 uses 1e-5)
    tie_embeddings: bool = True     # LM head shares the token embedding matrix
    activation_checkpointing: bool = False   # recompute each block in backward (saves activation memory)
    init_std: float = 0.02          # std of every weight matrix at init; output projections get std/sqrt(2*n_layers)
    document_mask: bool = False     # packed sequences: attend within EOS-terminated documents, positions restart
    eos_id: int | None = None       # the id that ends a document; needed by document_mask (launch fills it from
                                    # the data's tokenizer), unused otherwise

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        return llama_ffn_hidden(self.d_model) if self.ffn_hidden is None else self.ffn_hidden

    def validate(self) -> "DecoderConfig":
        """Raise ValueError naming the offending field and how to fix it; return self for chaining."""
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecoderConfig.{name} must be a positive integer, got {value!r}")
        for name in ("n_kv_heads", "ffn_hidden"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"DecoderConfig.{name} must be a positive integer or null, got {value!r}")
        for name in ("rope_base", "norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"DecoderConfig.{name} must be a positive number, got {value!r}")
        for name in ("tie_embeddings", "activation_checkpointing", "document_mask"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DecoderConfig.{name} must be true or false, got {getattr(self, name)!r}")
        eos = self.eos_id
        if eos is not None and (isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < self.vocab_size):
            raise ValueError(f"DecoderConfig.eos_id must be null or a token id in [0, vocab_size={self.vocab_size}), "
                             f"got {eos!r}")
        if self.document_mask and eos is None:
            raise ValueError("DecoderConfig.document_mask needs eos_id, the token that ends each document "
                             "(launch.train takes it from the data's manifest); set eos_id or document_mask=false")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"DecoderConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"pick n_heads dividing d_model (e.g. {self.d_model // 64 or 1} for head_dim 64)")
        if self.head_dim % 2:
            raise ValueError(
                f"DecoderConfig: head_dim = d_model / n_heads = {self.head_dim} must be even for rotary "
                f"embeddings; change d_model={self.d_model} or n_heads={self.n_heads}")
        if self.kv_heads > self.n_heads or self.n_heads % self.kv_heads:
            raise ValueError(
                f"DecoderConfig.n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                f"(each key/value head serves n_heads/n_kv_heads query heads); use null for n_kv_heads = n_heads")
        return self

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields as given (None stays None); from_dict(to_dict()) round-trips."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DecoderConfig":
        """Build and validate from a dict; unknown or missing keys raise ValueError listing them."""
        if not isinstance(d, dict):
            raise ValueError(f"DecoderConfig.from_dict expects a dict, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"DecoderConfig: unknown keys {unknown}; valid keys are {sorted(fields)}")
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise ValueError(f"DecoderConfig: missing required keys {missing}")
        return cls(**d).validate()


# Named sizes: DecoderConfig kwargs without vocab_size/max_seq_len (those come from the data and the run config).
# Parameter counts below are at vocab_size=32000 (8000 for tiny); see count_params.
SIZES: dict[str, dict] = {
    # ~2.0M params at vocab 8000 (1.0M of them the tied embedding): CPU tests and the quickstart.
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2),
    # GPT-3 Small / GPT-2 shape: 110M (85M non-embedding), FFN 2048.
    "125m": dict(d_model=768, n_layers=12, n_heads=12),
    # GPT-3 Medium shape: 341M, FFN 2816.
    "350m": dict(d_model=1024, n_layers=24, n_heads=16),
    # TinyLlama-1.1B shape (d 2048, 22 layers, 32 query / 4 kv heads, FFN 5632), tied: 1.03B.
    "1b": dict(d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4),
    # Llama-2-7B shape (untied head, FFN 11008): 6.74B.
    "7b": dict(d_model=4096, n_layers=32, n_heads=32, tie_embeddings=False),
}


def count_params(cfg: DecoderConfig) -> int:
    """Exact number of parameters of Decoder(cfg), counting a tied embedding/LM head matrix once.

    V*C (embedding) + n_layers * (2C norms + C*(H+2K)*D qkv + H*D*C out + 3*C*F SwiGLU) + C (final norm)
    + V*C (LM head, untied only).
    """
    c, d, f = cfg.d_model, cfg.head_dim, cfg.ffn_dim
    per_layer = 2 * c + c * (cfg.n_heads + 2 * cfg.kv_heads) * d + cfg.n_heads * d * c + 3 * c * f
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * c
    return cfg.vocab_size * c + cfg.n_layers * per_layer + c + head


def flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token at sequence length seq_len: 6 * N + 12 * n_layers * C * T.

    N = every parameter that takes part in a matmul once per token: count_params(cfg) minus the input embedding
    table when the head is untied (a lookup costs no FLOPs; the LM head matrix counts once, tied or not; the norm
    weights, n_layers*2C + C, are included for simplicity and are negligible). GQA's smaller K/V projections and
    SwiGLU's three matrices enter through count_params. Attention scores and the weighted sum cost
    2 * 2 * T * C FLOPs per token per layer forward (QK^T and AV over all H query heads, full T x T, not halved
    for causality, as in PaLM's MFU convention), times 3 for forward + backward: 12 * n_layers * C * T.
    """
    if seq_len <= 0:
        raise ValueError(f"flops_per_token: seq_len must be positive, got {seq_len}")
    n = count_params(cfg) - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
    return 6.0 * n + 12.0 * cfg.n_layers * cfg.d_model * seq_len


def _normal_(param: torch.Tensor, std: float) -> None:
    """Init a weight in place (runs inside the owning module's __init__, before ZeRO-3 partitions it)."""
    with torch.no_grad():
        nn.init.normal_(param, mean=0.0, std=std)


def rope_tables(cfg: DecoderConfig, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape positions.shape + (head_dim,), computed in fp32 then cast to dtype exactly as HF Llama.

    positions: (T,) or (B, T) integer positions. Frequencies theta_j = base^(-2j/D), j < D/2, duplicated over both
    halves of the head ("rotate_half" layout).
    """
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, d, 2, dtype=torch.float, device=positions.device) / d))
    freqs = positions[..., None].float() * inv_freq           # (..., T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)                     # (..., T, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, D) rotated by cos/sin (T, D) or (B, 1, T, D): x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated to max_len positions.

    k[i], v[i]: (B, K, max_len, D) for layer i. valid: (B, max_len) bool, False where a slot holds left padding
    (prompts of different lengths in one batch). length: number of filled slots (same for every sequence).
    """

    def __init__(self, cfg: DecoderConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        if max_len > cfg.max_seq_len:
            raise ValueError(f"KVCache: max_len={max_len} exceeds the model's max_seq_len={cfg.max_seq_len}")
        shape = (batch_size, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.padded = False   # True once any slot is padding: then every step needs an explicit mask
        self.length = 0
        self.max_len = max_len


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back before the weight multiply (as HF)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, T, C) -> (B, T, C)
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class Attention(nn.Module):
    """Causal self-attention with rotary embeddings and grouped-query heads; one fused QKV projection."""

    def __init__(self, cfg: DecoderConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        c = cfg.d_model
        self.wqkv = nn.Parameter(torch.empty((self.n_heads + 2 * self.n_kv_heads) * self.head_dim, c))
        self.wo = nn.Parameter(torch.empty(c, self.n_heads * self.head_dim))
        _normal_(self.wqkv, cfg.init_std)
        # Residual-branch outputs are scaled so the residual stream's variance does not grow with depth (GPT-2).
        _normal_(self.wo, cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def forward(self, x, cos, sin, mask, cache: KVCache | None):
        # x (B, T, C); cos/sin (T, D) or (B, 1, T, D); mask None (causal), bool (B, 1, T, S) with True = attend,
        # or a FlexAttention BlockMask (document_mask off the CPU, no cache)
        b, t, _ = x.shape
        h, k_heads, d = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = F.linear(x, self.wqkv).split([h * d, k_heads * d, k_heads * d], dim=-1)
        q = q.view(b, t, h, d).transpose(1, 2)                 # (B, H, T, D)
        k = k.view(b, t, k_heads, d).transpose(1, 2)           # (B, K, T, D)
        v = v.view(b, t, k_heads, d).transpose(1, 2)           # (B, K, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            start = cache.length
            cache.k[self.layer_id][:, :, start:start + t] = k
            cache.v[self.layer_id][:, :, start:start + t] = v
            k = cache.k[self.layer_id][:, :, :start + t]       # (B, K, S, D), S = start + T
            v = cache.v[self.layer_id][:, :, :start + t]
        if isinstance(mask, BlockMask):
            y = flex_document_attention(q, k, v, mask)
        elif mask is None:
            # Training, or a cache prefill from position 0 without padding, or one decode step: plain causal.
            causal = t > 1
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=k_heads != h)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k_heads != h)
        y = y.transpose(1, 2).reshape(b, t, h * d)             # (B, T, H*D)
        return F.linear(y, self.wo)                            # (B, T, C)


class MLP(nn.Module):
    """SwiGLU feed-forward: w_down(silu(x W_gate^T) * (x W_up^T)), gate and up fused into one matmul."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        c, f = cfg.d_model, cfg.ffn_dim
        self.w_gate_up = nn.Parameter(torch.empty(2 * f, c))
        self.w_down = nn.Parameter(torch.empty(c, f))
        _normal_(self.w_gate_up, cfg.init_std)
        _normal_(self.w_down, cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, T, C) -> (B, T, C)
        gate, up = F.linear(x, self.w_gate_up).chunk(2, dim=-1)   # (B, T, F) each
        return F.linear(F.silu(gate) * up, self.w_down)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: DecoderConfig, layer_id: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_id)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None):   # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    """Token ids -> next-token logits, or the mean cross-entropy loss when targets are given."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg.validate()
        # The embedding (and the untied head) are parameters of this root module rather than of submodules so
        # that the tied head can reuse the embedding inside this module's own forward: under ZeRO-3 a module's
        # own parameters are gathered for the whole of its forward, so no external-parameter registration is needed.
        self.embedding = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
        _normal_(self.embedding, cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
            _normal_(self.lm_head, cfg.init_std)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def _check_ids(self, tokens: torch.Tensor, targets: torch.Tensor | None) -> None:
        """ValueError on shapes or ids out of range (one host sync: both ranges fetched together)."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Decoder: tokens must be a (batch, seq) integer tensor, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        if targets is not None and targets.shape != tokens.shape:
            raise ValueError(f"Decoder: targets shape {tuple(targets.shape)} != tokens shape {tuple(tokens.shape)}")
        if tokens.numel() == 0:
            raise ValueError(f"Decoder: empty input of shape {tuple(tokens.shape)}")
        ranges = [tokens.min(), tokens.max()]
        if targets is not None:
            ranges += [targets.min(), targets.max()]
        lo, hi, *target_range = torch.stack(ranges).tolist()
        v = self.cfg.vocab_size
        if lo < 0 or hi >= v:
            raise ValueError(f"Decoder: token ids must be in [0, {v}) (vocab_size), got min {lo} max {hi}")
        if target_range and (target_range[0] < -1 or target_range[1] >= v):
            raise ValueError(f"Decoder: target ids must be in [0, {v}) or -1 (ignored), "
                             f"got min {target_range[0]} max {target_range[1]}")

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCache | None = None, pad_mask: torch.Tensor | None = None,
                loss_chunk_tokens: int | None = None, z_loss: float = 0.0):
        """tokens (B, T) long -> logits (B, T, V); with targets (B, T) -> scalar fp32 mean CE (ignore_index=-1).

        With targets and loss_chunk_tokens set (0 = unchunked, the plain loss): a model.loss.LossParts instead,
        computed by model.loss.linear_cross_entropy in chunks of that many tokens and with z_loss (the z-loss
        coefficient): loss = ce + z-loss for backward, and both parts detached for logging.

        Incremental decoding: pass a KVCache; tokens are appended at cache.length. pad_mask (B, T) bool marks
        real tokens (False = left padding) and is only meaningful with a cache. document_mask applies only
        without a cache: cached decoding attends causally over the whole cache, as before.
        """
        if loss_chunk_tokens is None and z_loss:
            raise ValueError("Decoder: z_loss needs loss_chunk_tokens (0 for the plain loss) and targets")
        if loss_chunk_tokens is not None and targets is None:
            raise ValueError("Decoder: loss_chunk_tokens and z_loss apply to the loss; pass targets")
        self._check_ids(tokens, targets)
        b, t = tokens.shape
        start = 0 if cache is None else cache.length
        limit = self.cfg.max_seq_len if cache is None else min(self.cfg.max_seq_len, cache.max_len)
        if start + t > limit:
            if cache is None:
                raise ValueError(f"Decoder: sequence length {t} exceeds max_seq_len={limit}; shorten the input")
            raise ValueError(f"Decoder: sequence length {start + t} (cached {start} + new {t}) exceeds the cache/"
                             f"context limit {limit} (max_seq_len={self.cfg.max_seq_len})")
        x = F.embedding(tokens, self.embedding)                              # (B, T, C)
        mask = None
        if cache is None:
            if pad_mask is not None:
                raise ValueError("Decoder: pad_mask needs a KVCache (left padding is for batched generation)")
            if self.cfg.document_mask:
                positions = document_positions(tokens, self.cfg.eos_id)                  # (B, T)
                cos, sin = rope_tables(self.cfg, positions, x.dtype)
                cos, sin = cos[:, None], sin[:, None]                                  # (B, 1, T, D)
                mask = document_mask(document_ids(tokens, self.cfg.eos_id))            # one for all layers
            else:
                cos, sin = rope_tables(self.cfg, torch.arange(t, device=tokens.device), x.dtype)   # (T, D)
        else:
            if pad_mask is not None:
                cache.valid[:, start:start + t] = pad_mask
                cache.padded = cache.padded or not bool(pad_mask.all())
            valid = cache.valid[:, :start + t]                                     # (B, S)
            if cache.padded:
                # Each sequence counts positions from its first real token, as HF does with left padding.
                positions = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, start:]   # (B, T)
                cos, sin = rope_tables(self.cfg, positions, x.dtype)
                cos, sin = cos[:, None], sin[:, None]                              # (B, 1, T, D)
            else:
                cos, sin = rope_tables(self.cfg, torch.arange(start, start + t, device=tokens.device), x.dtype)
            if cache.padded or (start > 0 and t > 1):
                q_pos = torch.arange(start, start + t, device=tokens.device)[:, None]   # (T, 1)
                k_pos = torch.arange(start + t, device=tokens.device)[None, :]          # (1, S)
                # Causal and not padding; a padding query still attends to itself so its softmax is finite.
                mask = ((k_pos <= q_pos) & valid[:, None, :]) | (k_pos == q_pos)       # (B, T, S)
                mask = mask[:, None]                                                    # (B, 1, T, S)
        for block in self.blocks:
            if self.cfg.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, mask, None, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, cache)
        if cache is not None:
            cache.length = start + t
        x = self.norm(x)
        head = self.embedding if self.lm_head is None else self.lm_head                  # (V, C)
        if targets is None:
            return F.linear(x, head)                                                     # (B, T, V)
        parts = linear_cross_entropy(x.reshape(b * t, -1), head, targets.reshape(-1),
                                     chunk_tokens=loss_chunk_tokens or 0, z_loss=z_loss)
        return parts if loss_chunk_tokens is not None else parts.loss
