"""Export to a Hugging Face Llama directory, checked against real transformers and a real SentencePiece model.

    pytest tests/test_export.py            # add -m slow for the DeepSpeed ZeRO-3 checkpoint round trip
"""
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from model.decoder import Decoder, DecoderConfig
from model.export import export, load_checkpoint, main
from model.generate import generate

from launch.processes import free_port  # noqa: E402
from references import require  # noqa: E402
transformers = require("transformers")
spm = require("sentencepiece")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 320


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    """A real BPE SentencePiece model with the project's Llama-2 settings, trained on a few KB of text."""
    d = tmp_path_factory.mktemp("tok")
    rng = random.Random(0)
    words = ("the of and to in is was for on that with as by at from model data token train loss 2024 "
             "café naïve über Straße").split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) for _ in range(400)]
    lines += ["  indented  line\twith tab", "numbers 3.14159 and 1,000,000", "x" * 30]
    (d / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=300, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=1.0, minloglevel=2)
    return str(d / "tokenizer.model")


def save_pt(tmp_path, **overrides) -> tuple[Decoder, str]:
    kw = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, max_seq_len=64, rope_base=5000.0,
              init_std=0.1)
    kw.update(overrides)
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**kw)).eval()
    path = str(tmp_path / "model.pt")
    torch.save({"config": model.cfg.to_dict(), "model": model.state_dict()}, path)
    return model, path


@pytest.mark.parametrize("tie, kv", [(True, None), (True, 2), (False, None), (False, 1)],
                         ids=["tied-mha", "tied-gqa", "untied-mha", "untied-mqa"])
