"""The decoder: config validation, parameter/FLOP formulas, causality, attention vs a naive reference, loss, training.

    pytest tests/test_decoder.py
"""
import math

import pytest
import torch
import torch.nn.functional as F

from model.decoder import SIZES, Decoder, DecoderConfig, count_params, flops_per_token, rope_tables


def small(**overrides) -> DecoderConfig:
    kw = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    kw.update(overrides)
    return DecoderConfig(**kw)


# ---- config -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, field", [
    (dict(d_model=60, n_heads=8), "d_model"),          # not divisible
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),     # does not divide n_heads
    (dict(n_heads=4, n_kv_heads=8), "n_kv_heads"),     # more kv heads than query heads
    (dict(d_model=12, n_heads=4, n_kv_heads=None), "head_dim"),   # head_dim 3 is odd: no RoPE pairs
    (dict(vocab_size=0), "vocab_size"),
    (dict(n_layers=-1), "n_layers"),
    (dict(max_seq_len=0), "max_seq_len"),
    (dict(rope_base=0.0), "rope_base"),
    (dict(tie_embeddings="yes"), "tie_embeddings"),
    (dict(ffn_hidden=0), "ffn_hidden"),
])
def test_validate_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        small(**overrides).validate()
    with pytest.raises(ValueError, match=field):
        Decoder(small(**overrides))


def test_dict_round_trip_and_unknown_keys():
    cfg = small(ffn_hidden=96, rope_base=500000.0, tie_embeddings=False)
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict() | {"n_head": 4, "dropout": 0.1}
    with pytest.raises(ValueError, match=r"unknown keys \['dropout', 'n_head'\]"):
        DecoderConfig.from_dict(d)
    d = cfg.to_dict()
    del d["d_model"]
    with pytest.raises(ValueError, match="missing required keys.*d_model"):
        DecoderConfig.from_dict(d)


# ---- sizes, parameter count, FLOPs --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SIZES))
def test_named_sizes_count_matches_direct_count(name):
    vocab = 8000 if name == "tiny" else 32000
    cfg = DecoderConfig(vocab_size=vocab, max_seq_len=2048, **SIZES[name])
    with torch.device("meta"):          # 7B of fp32 parameters would not fit here; meta allocates nothing
        model = Decoder(cfg)
    direct = sum(p.numel() for p in model.parameters())
    assert count_params(cfg) == direct
    expected = {"tiny": (1e6, 5e6), "125m": (100e6, 130e6), "350m": (320e6, 370e6), "1b": (0.95e9, 1.15e9),
                "7b": (6.7e9, 6.8e9)}[name]
    assert expected[0] <= direct <= expected[1], direct


def test_7b_is_llama2_7b_shape():
    cfg = DecoderConfig(vocab_size=32000, max_seq_len=4096, **SIZES["7b"])
    assert cfg.ffn_dim == 11008 and not cfg.tie_embeddings
    assert count_params(cfg) == 6_738_415_616           # LlamaForCausalLM("meta-llama/Llama-2-7b-hf") parameters


def test_flops_formula_by_hand():
    for tie in (True, False):
        cfg = small(tie_embeddings=tie)
        c, v, hd, kv, f = cfg.d_model, cfg.vocab_size, cfg.head_dim, cfg.kv_heads, cfg.ffn_dim
        matmul = cfg.n_layers * (c * c + 2 * c * kv * hd + c * c + 3 * c * f) + v * c     # q, k+v, o, swiglu, head
        norms = cfg.n_layers * 2 * c + c
        assert flops_per_token(cfg, 32) == 6 * (matmul + norms) + 12 * cfg.n_layers * c * 32
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(small(), 0)


# ---- numerics -----------------------------------------------------------------------------------------------

