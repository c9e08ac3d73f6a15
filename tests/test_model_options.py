"""Run-config model options against plain references: document-masked attention, chunked cross-entropy, z-loss.

    pytest tests/test_model_options.py
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from launch.config import load_config
from model.decoder import Decoder, DecoderConfig
from model.documents import (block_document_mask, dense_document_mask, document_ids, document_positions,
                             flex_document_attention)
from model.loss import linear_cross_entropy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.json")
EOS = 2


def small(**overrides) -> DecoderConfig:
    kw = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    kw.update(overrides)
    return DecoderConfig(**kw)


def _doc(gen, n, end=True) -> list[int]:
    """n - 1 random non-EOS ids then EOS (or n non-EOS ids: a document cut by the end of the window)."""
    body = torch.randint(3, 97, (n - 1 if end else n,), generator=gen).tolist()
    return body + [EOS] if end else body


def _packed_model(**overrides):
    torch.manual_seed(0)
    return Decoder(small(document_mask=True, eos_id=EOS, **overrides)).eval()


# ---- document mask ------------------------------------------------------------------------------------------

def test_document_ids_and_positions_restart_after_eos():
    tokens = torch.tensor([[5, 7, EOS, 9, 4, EOS, 3], [EOS, EOS, 8, 8, 8, 8, EOS]])
    assert document_ids(tokens, EOS).tolist() == [[0, 0, 0, 1, 1, 1, 2], [0, 1, 2, 2, 2, 2, 2]]
    assert document_positions(tokens, EOS).tolist() == [[0, 1, 2, 0, 1, 2, 0], [0, 0, 0, 1, 2, 3, 4]]
    mask = dense_document_mask(document_ids(tokens, EOS))[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False, False]   # 4 sees 9 and itself only
    assert mask[2].tolist() == [True, True, True, False, False, False, False]    # the EOS belongs to its document


@pytest.mark.parametrize("tied", [True, False])
def test_each_document_in_a_pack_equals_the_document_alone(tied):
    gen = torch.Generator().manual_seed(1)
    model = _packed_model(tie_embeddings=tied)
    docs = [[_doc(gen, 9), _doc(gen, 17), _doc(gen, 6, end=False)],
            [_doc(gen, 1), _doc(gen, 30), _doc(gen, 1)]]           # a lone EOS is a document too
    packed = torch.tensor([sum(row, []) for row in docs])
    assert packed.shape == (2, 32)
    with torch.no_grad():
        logits = model(packed)
        for b, row in enumerate(docs):
            start = 0
            for doc in row:
                alone = model(torch.tensor([doc]))[0]
                inside = logits[b, start:start + len(doc)]
                assert (inside - alone).abs().max().item() <= 1e-5
                start += len(doc)


def test_changing_another_document_changes_nothing_and_default_mask_is_plain_causal():
    gen = torch.Generator().manual_seed(2)
    a, b, c = _doc(gen, 10), _doc(gen, 12), _doc(gen, 10)
    other = _doc(gen, 10)
    first, second = torch.tensor([a + b + c]), torch.tensor([other + b + c])
    masked = _packed_model()
    with torch.no_grad():
        diff = (masked(first) - masked(second))[0, len(a):]
    assert diff.abs().max().item() == 0.0

    # document_mask off (the default): the same model attends across the EOS, as before.
    torch.manual_seed(0)
    plain = Decoder(small()).eval()
    plain.load_state_dict(masked.state_dict())
    assert DecoderConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4).document_mask is False
    with torch.no_grad():
        assert (plain(first) - plain(second))[0, len(a):].abs().max().item() > 1e-3
        # A sequence without EOS is one document: both models compute the same thing.
        no_eos = torch.randint(3, 97, (2, 32), generator=gen)
        assert (plain(no_eos) - masked(no_eos)).abs().max().item() <= 1e-5


def test_document_mask_trains_and_checkpointing_gives_the_same_gradients():
    gen = torch.Generator().manual_seed(3)
    tokens = torch.tensor([_doc(gen, 11) + _doc(gen, 21), _doc(gen, 32, end=False)])
    targets = torch.roll(tokens, -1, 1)
    grads = []
    for checkpointing in (False, True):
        model = _packed_model(activation_checkpointing=checkpointing).train()
        model(tokens, targets).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-6, msg=name)


def test_flex_block_mask_means_the_dense_mask():
    # FlexAttention has no backward on CPU, so the CPU model uses the dense form; this checks that the BlockMask
    # the GPU path uses selects exactly the same keys (compiled FlexAttention forward vs SDPA with the dense mask).
    gen = torch.Generator().manual_seed(4)
    tokens = torch.tensor([_doc(gen, 40) + _doc(gen, 70) + _doc(gen, 18, end=False),
                           _doc(gen, 128, end=False)])
    docs = document_ids(tokens, EOS)
    q = torch.randn(2, 4, 128, 16, generator=gen)
    k, v = torch.randn(2, 2, 128, 16, generator=gen), torch.randn(2, 2, 128, 16, generator=gen)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_document_mask(docs), enable_gqa=True)
    flex = flex_document_attention(q, k, v, block_document_mask(docs))
    assert (flex - dense).abs().max().item() <= 1e-5


def test_generation_with_a_cache_ignores_the_document_mask():
    model = _packed_model()
    prompt = torch.tensor([[5, 6, EOS, 7, 8]])
    with torch.no_grad():
        from model.decoder import KVCache

        cache = KVCache(model.cfg, 1, 8)
        cached = model(prompt, cache=cache)
        plain = Decoder(small()).eval()
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(cached, plain(prompt), rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides, match", [
    (dict(document_mask=True), "document_mask needs eos_id"),
    (dict(document_mask="yes", eos_id=2), "document_mask must be true or false"),
    (dict(eos_id=97), r"eos_id must be null or a token id in \[0, vocab_size=97\)"),
    (dict(eos_id=-1), "eos_id"),
])
def test_document_mask_config_errors_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        small(**overrides).validate()


def test_run_config_keys_and_eos_from_the_data():
    cfg = load_config(TINY, ["model.document_mask=true", "z_loss=1e-4", "loss_chunk_tokens=256"])
    assert (cfg.z_loss, cfg.loss_chunk_tokens) == (1e-4, 256)
    model = cfg.decoder_config(384, data_eos_id=2)
    assert model.document_mask and model.eos_id == 2
    assert load_config(TINY).decoder_config(384, data_eos_id=2).eos_id is None   # only filled when masking
    assert load_config(TINY).loss_chunk_tokens == 1024 and load_config(TINY).z_loss == 0.0
    for override, match in [("z_loss=-1", "z_loss must be a number >= 0"), ("z_loss=true", "z_loss must be a number"),
                            ("loss_chunk_tokens=-5", "loss_chunk_tokens must be >= 0"),
                            ("loss_chunk_tokens=1.5", "loss_chunk_tokens must be an integer"),
                            ("model.document_mask=1", "document_mask must be true or false"),
                            ("model.eos_id=-3", "eos_id must be null or a token id"),
                            ("model.document_masks=true", "did you mean 'document_mask'")]:
        with pytest.raises(ValueError, match=match):
            load_config(TINY, [override])


# ---- chunked cross-entropy and z-loss -----------------------------------------------------------------------

def _loss_inputs(n=300, c=24, v=50, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=gen, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, c, generator=gen, dtype=dtype) * 0.5).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[::7] = -1
    return hidden, weight, targets


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("chunk", [1, 64, 299, 300, 1000])
def test_chunked_loss_and_gradients_equal_the_plain_loss(chunk, z_loss):
    hidden, weight, targets = _loss_inputs()
    plain = linear_cross_entropy(hidden, weight, targets, chunk_tokens=0, z_loss=z_loss)
    plain_grads = torch.autograd.grad(plain.loss, (hidden, weight))
    chunked = linear_cross_entropy(hidden, weight, targets, chunk_tokens=chunk, z_loss=z_loss)
    chunked_grads = torch.autograd.grad(chunked.loss, (hidden, weight))
    for a, b in [(plain.loss, chunked.loss), (plain.ce, chunked.ce), (plain.z_loss, chunked.z_loss)]:
        assert abs(a.item() - b.item()) <= 1e-6
    for a, b in zip(plain_grads, chunked_grads):
        assert (a - b).abs().max().item() <= 1e-6
    # The plain CE is F.cross_entropy itself, and the z term is what it says.
    logits = hidden @ weight.t()
    assert plain.ce.item() == F.cross_entropy(logits, targets, ignore_index=-1).item()
    lse = torch.logsumexp(logits, -1)[targets != -1]
    assert abs(plain.z_loss.item() - z_loss * lse.square().mean().item()) <= 1e-7


def test_decoder_loss_options_equal_the_default_loss():
    torch.manual_seed(0)
    model = Decoder(small(tie_embeddings=False))
    tokens = torch.randint(0, 97, (2, 40))
    targets = torch.roll(tokens, -1, 1)
    targets[0, :5] = -1
    reference = model(tokens, targets)
    ref_grads = torch.autograd.grad(reference, list(model.parameters()))
    parts = model(tokens, targets, loss_chunk_tokens=16)
    grads = torch.autograd.grad(parts.loss, list(model.parameters()))
    assert abs(parts.loss.item() - reference.item()) <= 1e-6 and parts.ce.item() == parts.loss.item()
    for a, b in zip(ref_grads, grads):
        assert (a - b).abs().max().item() <= 1e-6
    with torch.no_grad():   # evaluation: no gradient is computed or kept
        assert abs(model(tokens, targets, loss_chunk_tokens=16).ce.item() - reference.item()) <= 1e-6
    with pytest.raises(ValueError, match="z_loss needs loss_chunk_tokens"):
        model(tokens, targets, z_loss=1e-4)
    with pytest.raises(ValueError, match="pass targets"):
        model(tokens, loss_chunk_tokens=16)


@pytest.mark.parametrize("chunk", [0, 40])
def test_z_loss_gradient_matches_finite_differences(chunk):
    hidden, weight, targets = _loss_inputs(n=60, c=6, v=11, dtype=torch.float64, seed=5)
    z = 0.3   # large, so the z term's share of the gradient is well above the finite-difference error

    def loss(h, w):
        return linear_cross_entropy(h, w, targets, chunk_tokens=chunk, z_loss=z).loss

    assert torch.autograd.gradcheck(loss, (hidden, weight), eps=1e-6, atol=1e-7, rtol=1e-5)

    # And the z term alone, by central differences against its definition.
    def z_only(h, w):
        parts = linear_cross_entropy(h, w, targets, chunk_tokens=chunk, z_loss=z)
        return parts.loss - parts.ce

    (analytic,) = torch.autograd.grad(loss(hidden, weight), weight)
    (ce_grad,) = torch.autograd.grad(linear_cross_entropy(hidden, weight, targets, chunk_tokens=chunk).loss, weight)
    analytic_z = analytic - ce_grad
    numeric = torch.zeros_like(weight)
    with torch.no_grad():
        for i in range(weight.shape[0]):
            for j in range(weight.shape[1]):
                w_plus, w_minus = weight.clone(), weight.clone()
                w_plus[i, j] += 1e-6
                w_minus[i, j] -= 1e-6
                numeric[i, j] = (z_only(hidden, w_plus) - z_only(hidden, w_minus)) / 2e-6
    assert analytic_z.abs().max().item() > 1e-2
    assert (analytic_z - numeric).abs().max().item() <= 1e-7


_MEMORY_SCRIPT = r"""
import json, sys
import torch
from model.loss import linear_cross_entropy
torch.set_num_threads(1)
n, c, v, chunk = 4096, 64, 32000, int(sys.argv[1])
gen = torch.Generator().manual_seed(0)
hidden = torch.randn(n, c, generator=gen).requires_grad_()
weight = (torch.randn(v, c, generator=gen) * 0.1).requires_grad_()
targets = torch.randint(0, v, (n,), generator=gen)
def status_kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")      # Linux: reset the peak RSS (VmHWM) to the current RSS
before = status_kib("VmHWM") * 1024
loss = linear_cross_entropy(hidden, weight, targets, chunk_tokens=chunk).loss
loss.backward()
peak = status_kib("VmHWM") * 1024
print(json.dumps({"peak": peak - before, "loss": loss.item(), "gh": hidden.grad.tolist()[:8],
                  "gw_sum": weight.grad.double().abs().sum().item()}))
