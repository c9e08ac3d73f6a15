"""Continued pretraining from a Hugging Face Llama: model.hf_import and launch.train --init-from.

    DS_ACCELERATOR=cpu python -m pytest tests/test_init_from.py -q

The reference is transformers itself: tiny LlamaForCausalLM models (random init) built and saved here. Checked:
the config conversion (GQA, tied/untied head, rope_theta, norm eps, vocabulary, widths), our logits against
transformers', export -> import -> export giving identical tensors, every refused config.json field naming
itself, the vocabulary checks, the run config's `model` section rules, and a real 2-process ZeRO-3 run whose
first logged loss (computed before the first update) is transformers' loss on the same batch.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import random_data_dir
from model import hf_import
from model.decoder import Decoder, DecoderConfig
from ranks import kill_inside_save, start_train, wait_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.json")
VOCAB = 256
SEQ_LEN = 64  # tiny.json


def _save_llama(out: str, tied: bool, **overrides) -> str:
    """A random tiny LlamaForCausalLM saved with save_pretrained (config.json + model.safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0,
                  max_position_embeddings=128, tie_word_embeddings=tied, initializer_range=0.1)
    kwargs.update(overrides)
    torch.manual_seed(7)
    model = LlamaForCausalLM(LlamaConfig(**kwargs))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def llama_dir(request, tmp_path_factory):
    return _save_llama(str(tmp_path_factory.mktemp("hf") / "llama"), tied=request.param)


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory):
    return _save_llama(str(tmp_path_factory.mktemp("hf") / "untied"), tied=False)


def test_config_json_becomes_our_config(llama_dir):
    cfg = hf_import.decoder_config(llama_dir, max_seq_len=SEQ_LEN)
    tied = json.load(open(os.path.join(llama_dir, "config.json")))["tie_word_embeddings"]
    assert cfg == DecoderConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=160,
                                max_seq_len=SEQ_LEN, rope_base=500000.0, norm_eps=1e-5, tie_embeddings=tied,
                                init_std=0.1)