def test_export_matches_transformers(tmp_path, tokenizer_path, tie, kv):
    model, pt = save_pt(tmp_path, tie_embeddings=tie, n_kv_heads=kv)
    out = str(tmp_path / "hf")
    result = export(pt, out, tokenizer=tokenizer_path)
    assert result["max_abs_diff"] <= 1e-4 and not os.path.exists(out + ".partial")

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.tie_word_embeddings == tie and hf.config.num_key_value_heads == (kv or 4)
    x = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=0)

    # Greedy decoding: ours (KV cache, left padding for the shorter prompt) vs transformers' generate.
    prompts = [[2, 17, 45, 99, 230, 7], [2, 61, 5]]
    ours = generate(model, prompts, 15)
    for prompt, got in zip(prompts, ours):
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=15, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
        assert theirs[0, len(prompt):].tolist() == got
    ids = torch.tensor([[0, 0, 0] + prompts[1]] + [prompts[0]])       # HF's own left padding
    with torch.no_grad():
        theirs = hf.generate(ids[[1, 0]], attention_mask=(ids[[1, 0]] != 0) | (torch.arange(6) >= 3)[None]
                             | torch.tensor([[True], [False]]), max_new_tokens=15, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    assert theirs[:, 6:].tolist() == ours


def test_tokenizer_ids_match_on_any_text(tmp_path, tokenizer_path):
    _, pt = save_pt(tmp_path)
    out = str(tmp_path / "hf")
    export(pt, out, tokenizer=tokenizer_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    rng = random.Random(1)
    alphabet = "the cafe naive 0123456789 \t\n\r.,;!?<>/ü日本🚀\u00a0\u200b" + "  "
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(500)]
    texts += ["", " ", "\n", "<s>", "</s>", "<unk>", "<0x41>", "▁already▁metaspace", "Straße über alles 42"]
    for text in texts:
        ids = sp.encode(text)
        assert hf_tok(text)["input_ids"] == ids, repr(text)
        assert hf_tok.decode(ids) == sp.decode(ids), repr(text)
    assert hf_tok.eos_token_id == 2 and hf_tok.bos_token_id == 1


def test_bfloat16_export(tmp_path, tokenizer_path):
    _, pt = save_pt(tmp_path, n_kv_heads=2)
    out = str(tmp_path / "hf")
    result = export(pt, out, tokenizer=tokenizer_path, dtype=torch.bfloat16)
    assert result["max_abs_diff"] <= 1e-4
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto")  # the dtype config.json records
    assert hf.dtype == torch.bfloat16


def test_cli(tmp_path, tokenizer_path, capsys):
    _, pt = save_pt(tmp_path)
    out = str(tmp_path / "hf")
    assert main(["--checkpoint", pt, "--out", out, "--tokenizer", tokenizer_path]) == 0
    assert "max abs diff" in capsys.readouterr().out
    written = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= written
    assert written <= {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                       "tokenizer_config.json", "special_tokens_map.json"}  # transformers 4.x writes the last too
    assert main(["--checkpoint", pt, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not empty" in err


def test_logits_mismatch_refuses_to_finish(tmp_path, monkeypatch):
    import model.export as export_module
    _, pt = save_pt(tmp_path)
    convert = export_module.hf_state_dict

    def broken(cfg, state):   # e.g. a wrong RoPE layout: swap the two halves of every query head
        out = convert(cfg, state)
        q = out["model.layers.1.self_attn.q_proj.weight"].view(cfg.n_heads, 2, cfg.head_dim // 2, cfg.d_model)
        out["model.layers.1.self_attn.q_proj.weight"] = q.flip(1).reshape(-1, cfg.d_model).contiguous()
        return out

    monkeypatch.setattr(export_module, "hf_state_dict", broken)
    out = str(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"logits differ by .* > 0.0001"):
        export(pt, out)
    assert not os.path.exists(out)
    assert "logits differ" in open(out + ".partial/EXPORT_FAILED.txt").read()


def test_checkpoint_config_mismatch_is_clear(tmp_path):
    model, pt = save_pt(tmp_path)
    blob = torch.load(pt)
    blob["config"]["n_kv_heads"] = 2                  # weights were trained with 4 kv heads
    torch.save(blob, pt)
    with pytest.raises(ValueError, match=r"do not match their model config.*blocks.0.attn.wqkv"):
        load_checkpoint(pt)
    blob["config"]["n_kv_heads"] = None
    blob["model"]["extra.weight"] = torch.zeros(3)
    torch.save(blob, pt)
    with pytest.raises(ValueError, match=r"unexpected \['extra.weight'\]"):
        load_checkpoint(pt)
    torch.save({"model": model.state_dict()}, pt)
    with pytest.raises(ValueError, match="'config'"):
        load_checkpoint(pt)


def test_run_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope"))
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoints/"):
        load_checkpoint(str(run))
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="latest is missing.*step_00000010"):
        load_checkpoint(str(run))
    (run / "checkpoints" / "latest").write_text("step_00000010")
    with pytest.raises(ValueError, match="no COMPLETE marker"):
        load_checkpoint(str(run))
    with pytest.raises(FileNotFoundError, match="step_00000099 does not exist"):
        load_checkpoint(str(run), tag="step_00000099")
    (run / "checkpoints" / "step_00000010" / "COMPLETE").write_text("")
    with pytest.raises(FileNotFoundError, match="model_config.json is missing"):
        load_checkpoint(str(run))


PEAK_MEMORY = textwrap.dedent("""
    import json, sys, torch, transformers, safetensors.torch, sentencepiece
    from model.export import export

    def status(key):   # bytes, from /proc/self/status (VmHWM = peak resident set since the last reset)
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    export(sys.argv[1], sys.argv[2] + "-warmup")      # a tiny model: lazy library set-up is not the model's
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                     # reset VmHWM to the current RSS: measure the big export alone
    export(sys.argv[3], sys.argv[4])
    print(json.dumps({"base": base, "peak": status("VmHWM")}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_export_peak_memory_is_about_one_model_copy(tmp_path):
    # 60M parameters (240 MB fp32), so that the interpreter's own allocations are small next to the model.
    cfg = DecoderConfig(vocab_size=32000, d_model=512, n_layers=8, n_heads=8, max_seq_len=128,
                        tie_embeddings=False)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Decoder(cfg).state_dict().items()}
    pt = str(tmp_path / "big.pt")
    gen = torch.Generator().manual_seed(0)
    torch.save({"config": cfg.to_dict(),
                "model": {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}}, pt)
    model_bytes = 4 * sum(s.numel() for s in shapes.values())
    _, tiny = save_pt(tmp_path)
    proc = subprocess.run([sys.executable, "-c", PEAK_MEMORY, tiny, str(tmp_path / "tiny"), pt,
                           str(tmp_path / "hf")], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    # Page-cache pages of the mapped input and output files count too; three copies would be >= 2x.
    print(f"export peak above baseline: {(mem['peak'] - mem['base']) / model_bytes:.2f}x the fp32 model")
    assert mem["peak"] - mem["base"] <= 1.5 * model_bytes, (mem, model_bytes)


DEEPSPEED_SAVE = textwrap.dedent("""
    import json, os, sys, torch, deepspeed
    from model.decoder import Decoder, DecoderConfig
    run, port = sys.argv[1], sys.argv[2]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = DecoderConfig(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                        tie_embeddings=False)
    ds = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True},
          "zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        model = Decoder(cfg)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    x = torch.randint(0, 320, (2, 16))
    loss = engine(x, x)
    engine.backward(loss)
    engine.step()
    tag = "step_00000001"
    ckpt = os.path.join(run, "checkpoints")
    engine.save_checkpoint(ckpt, tag=tag, save_latest=False)
    with open(os.path.join(ckpt, tag, "model_config.json"), "w") as f:
        json.dump(cfg.to_dict(), f)
    open(os.path.join(ckpt, tag, "COMPLETE"), "w").close()
    open(os.path.join(ckpt, "latest"), "w").write(tag)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        torch.save({k: v.float().clone() for k, v in engine.module.state_dict().items()},
                   os.path.join(run, "bf16_weights.pt"))
    engine.eval()
    torch.save(x[:1].clone(), os.path.join(run, "input.pt"))
    with torch.no_grad():
        torch.save(engine(x[:1]).float(), os.path.join(run, "logits.pt"))
""")


@pytest.mark.slow
def test_real_zero3_checkpoint_round_trip(tmp_path, tokenizer_path):
    require("deepspeed")
    run = tmp_path / "run"
    run.mkdir()
    port = free_port()
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", DEEPSPEED_SAVE, str(run), str(port)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    os.link(tokenizer_path, run / "tokenizer.model")

    cfg, state, tok = load_checkpoint(str(run))
    assert cfg.n_kv_heads == 2 and tok == str(run / "tokenizer.model")
    bf16 = torch.load(run / "bf16_weights.pt")
    assert set(state) == set(bf16)
    for k in state:      # fp32 master weights round to the bf16 weights the engine computed with
        assert state[k].dtype == torch.float32
        torch.testing.assert_close(state[k].to(torch.bfloat16).float(), bf16[k], atol=0, rtol=0, msg=k)
    assert load_checkpoint(str(run / "checkpoints" / "step_00000001"))[0] == cfg      # a tag dir works too

    out = str(tmp_path / "hf")
    assert main(["--checkpoint", str(run), "--out", out]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    x = torch.load(run / "input.pt")                  # the batch the engine's logits were computed on
    with torch.no_grad():
        engine_logits = torch.load(run / "logits.pt")
        ours_bf16 = Decoder(cfg)
        ours_bf16.load_state_dict(bf16)
        torch.testing.assert_close(ours_bf16.to(torch.bfloat16)(x).float(), engine_logits, atol=0, rtol=0)
        assert (hf(x).logits - engine_logits).abs().max() < 0.1     # fp32 master vs bf16 compute
    assert json.load(open(os.path.join(out, "config.json")))["num_key_value_heads"] == 2