"""


def test_chunked_loss_peak_memory_is_a_quarter_of_the_plain_loss():
    """Peak RSS of forward + backward of the loss at 4,096 tokens x vocabulary 32,000, each in a fresh process
    (torch's CPU allocations are invisible to tracemalloc; the kernel's high-water mark of the process's resident
    memory, VmHWM, reset just before the loss, sees them)."""
    def run(chunk):
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(chunk)], cwd=ROOT, capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"), timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    plain, chunked = run(0), run(1024)
    logits_bytes = 4096 * 32000 * 4
    assert plain["peak"] >= 2 * logits_bytes, plain     # the measurement sees the fp32 logits and their gradient
    assert chunked["peak"] <= plain["peak"] / 4, (chunked["peak"], plain["peak"])
    assert abs(plain["loss"] - chunked["loss"]) <= 1e-5
    assert max(abs(a - b) for a, b in zip(sum(plain["gh"], []), sum(chunked["gh"], []))) <= 1e-6
    assert abs(plain["gw_sum"] - chunked["gw_sum"]) <= 1e-6 * plain["gw_sum"]


def test_resume_check_reads_checkpoints_written_before_the_new_model_fields(tmp_path):
    """A checkpoint's model_config without document_mask/eos_id (written before they existed) means the defaults:
    it resumes a run without document masking and refuses one with it, naming the fields."""
    from types import SimpleNamespace

    from launch.train import check_resume

    cfg = load_config(TINY)
    model_cfg = cfg.decoder_config(384, data_eos_id=2)
    old = {k: v for k, v in model_cfg.to_dict().items() if k not in ("document_mask", "eos_id")}
    point = SimpleNamespace(path=str(tmp_path / "step_00000004"), step=4, consumed_samples=4 * cfg.global_batch,
                            client_state={"model_config": old, "train_config": cfg.to_dict()})
    assert check_resume(point, cfg, model_cfg, {}, False, str(tmp_path)) == []
    masked = load_config(TINY, ["model.document_mask=true"])
    with pytest.raises(ValueError, match=r"model differs from the checkpoint's in \['document_mask', 'eos_id'\]"):
        check_resume(point, masked, masked.decoder_config(384, data_eos_id=2), {}, False, str(tmp_path))
