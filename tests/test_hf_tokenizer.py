"""Hugging Face tokenizers (tokenizer.json) as the data's tokenizer: pipeline.hf_tokenizer and the whole path.

A byte-level BPE with a vocabulary over 65,500 is trained here with `tokenizers`, then: prepare -> int32 shards
that Megatron's IndexedDataset reads -> a tiny model trained on 2 DeepSpeed ZeRO-3 processes -> export ->
transformers loads model and tokenizer -> its greedy decoding equals ours.

    DS_ACCELERATOR=cpu python -m pytest tests/test_hf_tokenizer.py -q
"""
from __future__ import annotations

import json
import os
import pickle
import random
import warnings

import numpy as np
import pytest
from conftest import gopher_text, small_corpus, write_jsonl_file
from ranks import start_train, wait_ranks
from references import require

require("apache_beam")
tokenizers = require("tokenizers")

from pipeline.hf_tokenizer import data_config, resolve_hf_tokenizer  # noqa: E402
from pipeline.prepare import load_given_tokenizer  # noqa: E402
from pipeline.shards import ShardReader  # noqa: E402
from pipeline.split import assign_shard  # noqa: E402
from pipeline.tokenizer import train_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS, BOS = "<|endoftext|>", "<|startoftext|>"
BIG_VOCAB = 66_000  # above 65,500: int32 shards


