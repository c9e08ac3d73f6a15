"""Hugging Face Llama directory -> our DecoderConfig and weights, verified against transformers' logits.

    python -m model.hf_import --hf-dir HF_DIR --out model.pt [--max-seq-len 2048]

The reverse of model.export (the key map both use is model.hf_names). launch.train --init-from uses the same
functions to start continued pretraining from HF_DIR; the .pt written here ({"config", "model"}) is what
model.export and model.generate accept as --checkpoint.

What is represented exactly, and therefore accepted (config.json field -> DecoderConfig field):
    vocab_size -> vocab_size, hidden_size -> d_model, num_hidden_layers -> n_layers,
    num_attention_heads -> n_heads, num_key_value_heads -> n_kv_heads (GQA), intermediate_size -> ffn_hidden,
    rope_theta (or rope_parameters.rope_theta) -> rope_base, rms_norm_eps -> norm_eps,
    tie_word_embeddings -> tie_embeddings, initializer_range -> init_std.
Anything that would make our decoder compute something else is refused with the field named (REFUSED): another
model_type, rope scaling of any kind, attention or MLP biases, sliding windows, an activation other than SiLU,
a head_dim other than hidden_size / num_attention_heads, attention dropout, quantized weights. Absent fields take
LlamaConfig's defaults, as transformers does. max_position_embeddings is not a limit of rotary embeddings
without scaling; our max_seq_len is the run's seq_len.

Verification (verify_weights): transformers loads HF_DIR in fp32 and computes the logits of a fixed batch, then our
decoder does the same with the converted weights; a max abs difference above 1e-4 is a ValueError. Peak memory
is about one fp32 copy of the model plus the fused blocks being concatenated: transformers' copy is freed before
ours is built.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from model.decoder import DecoderConfig, llama_ffn_hidden
from model.export import LOGITS_TOLERANCE, build_model, check_batch, check_state_dict
from model.hf_names import from_hf

# Our config fields that come from config.json, with the config.json field each comes from.
HF_FIELDS = {
    "vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "ffn_hidden": "intermediate_size",
    "rope_base": "rope_theta", "norm_eps": "rms_norm_eps", "tie_embeddings": "tie_word_embeddings",
    "init_std": "initializer_range",
}
# LlamaConfig's defaults for fields a config.json may leave out (transformers 4.x and 5.x agree on these).
DEFAULTS = {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "initializer_range": 0.02,
            "hidden_act": "silu"}


def read_config(hf_dir: str) -> tuple[dict, str]:
    """(config.json as a dict, its path); FileNotFoundError / ValueError naming the file."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: --init-from needs a Hugging Face model directory "
                                f"(config.json and model.safetensors, as save_pretrained writes them)")
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return raw, path


def _refuse(path: str, field: str, value, why: str):
    raise ValueError(f"{path}: {field}={json.dumps(value)} cannot be represented by our decoder ({why}); only "
                     f"plain Llama checkpoints are accepted for --init-from")


def _rope_theta(raw: dict, path: str) -> float:
    """rope_theta from a transformers 4.x (top-level rope_theta, rope_scaling) or 5.x (rope_parameters) config;
    any rope scaling is refused."""
    if raw.get("rope_scaling") is not None:
        _refuse(path, "rope_scaling", raw["rope_scaling"], "rotary scaling (linear, dynamic, yarn, llama3, ...) "
                                                           "changes positions; we implement plain RoPE")
    params = raw.get("rope_parameters")
    theta = raw.get("rope_theta")
    if params is not None:
        if not isinstance(params, dict):
            _refuse(path, "rope_parameters", params, "expected an object with rope_type and rope_theta")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            _refuse(path, "rope_parameters.rope_type", kind, "rotary scaling changes positions; we implement "
                                                            "plain RoPE (rope_type \"default\")")
        theta = params.get("rope_theta", theta)
    return float(DEFAULTS["rope_theta"] if theta is None else theta)


