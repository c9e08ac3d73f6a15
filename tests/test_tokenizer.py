"""Tests of pipeline.tokenizer: Llama-2 settings, deterministic training, byte fallback, chunked encoding.

    python -m pytest tests/test_tokenizer.py -q
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import sentencepiece as spm

from conftest import CountingText, gopher_text
from pipeline.tokenizer import (ENCODE_CHUNK_CHARS, Tokenizer, split_text, train_tokenizer, train_tokenizer_bytes,
                                training_sentences)

VOCAB = 600


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    texts = [gopher_text(i, 200) for i in range(40)]
    texts.append("Numbers 2024 and 1999, prices $3.50, code x_1 = y[2] + 10; URL https://example.org/a?b=c.")
    texts.append("Indented\n    four spaces\n\ttab  and  double  spaces")
    return texts


@pytest.fixture(scope="module")
def model_path(corpus, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
    train_tokenizer(corpus, path, VOCAB)
    return path


@pytest.fixture(scope="module")
def tok(model_path) -> Tokenizer:
    return Tokenizer(model_path)


def test_training_is_deterministic(corpus, model_path, tmp_path):
    again = tmp_path / "again.model"
    train_tokenizer(iter(corpus), str(again), VOCAB)  # a one-shot iterator works as well as a list
    first = open(model_path, "rb").read()
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(first).hexdigest()
    assert train_tokenizer_bytes(corpus, VOCAB) == first
    # A different sample gives a different model (the comparison above is not vacuous).
    assert train_tokenizer_bytes(corpus[1:], VOCAB) != first
    # And a fresh interpreter (no state shared with this one) writes the same bytes.
    fresh = tmp_path / "fresh.model"
    code = ("import json, sys; from pipeline.tokenizer import train_tokenizer; "
            f"train_tokenizer(json.load(sys.stdin), {str(fresh)!r}, {VOCAB})")
    subprocess.run([sys.executable, "-c", code], input=json.dumps(corpus), text=True, check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert fresh.read_bytes() == first


def test_llama2_settings(tok, model_path):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    assert tok.vocab_size == VOCAB == sp.get_piece_size()
    assert (tok.unk_id, tok.bos_id, tok.eos_id, sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    # 256 byte-fallback pieces right after the specials, as in Llama-2's model.
    assert all(sp.is_byte(i) for i in range(3, 259)) and sp.id_to_piece(3) == "<0x00>"
    # Digits are split: every digit is its own piece, whatever the training text held.
    pieces = sp.encode("in 2024", out_type=str)
    assert pieces[-4:] == ["2", "0", "2", "4"]
    # Dummy prefix on, identity normalization, whitespace kept: the first piece starts with "▁", and runs of
    # spaces, tabs and newlines survive a round trip.
    assert sp.encode("river", out_type=str)[0].startswith("▁")
    text = "  two  spaces\n\tand a tab\n\nParagraph "
    assert tok.decode(tok.encode(text)) == text
    # No BOS/EOS from encode; the document sequence appends EOS only.
    doc = tok.encode_document("The river ran.")
    assert doc.dtype == np.int32 and doc[-1] == tok.eos_id and tok.bos_id not in doc
    assert doc[:-1].tolist() == tok.encode("The river ran.") == sp.encode("The river ran.")


@pytest.mark.parametrize("text", [
    "emoji 😀🚀 and flags 🇫🇷",
    "control \x01\x02\x7f\x1b[0m chars",
    "漢字とカタカナ、한국어, Ελληνικά, עברית, العربية",
    "math ∑∫√∞ ≠ ≤ and combining e\u0301 vs é",
    "\u200bzero width\u200d joiner \ufeff",
])
def test_byte_fallback_encodes_anything_without_unk(tok, text):
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text
    doc = tok.encode_document(text)
    assert tok.decode(doc) == text  # EOS decodes to nothing


def test_too_small_vocab_says_how_to_fix(corpus):
    with pytest.raises(ValueError, match=r"too small.*Raise --vocab-size to at least \d+"):
        train_tokenizer_bytes(corpus, 270)
    with pytest.raises(ValueError, match="above 259"):
        train_tokenizer_bytes(corpus, 100)
    with pytest.raises(ValueError, match=r"too large.*Lower --vocab-size to at most \d+"):
        train_tokenizer_bytes(corpus[:2], 5000)
    with pytest.raises(ValueError, match="no text to train"):
        train_tokenizer_bytes(["", "  \n "], 500)


def test_bad_model_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        Tokenizer(str(tmp_path / "missing.model"))
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match="junk.model is not a SentencePiece model"):
        Tokenizer(str(junk))


def test_tokenizer_pickles_for_beam_workers(tok):
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.model_proto == tok.model_proto
    assert copy.encode("The village by the river.") == tok.encode("The village by the river.")


def test_training_sentences_are_lines_cut_below_the_limit():
    text = "short line\n\n   \n" + "word " * 100 + "\n" + "x" * 250
    sentences = list(training_sentences([text], 64))
    assert sentences[0] == "short line"
    assert all(0 < len(s) <= 64 for s in sentences)
    assert "".join(sentences[1:]) == ("word " * 100) + "x" * 250
    # Cuts fall at the start of a run of spaces, so every piece after the first starts with a space.
    assert all(s.startswith(" ") for s in sentences[2:-4])


def test_a_long_single_line_trains_fine(corpus):
    one_line = " ".join(corpus).replace("\n", " ")  # ~50k characters in one line
    model = train_tokenizer_bytes([one_line], 500, max_sentence_chars=1024)
    assert Tokenizer.from_bytes(model).encode(corpus[0][:200])


def test_chunked_encoding_matches_whole_document_encoding(tok, model_path):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    rng = random.Random(3)
    words = " ".join(gopher_text(9, 500).split()).split(" ")
    # ~100k characters with single, double and triple spaces, newlines and tabs between words.
    seps = [" ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", " \n "]
    text = "".join(rng.choice(words) + rng.choice(seps) for _ in range(15_000))
    assert len(text) > 5 * ENCODE_CHUNK_CHARS
    assert len(split_text(text, ENCODE_CHUNK_CHARS)) > 5
    assert tok.encode(text) == sp.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_space_free_runs_are_cut_hard_and_still_round_trip(tok):
    text = "prefix " + "".join(random.Random(4).choice("abcxyz😀") for _ in range(3 * ENCODE_CHUNK_CHARS + 7))
    pieces = split_text(text, ENCODE_CHUNK_CHARS)
    assert "".join(pieces) == text and max(map(len, pieces)) <= ENCODE_CHUNK_CHARS
    assert tok.decode(tok.encode(text)) == text
    assert tok.unk_id not in tok.encode(text)


class _RecordingEncoder:
    """Wraps a SentencePieceProcessor and records the length of every text it is asked to encode."""

    def __init__(self, sp, lengths: list[int]):
        self._sp, self._lengths = sp, lengths

    def encode(self, text):
        self._lengths.append(len(text))
        return self._sp.encode(text)

    def __getattr__(self, name):
        return getattr(self._sp, name)


def test_encode_document_work_is_linear(tok, monkeypatch):
    """Linear by construction, checked by counting instead of timing: SentencePiece sees every character of a
    1 MB one-line document exactly once, in pieces of at most ENCODE_CHUNK_CHARS (so its superlinear cost on
    long lines is paid per bounded piece), and finding the cuts copies each character at most twice more.
    Whole-line encoding would be one 1 MB call; cutting with ``text[start:]`` would copy ~30 MB. The speed
    itself is measured in benchmarks/bench_filters.py."""
    lengths: list[int] = []
    monkeypatch.setattr(tok, "_sp", _RecordingEncoder(tok._sp, lengths))
    monkeypatch.setattr(tok, "_continuation", _RecordingEncoder(tok._continuation, lengths))
    rng = random.Random(5)
    vocabulary = gopher_text(6, 2000).split()
    for size in (ENCODE_CHUNK_CHARS, 1_000_000):
        lengths.clear()
        text = CountingText(" ".join(rng.choices(vocabulary, k=size // 5))[:size])
        assert len(text) == size
        ids = tok.encode_document(text)
        assert sum(lengths) == size and max(lengths) <= ENCODE_CHUNK_CHARS, (size, max(lengths))
        assert len(lengths) <= 2 * size // ENCODE_CHUNK_CHARS + 1
        assert text.touched <= 2 * size + len(lengths), (size, text.touched)
        assert ids.dtype == np.int32 and ids[-1] == tok.eos_id
        assert tok.decode(ids) == text


def test_encode_document_memory_is_a_few_bytes_per_character(tok):
    """Ids go chunk by chunk into int32 arrays: a 2 MB document's ~0.5M ids never sit in one Python list
    (which alone would take ~36 bytes per id, ~18 MB)."""
    text = " ".join(random.Random(8).choices(gopher_text(7, 2000).split(), k=330_000))[:2_000_000]
    tracemalloc.start()
    try:
        ids = tok.encode_document(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * 4 * len(ids), (peak, len(ids))  # the result (4 bytes per id) and its parts, ~2x
    assert ids[:-1].tolist() == tok.encode(text)