def _bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained on ``texts``, with EOS and BOS special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=[EOS, BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def _save(tok, folder, config: dict | None) -> str:
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    if config is not None:
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
    return str(folder)


@pytest.fixture(scope="module")
def big_tokenizer(tmp_path_factory) -> str:
    """A folder with tokenizer.json (byte-level BPE, vocabulary > 65,500) and a tokenizer_config.json naming
    EOS as an AddedToken dict (as transformers writes it). Enough distinct made-up words give the merges."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(5, 11))) for _ in range(40_000)]
    texts = [gopher_text(i) for i in range(300)] + [" ".join(words[i:i + 200]) for i in range(0, len(words), 200)]
    tok = _bpe(texts * 2, BIG_VOCAB)
    assert tok.get_vocab_size() > 65_500
    return _save(tok, tmp_path_factory.mktemp("bpe"), {"eos_token": {"content": EOS, "special": True},
                                                        "bos_token": BOS, "tokenizer_class": "GPT2Tokenizer"})


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory) -> str:
    return _save(_bpe([gopher_text(i) for i in range(50)], 600), tmp_path_factory.mktemp("small"),
                 {"eos_token": EOS})


def test_document_sequence_is_ids_then_eos_and_special_text_stays_text(small_tokenizer):
    tok = resolve_hf_tokenizer(small_tokenizer)
    backend = tokenizers.Tokenizer.from_file(os.path.join(small_tokenizer, "tokenizer.json"))
    text = gopher_text(7)
    assert tok.eos_id == backend.token_to_id(EOS)
    assert tok.encode_document(text).tolist() == backend.encode(text).ids + [tok.eos_id]
    assert tok.encode_document("").tolist() == [tok.eos_id]
    # A web page that spells the EOS token holds text, not a document boundary.
    ids = tok.encode_document(f"before {EOS} after").tolist()
    assert ids.count(tok.eos_id) == 1 and ids[-1] == tok.eos_id
    assert tok.decode(ids) == f"before {EOS} after"
    assert tok.encode_document(text).dtype == np.int32
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode_document(text).tolist() == tok.encode_document(text).tolist()


def test_truncation_padding_and_post_processor_of_the_file_do_not_apply(tmp_path):
    from tokenizers.processors import TemplateProcessing

    tok = _bpe([gopher_text(i) for i in range(50)], 600)
    bos = tok.token_to_id(BOS)
    tok.post_processor = TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos)])
    tok.enable_truncation(max_length=8)
    tok.enable_padding(length=16)
    ours = resolve_hf_tokenizer(_save(tok, tmp_path / "t", {"eos_token": EOS, "bos_token": BOS}))
    text = gopher_text(3)
    ids = ours.encode_document(text).tolist()
    assert len(ids) > 16 and bos not in ids
    assert ours.decode(ids) == text and ours.bos_id == bos


def test_where_the_eos_token_comes_from(tmp_path, small_tokenizer):
    tok = _bpe([gopher_text(i) for i in range(50)], 600)
    bare = _save(tok, tmp_path / "bare", None)
    with pytest.raises(ValueError, match="--eos-token"):
        resolve_hf_tokenizer(bare)
    assert resolve_hf_tokenizer(bare, eos_token=BOS).eos_id == tok.token_to_id(BOS)
    assert resolve_hf_tokenizer(small_tokenizer, eos_token=BOS).eos_id == tok.token_to_id(BOS)  # flag wins
    with pytest.raises(ValueError, match="not in its vocabulary"):
        resolve_hf_tokenizer(bare, eos_token="<eos-that-is-not-there>")
    # The data directory's own config names the EOS it used.
    config = json.loads(data_config({"eos_token": "x", "bos_token": {"content": BOS}}, EOS))
    assert config["eos_token"] == EOS and config["bos_token"] == BOS


def test_given_tokenizer_spellings_and_errors(tmp_path, small_tokenizer, monkeypatch):
    by_folder = load_given_tokenizer(small_tokenizer)
    by_file = load_given_tokenizer(os.path.join(small_tokenizer, "tokenizer.json"))
    assert by_folder["kind"] == by_file["kind"] == "huggingface"
    assert by_folder["sha256"] == by_file["sha256"] and by_folder["path"] == "tokenizer.json"
    assert by_folder["config"] == by_file["config"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_given_tokenizer(str(tmp_path / "missing" / "tokenizer.json"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="without tokenizer.json"):
        load_given_tokenizer(str(empty))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
        load_given_tokenizer(str(tmp_path / "bad"), eos_token=EOS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="Hugging Face Hub"):
        load_given_tokenizer("some-org/some-tokenizer-name")
    sp = str(tmp_path / "sp.model")
    train_tokenizer([gopher_text(i) for i in range(30)], sp, 400)
    with pytest.raises(ValueError, match="--eos-token applies"):
        load_given_tokenizer(sp, eos_token=EOS)
    assert load_given_tokenizer(sp)["kind"] == "sentencepiece"


def test_a_directory_tokenizer_is_opened_from_its_files(tmp_path, small_tokenizer):
    from pipeline.tokenizer_file import find_tokenizer, open_tokenizer_path

    info = load_given_tokenizer(small_tokenizer)
    for name, data in (("tokenizer.json", info["model"]), ("tokenizer_config.json", info["config"])):
        (tmp_path / name).write_bytes(data)
    path = find_tokenizer(str(tmp_path))
    assert path == str(tmp_path / "tokenizer.json")
    assert open_tokenizer_path(path).eos_id == info["eos_id"]
    os.remove(tmp_path / "tokenizer_config.json")
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
        open_tokenizer_path(path)


@pytest.mark.slow  # prepare + a 2-process DeepSpeed run + export: ~1-2 min on 2 cores
def test_big_byte_level_bpe_end_to_end(tmp_path, big_tokenizer):
    torch = require("torch")
    transformers = require("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Transformer Engine and Apex are not installed": irrelevant here
        indexed_dataset = require("megatron.core.datasets.indexed_dataset")
    from model.export import build_model, export, load_checkpoint
    from model.generate import generate
    from pipeline.prepare import run

    records, _, kept = small_corpus()
    write_jsonl_file(tmp_path / "in" / "part-0.jsonl", records)
    data = str(tmp_path / "data")
    manifest = run(["--input", str(tmp_path / "in" / "*.jsonl"), "--output", data, "--tokenizer", big_tokenizer,
                    "--train-shards", "2", "--val-shards", "1", "--val-fraction", "0.15"])
    tok = resolve_hf_tokenizer(big_tokenizer)
    assert manifest["tokenizer"]["kind"] == "huggingface" and manifest["tokenizer"]["path"] == "tokenizer.json"
    assert manifest["tokenizer"]["vocab_size"] == tok.vocab_size > 65_500
    assert manifest["tokenizer"]["eos_id"] == tok.eos_id
    with open(os.path.join(big_tokenizer, "tokenizer.json"), "rb") as f:
        assert open(os.path.join(data, "tokenizer.json"), "rb").read() == f.read()  # byte for byte as given

    # Megatron's reader sees every kept document's ids + EOS, stored as int32.
    total = 0
    for shard in manifest["shards"]:
        split, index = shard["split"], int(shard["path"].split("-")[1])
        keys = sorted(k for k in kept if assign_shard(k, 0.15, 2, 1) == (split, index))
        ds = indexed_dataset.IndexedDataset(os.path.join(data, shard["path"]))
        assert ds.index.dtype == np.int32 and ShardReader(os.path.join(data, shard["path"])).dtype == np.int32
        assert [ds[i].tolist() for i in range(len(ds))] == [tok.encode_document(kept[k]).tolist() for k in keys]
        total += len(ds)
    assert total == len(kept)

    run_dir = str(tmp_path / "run")
    args = ["--data", data, "--config", os.path.join(ROOT, "launch", "configs", "tiny.json"),
            "--ds-config", os.path.join(ROOT, "ds_configs", "zero3_bf16.json"), "--out", run_dir,
            "--dist-timeout", "120", "--set", "steps=4", "--set", "checkpoint_every=4", "--set", "eval_every=4"]
    wait_ranks(start_train(args, str(tmp_path / "train")), str(tmp_path / "train"))
    assert sorted(n for n in os.listdir(run_dir) if n.startswith("tokenizer")) == ["tokenizer.json",
                                                                                   "tokenizer_config.json"]

    hf_dir = str(tmp_path / "hf")
    result = export(run_dir, hf_dir)
    assert result["tokenizer"] and result["config"]["vocab_size"] == tok.vocab_size
    theirs_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    prompt_text = gopher_text(5, words=12)
    prompt = [tok.eos_id] + tok.encode(prompt_text)
    assert theirs_tok(prompt_text, add_special_tokens=False)["input_ids"] == prompt[1:]
    cfg, state, _ = load_checkpoint(run_dir)
    ours = generate(build_model(cfg, state).eval(), [prompt], 12, temperature=0.0)[0]
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=len(ours), do_sample=False,
                              eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
    assert out[0, len(prompt):].tolist() == ours
    assert theirs_tok.decode(ours, skip_special_tokens=True) == tok.decode(ours)


def test_a_sentencepiece_derived_tokenizer_json_gives_the_sentencepiece_ids(tmp_path):
    """SentencePiece-derived tokenizer.json files (Llama 2, Mistral style) run as they are: the one model.export
    writes for our own SentencePiece model gives the same document sequences as that model."""
    require("transformers")
    from model.export import save_tokenizer
    from pipeline.tokenizer import Tokenizer

    sp_path = str(tmp_path / "sp.model")
    train_tokenizer([gopher_text(i) for i in range(40)], sp_path, 500)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    assert save_tokenizer(sp_path, str(hf_dir), 256) == []
    ours, sp = resolve_hf_tokenizer(str(hf_dir)), Tokenizer(sp_path)
    assert ours.eos_id == sp.eos_id and ours.vocab_size == sp.vocab_size
    for text in [gopher_text(99), "  leading spaces, tabs\tand digits 12345", "caf\u00e9 \u00fc\u00df \u4e2d\u6587", "</s> stays text"]:
        assert ours.encode_document(text).tolist() == sp.encode_document(text).tolist(), text