def decoder_config(hf_dir: str, max_seq_len: int) -> DecoderConfig:
    """Our config for HF_DIR's config.json (see the module docstring); ValueError naming the field we refuse."""
    raw, path = read_config(hf_dir)
    if raw.get("model_type") != "llama":
        _refuse(path, "model_type", raw.get("model_type"), "we convert LlamaForCausalLM checkpoints only")
    act = raw.get("hidden_act", DEFAULTS["hidden_act"])
    if act != "silu":
        _refuse(path, "hidden_act", act, "our MLP is SwiGLU with SiLU")
    for field in ("attention_bias", "mlp_bias"):
        if raw.get(field):
            _refuse(path, field, raw[field], "our projections have no biases")
    for field in ("sliding_window", "use_sliding_window"):
        if raw.get(field):
            _refuse(path, field, raw[field], "our attention is full causal attention")
    if raw.get("attention_dropout", 0.0) != 0.0:
        _refuse(path, "attention_dropout", raw["attention_dropout"], "our decoder has no dropout; set it to 0.0 "
                                                                     "in config.json to train without it")
    if raw.get("quantization_config") is not None:
        _refuse(path, "quantization_config", raw["quantization_config"], "quantized weights; start from the "
                                                                         "unquantized checkpoint")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing {missing}; a Llama config.json names every shape")
    d_model, n_heads = raw["hidden_size"], raw["num_attention_heads"]
    head_dim = raw.get("head_dim")
    if head_dim is not None and (not isinstance(d_model, int) or not isinstance(n_heads, int) or n_heads <= 0
                                 or head_dim != d_model // n_heads):
        _refuse(path, "head_dim", head_dim, f"our head_dim is hidden_size / num_attention_heads = "
                                            f"{d_model} / {n_heads}")
    kv = raw.get("num_key_value_heads")
    ffn = raw["intermediate_size"]
    theirs = {
        "vocab_size": raw["vocab_size"], "d_model": d_model, "n_layers": raw["num_hidden_layers"],
        "n_heads": n_heads,
        # Stored as our own configs store them (null = the default), so export -> import gives back the same config.
        "n_kv_heads": None if kv in (None, n_heads) else kv,
        "ffn_hidden": None if isinstance(d_model, int) and ffn == llama_ffn_hidden(d_model) else ffn,
        "rope_base": _rope_theta(raw, path),
        "norm_eps": raw.get("rms_norm_eps", DEFAULTS["rms_norm_eps"]),
        "tie_embeddings": raw.get("tie_word_embeddings", DEFAULTS["tie_word_embeddings"]),
        "init_std": raw.get("initializer_range", DEFAULTS["initializer_range"]),
        "max_seq_len": max_seq_len,
    }
    try:
        return DecoderConfig(**theirs).validate()
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def read_weights(hf_dir: str) -> dict[str, torch.Tensor]:
    """HF-keyed fp32 tensors from model.safetensors or the shards a model.safetensors.index.json names."""
    from safetensors.torch import load_file

    single = os.path.join(hf_dir, "model.safetensors")
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            files = [os.path.join(hf_dir, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    else:
        raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json; re-save the "
                                f"model with save_pretrained(dir) (safetensors is its default)")
    out = {}
    for path in files:
        out.update({k: v.float() for k, v in load_file(path).items()})
    return out


def verify_weights(hf_dir: str, cfg: DecoderConfig) -> tuple[dict[str, torch.Tensor], float]:
    """(our fp32 state dict, max abs logits difference) after checking our logits against transformers' on
    check_batch(cfg) in fp32; ValueError when they differ by more than LOGITS_TOLERANCE."""
    from transformers import AutoModelForCausalLM

    batch = check_batch(cfg)                                                    # (2, T) ids < vocab_size
    theirs_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if type(theirs_model).__name__ != "LlamaForCausalLM":
        raise ValueError(f"{hf_dir}: transformers loads it as {type(theirs_model).__name__}, not LlamaForCausalLM")
    with torch.no_grad():
        theirs = theirs_model(batch).logits.float()                             # (2, T, V)
    del theirs_model
    state = from_hf(cfg, read_weights(hf_dir), hf_dir)
    check_state_dict(cfg, state, hf_dir)
    model = build_model(cfg, state)
    with torch.no_grad():
        ours = model(batch)                                                     # (2, T, V)
    del model
    diff = float((ours - theirs).abs().max())
    if not diff <= LOGITS_TOLERANCE:
        raise ValueError(f"{hf_dir}: our logits differ from transformers' by {diff:.3g} max abs (> "
                         f"{LOGITS_TOLERANCE}) on a fixed batch in fp32; the checkpoint uses something our decoder "
                         f"does not implement (compare config.json with the fields model/hf_import.py accepts)")
    return state, diff


def check_tokenizer(hf_dir: str, data_tokenizer: str, data_vocab_size: int) -> str:
    """Compare the data's SentencePiece vocabulary with HF_DIR's tokenizer, id by id over the data's ids.

    ValueError when any id maps to a different piece (the data would feed the model the wrong tokens). Returns a
    note for the log: what was compared, or why only the vocabulary size could be (no tokenizer in HF_DIR, or a
    data tokenizer file SentencePiece cannot read).
    """
    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    if not any(os.path.isfile(os.path.join(hf_dir, n)) for n in names):
        return f"{hf_dir} has no tokenizer ({', '.join(names)}): only the vocabulary size was checked"
    import sentencepiece as spm
    try:
        sp = spm.SentencePieceProcessor(model_file=data_tokenizer)
    except (OSError, RuntimeError) as e:
        return f"the data's tokenizer {data_tokenizer} cannot be read ({e}): only the vocabulary size was checked"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    n = min(sp.get_piece_size(), data_vocab_size)
    theirs = tok.convert_ids_to_tokens(list(range(n)))
    differ = [(i, sp.id_to_piece(i), theirs[i]) for i in range(n) if sp.id_to_piece(i) != theirs[i]]
    if differ:
        shown = ", ".join(f"id {i}: data {a!r} vs model {b!r}" for i, a, b in differ[:3])
        raise ValueError(f"the data's tokenizer {data_tokenizer} and {hf_dir}'s tokenizer give {len(differ)} of "
                         f"the data's {n} ids different pieces ({shown}); the model would read the wrong tokens. "
                         f"Prepare the data with the model's tokenizer")
    return f"tokenizer: the data's {n} ids name the same pieces in {hf_dir}'s tokenizer"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Convert a Hugging Face Llama directory to our .pt checkpoint.")
    p.add_argument("--hf-dir", required=True, help="directory with config.json and model.safetensors")
    p.add_argument("--out", required=True, help="output .pt file: {'config': DecoderConfig dict, 'model': ...}")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="our max_seq_len (default: config.json's max_position_embeddings)")
    args = p.parse_args(argv)
    from pipeline.files import atomic_open
    try:
        raw, _ = read_config(args.hf_dir)
        cfg = decoder_config(args.hf_dir, args.max_seq_len or int(raw.get("max_position_embeddings", 2048)))
        state, diff = verify_weights(args.hf_dir, cfg)
    except (ValueError, FileNotFoundError) as e:   # a refused field, missing files, a failed logits check
        print(f"error: {e}", file=sys.stderr)
        return 2
    with atomic_open(args.out) as f:
        torch.save({"config": cfg.to_dict(), "model": state}, f)
    print(f"converted {args.hf_dir} -> {args.out}; logits max abs diff vs transformers {diff:.2e} "
          f"(<= {LOGITS_TOLERANCE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
