"""KV-cache generation: cached logits equal a full forward, batching with left padding, sampling controls, CLI.

    pytest tests/test_generate.py
"""
import pytest

from references import require
import torch

from model.decoder import Decoder, DecoderConfig, KVCache
from model.generate import generate, main, sample_next


def model_for(**overrides) -> Decoder:
    kw = dict(vocab_size=101, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48,
              tie_embeddings=False, init_std=0.1)
    kw.update(overrides)
    torch.manual_seed(0)
    return Decoder(DecoderConfig(**kw)).eval()


def greedy_reference(model, prompt, steps):
    """Full forward over the whole prefix for every new token: no cache, no padding."""
    seq = list(prompt)
    for _ in range(steps):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


@torch.no_grad()
@pytest.mark.parametrize("kv", [None, 2])
def test_cached_logits_equal_full_forward(kv):
    model = model_for(n_kv_heads=kv)
    seq = torch.randint(0, 101, (2, 30))
    full = model(seq)                                            # (2, 30, V)
    cache = KVCache(model.cfg, 2, 30)
    pieces = [model(seq[:, :11], cache=cache)]                   # prefill
    pieces += [model(seq[:, i:i + 1], cache=cache) for i in range(11, 20)]   # one token at a time
    pieces += [model(seq[:, 20:30], cache=cache)]                # a chunk on top of a filled cache
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=2e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padded_cache_equals_unpadded_forward():
    model = model_for()
    short = torch.randint(0, 101, (1, 7))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), short], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 7, dtype=torch.bool)], dim=1)
    cache = KVCache(model.cfg, 1, 20)
    got = model(padded, cache=cache, pad_mask=mask)[:, 5:]
    torch.testing.assert_close(got, model(short), atol=2e-5, rtol=1e-5)
    nxt = torch.tensor([[3]])
    torch.testing.assert_close(model(nxt, cache=cache)[:, -1], model(torch.cat([short, nxt], 1))[:, -1],
                               atol=2e-5, rtol=1e-5)


def test_greedy_equals_full_forward_argmax_and_batching_is_transparent():
    model = model_for()
    prompts = [[5, 17, 33, 2, 9], [4, 8], [77]]
    batched = generate(model, prompts, 12)
    for prompt, got in zip(prompts, batched):
        assert got == greedy_reference(model, prompt, 12)
        assert generate(model, [prompt], 12)[0] == got
    assert len({tuple(g) for g in batched}) > 1      # a degenerate model would make this test vacuous


def test_eos_stops_each_sequence():
    model = model_for()
    prompt = [5, 17, 33]
    free = generate(model, [prompt], 10)[0]
    eos = free[3]                                     # pretend the 4th generated token is EOS
    out = generate(model, [prompt, [1, 2, 3, 4]], 10, eos_id=eos)
    assert out[0] == free[:free.index(eos) + 1]
    assert all(t != eos for t in out[1][:-1])


def test_sampling_controls():
    torch.manual_seed(0)
    logits = torch.randn(4, 101)
    greedy = sample_next(logits, 0.0, None, None, None)
    assert torch.equal(greedy, logits.argmax(-1))
    assert torch.equal(sample_next(logits, 1.0, 1, None, None), greedy)           # top-k 1 is greedy
    assert torch.equal(sample_next(logits, 1.0, None, 1e-6, None), greedy)        # tiny nucleus is greedy
    draws = torch.stack([sample_next(logits, 1.0, 3, None, torch.Generator().manual_seed(i)) for i in range(200)])
    top3 = logits.topk(3, dim=-1).indices
    assert all(bool((draws[:, r, None] == top3[r]).any(-1).all()) for r in range(4))
    assert len(set(draws[:, 0].tolist())) > 1
    # top-p: keep the smallest prefix of the sorted distribution whose mass reaches p
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    draws = {int(sample_next(probs, 1.0, None, 0.7, torch.Generator().manual_seed(i))) for i in range(300)}
    assert draws == {0, 1}
    model = model_for()
    a = generate(model, [[1, 2, 3]], 8, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    b = generate(model, [[1, 2, 3]], 8, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    c = generate(model, [[1, 2, 3]], 8, temperature=1.0, top_k=20, top_p=0.9, seed=8)
    assert a == b and a != c


def test_bad_prompts_are_clear_errors():
    model = model_for()
    with pytest.raises(ValueError, match="prompt of 48 tokens .* context of 48"):
        generate(model, [[1] * 48], 4)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], 4)
    out = generate(model, [[1] * 45], 10)            # stops at the context length
    assert len(out[0]) == 3
    with pytest.raises(ValueError, match="exceeds"):
        cache = KVCache(model.cfg, 1, 8)
        model(torch.zeros(1, 9, dtype=torch.long), cache=cache)


def test_cli_on_a_pt_file(tmp_path, capsys):
    spm = require("sentencepiece")
    import random
    random.seed(0)
    words = "the cat sat on a mat while dogs ran far 1234 ünï".split()
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(random.choices(words, k=10)) for _ in range(200)))
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tokenizer"), vocab_size=300,
        model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, minloglevel=2)
    model = model_for(vocab_size=320)
    torch.save({"config": model.cfg.to_dict(), "model": model.state_dict()}, tmp_path / "model.pt")
    assert main(["--checkpoint", str(tmp_path / "model.pt"), "--prompt", "the cat", "--prompt", "a dog ran",
                 "--max-new-tokens", "5", "--temperature", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("the cat") and lines[2].startswith("a dog ran")