def test_causality():
    torch.manual_seed(0)
    model = Decoder(small()).eval()
    x = torch.randint(0, 97, (2, 16))
    base = model(x)
    for t in (0, 7, 14):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] + 1) % 97
        out = model(y)
        assert torch.equal(out[:, :t + 1], base[:, :t + 1]), f"changing token {t + 1} changed logits at <= {t}"
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def naive_attention(attn, x, cfg):
    """Per-head masked softmax(QK^T/sqrt(D))V with explicit K/V head repetition, RoPE via complex numbers."""
    b, t, _ = x.shape
    h, k, d = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    wq, wk, wv = attn.wqkv.split([h * d, k * d, k * d], dim=0)
    q = (x @ wq.T).view(b, t, h, d)
    kk = (x @ wk.T).view(b, t, k, d)
    v = (x @ wv.T).view(b, t, k, d)

    def rope(z):   # rotate pairs (j, j + D/2) by angle pos * base^(-2j/D), as a complex multiply
        pos = torch.arange(t, dtype=torch.float64)[:, None]
        ang = pos * cfg.rope_base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        zc = torch.complex(z[..., :d // 2].double(), z[..., d // 2:].double()) * torch.polar(torch.ones_like(ang), ang)[None, :, None]
        return torch.cat([zc.real, zc.imag], dim=-1).float()

    q, kk = rope(q), rope(kk)
    out = torch.empty(b, t, h, d)
    for head in range(h):
        g = head // (h // k)                                  # the kv head this query head shares
        scores = q[:, :, head] @ kk[:, :, g].transpose(1, 2) / math.sqrt(d)      # (B, T, T)
        scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        out[:, :, head] = scores.softmax(-1) @ v[:, :, g]
    return out.reshape(b, t, h * d) @ attn.wo.T


@pytest.mark.parametrize("kv", [None, 2, 1])
def test_attention_matches_naive_reference(kv):
    torch.manual_seed(0)
    cfg = small(n_kv_heads=kv, init_std=0.2, rope_base=100.0)
    attn = Decoder(cfg).blocks[0].attn
    x = torch.randn(2, 12, cfg.d_model)
    cos, sin = rope_tables(cfg, torch.arange(12), x.dtype)
    with torch.no_grad():
        ours = attn(x, cos, sin, None, None)
        ref = naive_attention(attn, x, cfg)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_initial_loss_near_log_vocab():
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=8000, max_seq_len=64, **SIZES["tiny"])
    model = Decoder(cfg)
    x = torch.randint(0, 8000, (4, 64))
    targets = torch.randint(0, 8000, (4, 64))
    loss = model(x, targets)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert abs(loss.item() - math.log(8000)) < 0.1, loss.item()


def test_ignore_index_and_loss_matches_logits():
    torch.manual_seed(0)
    model = Decoder(small())
    x = torch.randint(0, 97, (2, 10))
    targets = torch.randint(0, 97, (2, 10))
    targets[:, :4] = -1
    loss = model(x, targets)
    logits = model(x)
    ref = F.cross_entropy(logits[:, 4:].reshape(-1, 97), targets[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = Decoder(small(n_layers=2, d_model=64))
    x = torch.randint(0, 97, (4, 24))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        loss = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0 and loss.item() < 0.2, (first, loss.item())


def test_activation_checkpointing_same_gradients():
    torch.manual_seed(0)
    plain = Decoder(small())
    ckpt = Decoder(small(activation_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randint(0, 97, (2, 16))
    for m in (plain, ckpt):
        m(x, x).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_meta_construction_and_bf16():
    with torch.device("meta"):
        model = Decoder(small())
    assert all(p.is_meta for p in model.parameters())
    assert len(list(model.buffers())) == 0          # RoPE tables are computed per forward, never stored
    torch.manual_seed(0)
    model = Decoder(small()).to(torch.bfloat16)
    x = torch.randint(0, 97, (2, 16))
    assert model(x).dtype == torch.bfloat16
    loss = model(x, x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_tied_head_is_the_embedding():
    model = Decoder(small(tie_embeddings=True))
    assert model.lm_head is None and "lm_head" not in model.state_dict()
    untied = Decoder(small(tie_embeddings=False))
    assert untied.state_dict()["lm_head"].shape == (97, 64)


def test_residual_output_projections_scaled_at_init():
    torch.manual_seed(0)
    cfg = small(n_layers=8, d_model=256, n_heads=4, n_kv_heads=None, init_std=0.02)
    block = Decoder(cfg).blocks[0]
    assert abs(block.attn.wqkv.std().item() - 0.02) < 0.002
    assert abs(block.attn.wo.std().item() - 0.02 / 4) < 0.0005           # 0.02 / sqrt(2 * 8)
    assert abs(block.mlp.w_down.std().item() - 0.02 / 4) < 0.0005


# ---- bad inputs ---------------------------------------------------------------------------------------------

def test_bad_inputs_are_clear_errors():
    model = Decoder(small())
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\).*max 97"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match=r"min -3"):
        model(torch.tensor([[1, -3]]))
    with pytest.raises(ValueError, match=r"sequence length 33 .* max_seq_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="targets shape"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="target ids"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), 97))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(4, dtype=torch.long))
