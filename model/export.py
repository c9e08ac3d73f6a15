"""Checkpoint -> Hugging Face Llama directory (safetensors), verified by reloading it and comparing logits.

    python -m model.export --checkpoint runs/quickstart --out runs/quickstart/hf
    python -m model.export --checkpoint model.pt --tokenizer data/tokenizer.model --out hf_dir

--checkpoint is a run directory (checkpoints/latest names the newest complete tag; --tag picks another), a tag
directory (RUN_DIR/checkpoints/step_00001000), or a .pt file holding {"config": DecoderConfig.to_dict(),
"model": state_dict}. ZeRO shards (any stage) are consolidated to fp32 with DeepSpeed's zero_to_fp32.

The output loads with transformers.AutoModelForCausalLM.from_pretrained (LlamaForCausalLM) and
AutoTokenizer.from_pretrained. Our decoder uses HF Llama's rotary layout ("rotate_half"), so the conversion is a
renaming plus splitting our fused projections (wqkv -> q/k/v_proj, w_gate_up -> gate/up_proj); no permutation.
Before the directory is moved into place, the export reloads it with transformers and checks, in fp32:
    - logits of a fixed batch match ours to <= 1e-4 max abs (the weights went through unchanged),
    - the HF tokenizer gives the same ids as our SentencePiece model on a fixed set of tricky texts.
On a mismatch it raises ValueError and leaves the unfinished directory at OUT.partial with EXPORT_FAILED.txt.
Peak memory is about one fp32 copy of the model plus one layer: the consolidated tensors become our model's
parameters in place, the HF-named tensors are views of them, and our model is freed before transformers loads.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys

import torch

from model.decoder import Decoder, DecoderConfig
from model.hf_names import to_hf

LOGITS_TOLERANCE = 1e-4   # max abs difference of fp32 logits, ours vs transformers'
# Texts whose tokenization must agree between our SentencePiece model and the exported HF tokenizer: leading,
# repeated and trailing spaces, tabs/newlines, digits (split_digits), and characters outside the vocabulary
# (byte fallback).
TOKENIZER_PROBES = [
    "Hello world", " leading space", "two  spaces and trailing ", "tabs\tand\nnew\n\nlines\n",
    "digits 1234567890 and 3.14159", "ünïcödé façade — em dash … ellipsis", "日本語のテキスト 🚀✨",
    "mixed\r\nline endings", "   ", "a", "</s> <s> <unk> look like special tokens",
]


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _resolve_run_checkpoint(path: str, tag: str | None) -> tuple[str, str, str]:
    """(checkpoints_dir, tag, tokenizer_dir) for a RUN_DIR, a RUN_DIR/checkpoints dir, or a tag dir."""
    if os.path.isfile(os.path.join(path, "model_config.json")):       # a tag directory
        ckpt_dir, found_tag = os.path.split(os.path.normpath(path))
        if tag is not None and tag != found_tag:
            raise ValueError(f"--tag {tag} conflicts with the tag directory {path}; drop --tag")
        return ckpt_dir, found_tag, os.path.dirname(ckpt_dir)
    ckpt_dir = os.path.join(path, "checkpoints")
    if not os.path.isdir(ckpt_dir) and os.path.isfile(os.path.join(path, "latest")):
        ckpt_dir = path                                                 # RUN_DIR/checkpoints given directly
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{path}: no checkpoints/ directory; pass a run directory written by "
                                f"launch.train, a checkpoint tag directory, or a .pt file")
    if tag is None:
        latest = os.path.join(ckpt_dir, "latest")
        if not os.path.isfile(latest):
            raise FileNotFoundError(f"{latest} is missing: the run has no complete checkpoint yet; "
                                    f"pass --tag to pick one of {sorted(os.listdir(ckpt_dir))}")
        tag = _read_text(latest)
    return ckpt_dir, tag, os.path.dirname(os.path.abspath(ckpt_dir))


def _consolidate(ckpt_dir: str, tag: str) -> dict[str, torch.Tensor]:
    """fp32 state dict from DeepSpeed's files in ckpt_dir/tag, materialized one tensor at a time."""
    tag_dir = os.path.join(ckpt_dir, tag)
    if glob.glob(os.path.join(tag_dir, "*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint   # heavy; only here
        # lazy_mode: each tensor is gathered from the (memory-mapped) shards only when asked for.
        lazy = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag, lazy_mode=True)
        state = {}
        for name in list(lazy):
            state[name] = lazy.pop(name).contiguous().float()
        return state
    files = glob.glob(os.path.join(tag_dir, "mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{tag_dir}: no DeepSpeed model or optimizer state files; is the checkpoint "
                                f"complete? (look for a COMPLETE marker)")
    # No ZeRO partitioning and no optimizer files (e.g. saved without optimizer): the module weights are whole.
    module = torch.load(sorted(files)[0], map_location="cpu", weights_only=False)["module"]
    return {k: v.float() for k, v in module.items()}


def check_state_dict(cfg: DecoderConfig, state: dict, source: str) -> None:
    """ValueError naming the source when the weights do not fit the config (missing/extra keys, shapes)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Decoder(cfg).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs config {expected[k]}"
             for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source}: weights do not match their model config (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatches {wrong[:5]}); the config was saved with other weights or was "
            f"edited -- use the model_config.json written with this checkpoint")


def load_checkpoint(path: str, tag: str | None = None) -> tuple[DecoderConfig, dict, str | None]:
    """(config, fp32 state dict of Decoder, tokenizer path or None) from a run dir, tag dir or .pt file.

    The tokenizer is the run directory's (or the .pt file's folder's) tokenizer.model or tokenizer.json
    (pipeline.tokenizer_file.find_tokenizer)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    from pipeline.tokenizer_file import find_tokenizer  # the data's tokenizer files (standard library only)

    if os.path.isfile(path):
        try:
            # mmap: tensors stay backed by the file's page cache instead of a second, anonymous copy in memory.
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            blob = torch.load(path, map_location="cpu", weights_only=True)   # legacy (pre-zip) torch.save format
        if not isinstance(blob, dict) or "config" not in blob or "model" not in blob:
            raise ValueError(f"{path}: expected a dict with 'config' (DecoderConfig.to_dict()) and 'model' "
                             f"(state_dict); got {sorted(blob) if isinstance(blob, dict) else type(blob).__name__}")
        cfg = DecoderConfig.from_dict(blob["config"])
        state = {k: v.float() for k, v in blob["model"].items()}
        tokenizer = find_tokenizer(os.path.dirname(os.path.abspath(path)))
        source = path
    else:
        ckpt_dir, tag, run_dir = _resolve_run_checkpoint(path, tag)
        tag_dir = os.path.join(ckpt_dir, tag)
        if not os.path.isdir(tag_dir):
            raise FileNotFoundError(f"checkpoint tag directory {tag_dir} does not exist; available: "
                                    f"{sorted(d for d in os.listdir(ckpt_dir) if d != 'latest')}")
        if not os.path.isfile(os.path.join(tag_dir, "COMPLETE")):
            raise ValueError(f"{tag_dir} has no COMPLETE marker: it was interrupted while saving; "
                             f"pick an earlier --tag")
        config_path = os.path.join(tag_dir, "model_config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{config_path} is missing (launch.train writes it with every checkpoint)")
        with open(config_path) as f:
            cfg = DecoderConfig.from_dict(json.load(f))
        state = _consolidate(ckpt_dir, tag)
        tokenizer = find_tokenizer(run_dir)
        source = tag_dir
    check_state_dict(cfg, state, source)
    return cfg, state, tokenizer


def build_model(cfg: DecoderConfig, state: dict) -> Decoder:
    """A Decoder whose parameters ARE the given tensors (no copy): built on meta, then assigned."""
    with torch.device("meta"):
        model = Decoder(cfg)
    model.load_state_dict(state, assign=True)
    return model.eval()


def hf_state_dict(cfg: DecoderConfig, state: dict) -> dict[str, torch.Tensor]:
    """Our keys -> LlamaForCausalLM keys; fused projections split into row blocks (views, no copies)."""
    return to_hf(cfg, state)


def hf_config(cfg: DecoderConfig, eos_id: int, bos_id: int | None, dtype: torch.dtype):
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps, rope_theta=float(cfg.rope_base), tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std, attention_bias=False, mlp_bias=False, bos_token_id=bos_id,
        eos_token_id=eos_id, pad_token_id=None, architectures=["LlamaForCausalLM"],
        torch_dtype=str(dtype).removeprefix("torch."))


def _update_json(path: str, **items) -> None:
    with open(path) as f:
        data = json.load(f)
    data.update(items)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def check_batch(cfg: DecoderConfig) -> torch.Tensor:
    """Fixed (2, T) batch of ids for the logits comparison, T = min(64, max_seq_len)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, cfg.vocab_size, (2, min(64, cfg.max_seq_len)), generator=gen)


def bpe_merges(vocab: dict[str, int], scores: dict[str, float], skip: set[str]) -> list[tuple[str, str]]:
    """The merge list of a BPE model that splits text as SentencePiece's BPE does.

    SentencePiece BPE has no merge list: it repeatedly joins the adjacent pair whose concatenation is the
    highest-scoring piece. A merge list ordered by that score gives the same result, so every way of cutting a
    piece into two pieces of the vocabulary is a merge, ranked by the whole piece's score (highest first); ties go
    to the longer left part, then the longer right part, then vocabulary order. Pieces in ``skip`` (control,
    unknown and byte pieces) neither merge nor are merged.
    """
    ranked = []
    for piece, score in scores.items():
        if piece in skip:
            continue
        cuts = [(piece[:i], piece[i:]) for i in range(1, len(piece))]
        cuts = [(a, b) for a, b in cuts if a in vocab and b in vocab and a not in skip and b not in skip]
        cuts.sort(key=lambda ab: (vocab[ab[0]], vocab[ab[1]]))
        ranked += [(score, len(a), len(b), a, b) for a, b in cuts]
    # A stable sort on the key alone, so equal keys keep vocabulary order.
    ranked.sort(key=lambda r: r[:3], reverse=True)
    return [(a, b) for _, _, _, a, b in ranked]


def save_tokenizer(tokenizer_path: str, out: str, max_len: int) -> list[str]:
    """Write an HF fast tokenizer equivalent to our SentencePiece model; return probe mismatches (empty = ok).

    Built from the SentencePiece runtime API (pieces, scores) rather than transformers' converter, which needs a
    protobuf runtime newer than Apache Beam allows. BPE merges are ordered by the merged piece's score, as
    SentencePiece applies them. SentencePiece's dummy prefix always prepends "▁", even before a leading space,
    so it is a Prepend normalizer (not the Metaspace pre-tokenizer, which skips text already starting with a space).
    Special-looking text such as "</s>" is encoded as plain text (split_special_tokens), as SentencePiece does.
    """
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(n)}
    special = {sp.id_to_piece(i) for i in range(n) if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)}
    unk = sp.id_to_piece(sp.unk_id())
    backend = Tokenizer(BPE(vocab=vocab, merges=bpe_merges(vocab, scores, special), unk_token=unk,
                            fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(content=" ", left=1)])
    special_tokens = {"unk_token": unk}
    if sp.bos_id() >= 0:
        special_tokens["bos_token"] = sp.id_to_piece(sp.bos_id())
    if sp.eos_id() >= 0:
        special_tokens["eos_token"] = sp.id_to_piece(sp.eos_id())
    # Our sequences carry no BOS and get EOS appended by the data pipeline; no post-processor adds either.
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, split_special_tokens=True,
                                  clean_up_tokenization_spaces=False, model_max_length=max_len, **special_tokens)
    tok.save_pretrained(out)
    # transformers 5 writes its own class name; the generic fast class loads tokenizer.json verbatim in 4.x and 5.x.
    _update_json(os.path.join(out, "tokenizer_config.json"), tokenizer_class="PreTrainedTokenizerFast")
    reloaded = AutoTokenizer.from_pretrained(out)
    mismatches = []
    for text in TOKENIZER_PROBES:
        ours, theirs = sp.encode(text), reloaded(text)["input_ids"]
        if ours != theirs:
            mismatches.append(f"{text!r}: ours {ours} vs transformers {theirs}")
    return mismatches


def save_hf_tokenizer(ours, out: str, max_len: int) -> list[str]:
    """Write ``ours`` (a pipeline.hf_tokenizer.HFTokenizer): its tokenizer.json as it was given, with its data
    directory's tokenizer_config.json and the model's context length; return probe mismatches against our ids
    (empty = ok).

    tokenizer.json stays byte for byte the user's, post-processor included: ``tokenizer(text)`` adds what it
    always added (e.g. Llama 3's BOS), and ``tokenizer(text, add_special_tokens=False)`` gives the ids we trained
    on (a document's text, then EOS).
    """
    from transformers import AutoTokenizer

    from pipeline.layout import HF_CONFIG_NAME, HF_TOKENIZER_NAME

    with open(os.path.join(out, HF_TOKENIZER_NAME), "wb") as f:
        f.write(ours.model_proto)
    config = json.loads(ours.config_json)
    config["model_max_length"] = max_len
    with open(os.path.join(out, HF_CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    reloaded = AutoTokenizer.from_pretrained(out)
    mismatches = []
    for text in TOKENIZER_PROBES:
        mine, theirs = ours.encode(text), reloaded(text, add_special_tokens=False)["input_ids"]
        if mine != theirs:
            mismatches.append(f"{text!r}: ours {mine} vs transformers {theirs}")
    return mismatches


def export(path: str, out: str, tag: str | None = None, tokenizer: str | None = None,
           dtype: torch.dtype = torch.float32) -> dict:
    """Convert, write OUT.partial, verify, then rename to OUT. Returns {"max_abs_diff", "out", ...}."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, GenerationConfig

    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"export dtype must be float32 or bfloat16, got {dtype}")
    if os.path.exists(out) and os.listdir(out):
        raise ValueError(f"--out {out} exists and is not empty; pick a new directory or remove it")
    cfg, state, found_tokenizer = load_checkpoint(path, tag)
    tokenizer = tokenizer or found_tokenizer
    if tokenizer is not None and not os.path.isfile(tokenizer):
        raise FileNotFoundError(f"--tokenizer {tokenizer} does not exist")
    from pipeline.tokenizer_file import HUGGINGFACE, kind_of, open_tokenizer_path

    eos_id, bos_id, tok = 2, 1, None
    if tokenizer is not None:
        tok = open_tokenizer_path(tokenizer)
        eos_id, bos_id = tok.eos_id, (tok.bos_id if tok.bos_id >= 0 else None)
        if tok.vocab_size > cfg.vocab_size:
            raise ValueError(f"{tokenizer} has a vocabulary of {tok.vocab_size} but the model's vocab_size is "
                             f"{cfg.vocab_size}; pass the tokenizer this model was trained with")

    partial = out.rstrip("/") + ".partial"
    if os.path.exists(partial):
        shutil.rmtree(partial)
    os.makedirs(partial)
    if dtype != torch.float32:
        for t in state.values():                 # the check compares against weights rounded like the saved ones
            t.copy_(t.to(dtype))
    model = build_model(cfg, state)
    batch = check_batch(cfg)
    with torch.no_grad():
        ours = model(batch)                                               # (2, T, V) fp32
    del model
    hf = {k: v.to(dtype) if dtype != torch.float32 else v for k, v in hf_state_dict(cfg, state).items()}
    save_file(hf, os.path.join(partial, "model.safetensors"), metadata={"format": "pt"})
    del hf, state                                # frees the fp32 weights before transformers loads its copy
    hf_config(cfg, eos_id, bos_id, dtype).save_pretrained(partial)
    # transformers < 5 reads these two names (5 reads rope_parameters and dtype, written above).
    _update_json(os.path.join(partial, "config.json"), rope_theta=float(cfg.rope_base),
                 torch_dtype=str(dtype).removeprefix("torch."))
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, max_length=cfg.max_seq_len,
                     do_sample=False).save_pretrained(partial)
    problems = []
    if tok is not None:
        # The Hugging Face kind is written from the tokenizer already opened; SentencePiece is rebuilt from its file.
        saved = (save_hf_tokenizer(tok, partial, cfg.max_seq_len) if kind_of(tok) == HUGGINGFACE
                 else save_tokenizer(tokenizer, partial, cfg.max_seq_len))
        problems += [f"tokenizer mismatch {m}" for m in saved]

    theirs_model = AutoModelForCausalLM.from_pretrained(partial, dtype=torch.float32).eval()
    if type(theirs_model).__name__ != "LlamaForCausalLM":
        problems.append(f"transformers loaded {type(theirs_model).__name__}, expected LlamaForCausalLM")
    with torch.no_grad():
        theirs = theirs_model(batch).logits.float()
    del theirs_model
    max_abs_diff = float((ours - theirs).abs().max())
    if not max_abs_diff <= LOGITS_TOLERANCE:
        problems.append(f"logits differ by {max_abs_diff:.3g} max abs > {LOGITS_TOLERANCE} on the check batch")
    if problems:
        with open(os.path.join(partial, "EXPORT_FAILED.txt"), "w") as f:
            f.write("\n".join(problems) + "\n")
        raise ValueError(f"export to {out} failed its checks; unfinished output left in {partial}:\n  "
                         + "\n  ".join(problems))
    if os.path.exists(out):
        os.rmdir(out)                               # empty (checked above)
    os.rename(partial, out)
    return {"out": out, "max_abs_diff": max_abs_diff, "tokenizer": tokenizer is not None,
            "dtype": str(dtype).removeprefix("torch."), "config": cfg.to_dict()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Export a checkpoint to a Hugging Face Llama directory.")
    p.add_argument("--checkpoint", required=True, help="RUN_DIR, RUN_DIR/checkpoints/<tag>, or FILE.pt")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the one named in checkpoints/latest)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.model or tokenizer.json (default: the run directory's, or the one next to FILE.pt)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of saved weights")
    args = p.parse_args(argv)
    try:
        result = export(args.checkpoint, args.out, tag=args.tag, tokenizer=args.tokenizer,
                        dtype=getattr(torch, args.dtype))
    except (ValueError, FileNotFoundError) as e:  # a missing or mismatched checkpoint, a failed check
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported to {result['out']} ({result['dtype']}); logits max abs diff vs transformers "
          f"{result['max_abs_diff']:.2e} (<= {LOGITS_TOLERANCE}); tokenizer "
          f"{'checked' if result['tokenizer'] else 'not included (pass --tokenizer)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