def test_our_logits_equal_transformers(llama_dir):
    """verify_weights' own check, and an independent one on another batch, longer than its fixed one."""
    from transformers import AutoModelForCausalLM

    from model.export import build_model

    cfg = hf_import.decoder_config(llama_dir, max_seq_len=SEQ_LEN)
    state, diff = hf_import.verify_weights(llama_dir, cfg)
    assert diff <= 1e-4
    batch = torch.randint(0, VOCAB, (3, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    theirs = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    ours = build_model(cfg, state)
    with torch.no_grad():
        expected, got = theirs(batch).logits, ours(batch)
    assert expected.abs().max() > 0.1  # logits that are not all ~0, so the comparison means something
    assert (got - expected).abs().max() <= 1e-4


def test_export_import_export_round_trips_exactly(tmp_path):
    """Ours (.pt) -> HF (model.export) -> ours (model.hf_import CLI) -> HF again: the two HF directories hold
    identical tensors, and the imported config is the original one."""
    from safetensors.torch import load_file

    from model import export

    cfg = DecoderConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=SEQ_LEN,
                        tie_embeddings=False, rope_base=20000.0)
    torch.manual_seed(3)
    torch.save({"config": cfg.to_dict(), "model": Decoder(cfg).state_dict()}, tmp_path / "ours.pt")
    export.export(str(tmp_path / "ours.pt"), str(tmp_path / "hf_a"))
    assert hf_import.main(["--hf-dir", str(tmp_path / "hf_a"), "--out", str(tmp_path / "back.pt"),
                           "--max-seq-len", str(SEQ_LEN)]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back["config"] == cfg.to_dict()
    original = torch.load(tmp_path / "ours.pt", weights_only=True)["model"]
    assert set(back["model"]) == set(original)
    assert all(torch.equal(back["model"][k], original[k]) for k in original)
    export.export(str(tmp_path / "back.pt"), str(tmp_path / "hf_b"))
    a = load_file(str(tmp_path / "hf_a" / "model.safetensors"))
    b = load_file(str(tmp_path / "hf_b" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert json.load(open(tmp_path / "hf_a" / "config.json")) == json.load(open(tmp_path / "hf_b" / "config.json"))


REFUSED = [
    ("model_type", "mistral"),
    ("hidden_act", "gelu"),
    ("attention_bias", True),
    ("mlp_bias", True),
    ("sliding_window", 32),
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),          # transformers 4.x spelling
    ("rope_parameters", {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}),  # 5.x
    ("head_dim", 32),
    ("attention_dropout", 0.1),
    ("quantization_config", {"quant_method": "bitsandbytes"}),
]


@pytest.mark.parametrize("field,value", REFUSED, ids=[f for f, _ in REFUSED])
def test_unrepresentable_config_fields_are_refused_by_name(untied_dir, tmp_path, field, value):
    hf_dir = str(tmp_path / "hf")
    shutil.copytree(untied_dir, hf_dir)
    raw = json.load(open(os.path.join(hf_dir, "config.json")))
    raw[field] = value
    json.dump(raw, open(os.path.join(hf_dir, "config.json"), "w"))
    name = "rope_parameters.rope_type" if field == "rope_parameters" else field
    with pytest.raises(ValueError, match=rf"config\.json: {name}=.*cannot be represented"):
        hf_import.decoder_config(hf_dir, max_seq_len=SEQ_LEN)


def test_weights_that_do_not_fit_the_config_are_refused(untied_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = hf_import.decoder_config(untied_dir, SEQ_LEN)
    tensors = load_file(os.path.join(untied_dir, "model.safetensors"))
    for name, change in (("extra", {"model.layers.2.mlp.up_proj.weight": torch.zeros(160, 64)}),
                         ("missing", None)):
        hf_dir = tmp_path / name
        shutil.copytree(untied_dir, hf_dir)
        edited = dict(tensors)
        if change is None:
            del edited["model.layers.1.self_attn.k_proj.weight"]
        else:
            edited.update(change)
        save_file(edited, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(ValueError, match="no place for|is missing"):
            from model.hf_names import from_hf
            from_hf(cfg, hf_import.read_weights(str(hf_dir)), str(hf_dir))


def _sentencepiece(out_prefix: str, seed: int) -> str:
    import sentencepiece as spm

    from conftest import gopher_text

    corpus = out_prefix + ".txt"
    with open(corpus, "w") as f:
        f.write("\n".join(gopher_text(seed * 1000 + i, 80) for i in range(40)))
    spm.SentencePieceTrainer.train(  # the project's settings (pipeline/tokenizer.py), as model.export expects
        input=corpus, model_prefix=out_prefix, model_type="bpe", vocab_size=384, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, byte_fallback=True, split_digits=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=1.0, minloglevel=2)
    return out_prefix + ".model"


def test_tokenizer_vocabulary_must_match_the_data(untied_dir, tmp_path):
    """Same pieces at every id: a note. Another tokenizer (trained on other text): a ValueError naming ids."""
    from model.export import save_tokenizer

    ours = _sentencepiece(str(tmp_path / "ours"), seed=1)
    other = _sentencepiece(str(tmp_path / "other"), seed=2)
    same_dir, other_dir = tmp_path / "same", tmp_path / "other_hf"
    for d, model in ((same_dir, ours), (other_dir, other)):
        shutil.copytree(untied_dir, d)
        assert save_tokenizer(model, str(d), SEQ_LEN) == []
    assert "the same pieces" in hf_import.check_tokenizer(str(same_dir), ours, 384)
    with pytest.raises(ValueError, match=r"ids different pieces \(id \d+: data .* vs model .*Prepare the data"):
        hf_import.check_tokenizer(str(other_dir), ours, 384)
    assert "no tokenizer" in hf_import.check_tokenizer(untied_dir, ours, 384)


def _plan(monkeypatch, data, out, hf_dir, sets=()):
    from launch.train import parse_args, plan_run

    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT="1").items():
        monkeypatch.setenv(key, value)
    argv = ["--data", str(data), "--config", TINY, "--ds-config", os.path.join(ROOT, "ds_configs",
            "zero3_bf16.json"), "--out", str(out), "--init-from", hf_dir]
    for s in sets:
        argv += ["--set", s]
    return plan_run(parse_args(argv))


def test_run_config_model_section_and_data_vocabulary(untied_dir, tmp_path, monkeypatch):
    """With --init-from the architecture is config.json's: model.size is ignored, agreeing keys pass, conflicting
    ones are refused by name, other model keys are kept; data with more ids than the model is refused."""
    data = random_data_dir(tmp_path / "data", vocab=VOCAB)
    plan = _plan(monkeypatch, data, tmp_path / "run", untied_dir,
                 ["model.n_kv_heads=2", "model.activation_checkpointing=true", "model.rope_base=500000"])
    assert plan.model_cfg == dataclasses.replace(hf_import.decoder_config(untied_dir, SEQ_LEN),
                                                 activation_checkpointing=True)
    with pytest.raises(ValueError, match=r"model\.n_layers=4 conflicts with .*config\.json "
                                         r"\(num_hidden_layers gives 2\).*drop model\.n_layers"):
        _plan(monkeypatch, data, tmp_path / "run", untied_dir, ["model.n_layers=4"])
    big = random_data_dir(tmp_path / "big", vocab=VOCAB + 1)
    with pytest.raises(ValueError, match=rf"vocabulary of {VOCAB + 1} ids .*vocab_size={VOCAB}"):
        _plan(monkeypatch, big, tmp_path / "run2", untied_dir)


# ------------------------------------------------------------------------------------- a real training run

def _start(data, out, hf_dir, ds, sets, pause=None) -> list[subprocess.Popen]:
    """2 ranks of launch.train --init-from, started the way srun starts them (tests/ranks.py: the test holds every
    pid); `pause` ("SECONDS@STEP") holds both inside that step's save (tests/pause_in_save.py)."""
    args = ["--data", data, "--config", TINY, "--ds-config", ds, "--out", out,
            *(["--init-from", hf_dir] if hf_dir else []), "--dist-timeout", "120"]
    for s in sets:
        args += ["--set", s]
    return start_train(args, os.path.join(out, "run"), pause=pause)


def _finish(procs, out) -> str:
    """Wait for both ranks; assert they exited 0; their logs, rank 0 first."""
    return wait_ranks(procs, os.path.join(out, "run"), timeout=400)


def _losses(out) -> list[float]:
    return [x["loss"] for x in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "loss" in x]


def _transformers_first_loss(hf_dir, data, sets) -> float:
    """transformers' fp32 loss on launch.train's first global batch (2 ranks): the mean of the micro-batch means."""
    from transformers import AutoModelForCausalLM

    from launch.config import load_config
    from launch.data import open_split, rank_batch

    cfg = load_config(TINY, sets)
    stream = open_split(str(data), "train", cfg.seq_len, cfg.seed, VOCAB)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    losses = []
    with torch.no_grad():
        for rank in range(2):
            for x, y in rank_batch(stream, 0, cfg.global_batch, cfg.micro_batch, rank, 2):
                logits = model(x).logits
                losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
    return float(np.mean(losses))


@pytest.mark.slow
def test_zero2_training_starts_from_the_hf_weights(untied_dir, tmp_path):
    """Under ZeRO 0-2 rank 0 writes the weights and deepspeed.initialize broadcasts them: both ranks start from
    transformers' weights (the step-1 loss is the mean of both ranks' losses)."""
    data = random_data_dir(tmp_path / "data", vocab=VOCAB)
    ds = str(tmp_path / "zero2_fp32.json")
    json.dump({"zero_optimization": {"stage": 2}}, open(ds, "w"))
    sets = ["steps=1", "eval_every=0", "checkpoint_every=1"]
    _finish(_start(data, tmp_path / "run", untied_dir, ds, sets), tmp_path / "run")
    assert _losses(tmp_path / "run")[0] == pytest.approx(_transformers_first_loss(untied_dir, data, sets), abs=1e-5)


@pytest.mark.slow  # three 2-process DeepSpeed runs
def test_zero3_training_starts_from_the_hf_weights_and_resumes_without_them(untied_dir, tmp_path, monkeypatch):
    """2 processes, ZeRO-3, fp32. The loss logged at step 1 is computed by the weights before the first update, so
    it must equal transformers' loss on the same global batch. A second run, killed -9 inside its step-2 save,
    resumes from its step-1 checkpoint after HF_DIR is gone, without --init-from, and logs the first run's losses
    bit for bit; with --init-from naming the vanished directory it would resume the same way."""
    data = random_data_dir(tmp_path / "data", vocab=VOCAB)
    ds = str(tmp_path / "zero3_fp32.json")
    json.dump({"zero_optimization": {"stage": 3}}, open(ds, "w"))
    hf_dir = str(tmp_path / "hf")
    shutil.copytree(untied_dir, hf_dir)
    sets = ["steps=3", "eval_every=0", "checkpoint_every=1"]
    ref = tmp_path / "reference"
    log = _finish(_start(data, ref, hf_dir, ds, sets), ref)
    assert "logits match transformers'" in log and "no tokenizer" in log

    first = _losses(ref)[0]
    assert first == pytest.approx(_transformers_first_loss(hf_dir, data, sets), abs=1e-5)
    # Far from the uniform loss a freshly initialized model of ours would log: the equality above identifies them.
    assert abs(first - np.log(VOCAB)) > 0.05, first

    last = ref / "checkpoints" / "step_00000003"
    assert json.load(open(last / "client_state.json"))["init_from"] == os.path.abspath(hf_dir)
    assert json.load(open(last / "model_config.json")) == hf_import.decoder_config(hf_dir, SEQ_LEN).to_dict()
    resolved = json.load(open(ref / "config.json"))["model"]
    assert resolved["n_layers"] == 2 and resolved["rope_base"] == 500000.0 and resolved["size"] == "tiny"

    run = tmp_path / "killed"
    procs = _start(data, run, hf_dir, ds, sets, pause="300@2")
    kill_inside_save(procs, run, 2)
    assert open(run / "checkpoints" / "latest").read().strip() == "step_00000001"
    shutil.rmtree(hf_dir)  # resuming needs only the run directory
    log = _finish(_start(data, run, None, ds, sets), run)
    assert "resumed from" in log
    assert _losses(run) == _losses(ref)
    plan = _plan(monkeypatch, data, run, hf_dir, [*sets, "model.activation_checkpointing=true"])
    assert plan.init_from == hf_dir and plan.point.step == 3
    assert plan.model_cfg == dataclasses.replace(DecoderConfig.from_dict(
        json.load(open(last / "model_config.json"))), activation_checkpointing=True)


def test_command_line_mistakes_are_one_error_line_and_exit_2(untied_dir, tmp_path):
    """launch.train with a refused config.json, and model.hf_import without a model: `error: ...`, status 2."""
    data = random_data_dir(tmp_path / "data", vocab=VOCAB)
    hf_dir = tmp_path / "hf"
    shutil.copytree(untied_dir, hf_dir)
    raw = json.load(open(hf_dir / "config.json"))
    json.dump(dict(raw, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), open(hf_dir / "config.json", "w"))
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=ROOT)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    runs = [
        (["launch.train", "--data", str(data), "--config", TINY, "--ds-config",
          os.path.join(ROOT, "ds_configs", "zero3_bf16.json"), "--out", str(tmp_path / "run"), "--init-from",
          str(hf_dir)], "rope_scaling="),
        (["model.hf_import", "--hf-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.pt")],
         "config.json not found"),
    ]
    for args, expected in runs:
        proc = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.startswith("error: ") and expected in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "x.pt").exists()
