"""SentencePiece BPE tokenizer with Llama-2's settings: training on a sample, and encoding with our EOS convention.

Settings (so Hugging Face's Llama tokenizer reproduces our ids): unk=0, bos=1, eos=2, no pad, byte fallback
(any text encodes without <unk>: unseen characters become <0xNN> byte pieces), digits split, identity
normalization, a dummy prefix space, whitespace kept as is, whitespace-only pieces allowed, character coverage
0.99995. A document's sequence is ``encode(text) + [eos_id]`` (no BOS).

Training input: each text is cut into lines, and lines longer than ``max_sentence_chars`` into pieces at
word boundaries (SentencePiece silently skips "sentences" over its byte limit, and slows down on long ones).
Sentences are streamed to the trainer from an iterator, never written to disk. With one thread and the fixed
random seed, the same sample gives a byte-identical model.

Encoding long documents: SentencePiece's BPE encoder holds tens of bytes of state per character of the whole
input, and its time on one long line grows faster than the line's length (benchmarks/RESULTS.md). Documents
longer than ``ENCODE_CHUNK_CHARS`` (16384) characters are encoded in chunks with this exact rule: a chunk ends
just before the last space that follows a non-space character within its first 16384 characters (the start of a
run of spaces, which is where SentencePiece's pieces begin), and every chunk after the first is encoded without
the dummy prefix. No piece crosses such a point (pieces are "▁word"-shaped), so the ids equal those of encoding
the whole document. Only a run of more than 16384 characters with no space in it is cut hard every 16384
characters; the ids there may differ from whole-document encoding, and decoding still returns the exact text.

Train one by hand:

    python -c "from pipeline.tokenizer import train_tokenizer; train_tokenizer(open('/etc/services'), '/tmp/t.model', 1000)"
"""
from __future__ import annotations

import io
import os
import re
from typing import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from pipeline.files import write_atomic

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# 3 special pieces + 256 byte-fallback pieces are always in the vocabulary; characters come on top.
RESERVED_PIECES = 3 + 256
ENCODE_CHUNK_CHARS = 16384
# The trainer's RNG is only used when it samples sentences; fixed anyway, so training is reproducible.
RANDOM_SEED = 20240229

_TRAINER_SETTINGS = dict(
    model_type="bpe",
    unk_id=UNK_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    pad_id=-1,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    character_coverage=0.99995,
    input_sentence_size=0,  # use every sentence given: sampling is the caller's job
    minloglevel=2,  # warnings and errors only
)

_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")
_TOO_LARGE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


def _cut_points(text: str, limit: int) -> Iterator[int]:
    """Ends of successive chunks of ``text`` of at most ``limit`` characters (the rule in the module docstring)."""
    start, n = 0, len(text)
    while n - start > limit:
        window = text[start:start + limit + 1]
        cut = 0
        space = window.rfind(" ", 1)
        if space > 0:
            cut = len(window[:space].rstrip(" "))  # start of the run of spaces holding that space
        if cut == 0:
            cut = limit  # no space after a non-space in reach: hard cut
        start += cut
        yield start
    yield n


def split_text(text: str, limit: int) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` characters at the starts of space runs (hard cuts if none)."""
    pieces, start = [], 0
    for end in _cut_points(text, limit):
        pieces.append(text[start:end])
        start = end
    return pieces


def training_sentences(texts: Iterable[str], max_sentence_chars: int) -> Iterator[str]:
    """The sentences the trainer sees: non-blank lines, long ones cut by :func:`split_text`."""
    for text in texts:
        for line in text.split("\n"):
            if line and not line.isspace():
                yield from split_text(line, max_sentence_chars)


def train_tokenizer_bytes(texts: Iterable[str], vocab_size: int, *, max_sentence_chars: int = 4096,
                          num_threads: int = 1) -> bytes:
    """Train the BPE model on ``texts`` and return the serialized model (the bytes of tokenizer.model)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= RESERVED_PIECES:
        raise ValueError(f"vocab_size={vocab_size!r}: use an integer above {RESERVED_PIECES} (3 special + 256 byte "
                         "pieces), e.g. --vocab-size 32000")
    if max_sentence_chars < 16:
        raise ValueError(f"max_sentence_chars={max_sentence_chars}: use at least 16 (default 4096)")
    spm.set_random_generator_seed(RANDOM_SEED)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_sentences(texts, max_sentence_chars),
            model_writer=model,
            vocab_size=vocab_size,
            num_threads=num_threads,
            # In UTF-8 bytes: a sentence of max_sentence_chars characters is at most 4 bytes each.
            max_sentence_length=4 * max_sentence_chars,
            **_TRAINER_SETTINGS,
        )
    except RuntimeError as e:
        message = str(e)
        if m := _TOO_SMALL.search(message):
            raise ValueError(
                f"vocab_size={vocab_size} is too small for this tokenizer sample: it needs at least {m.group(2)} "
                f"pieces ({RESERVED_PIECES} special and byte pieces + {int(m.group(2)) - RESERVED_PIECES} distinct "
                f"characters). Raise --vocab-size to at least {m.group(2)}.") from e
        if m := _TOO_LARGE.search(message):
            raise ValueError(
                f"vocab_size={vocab_size} is too large for this tokenizer sample: BPE can only build "
                f"{m.group(2)} pieces from it. Lower --vocab-size to at most {m.group(2)}, or train on more text "
                "(a larger tokenizer sample or more input).") from e
        if "sentences_.empty()" in message:
            raise ValueError("no text to train the tokenizer on: every document was empty or rejected. "
                             "Check --input and the filter options.") from e
        raise
    return model.getvalue()


def train_tokenizer(texts: Iterable[str], model_path: str, vocab_size: int, *, max_sentence_chars: int = 4096,
                    num_threads: int = 1) -> None:
    """Train the BPE model on ``texts`` and write it to the local file ``model_path`` all at once (pipeline.files)."""
    data = train_tokenizer_bytes(texts, vocab_size, max_sentence_chars=max_sentence_chars, num_threads=num_threads)
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    write_atomic(model_path, data)


# ---- a minimal protobuf walk, to switch off the dummy prefix in a model (protobuf's own module is not
# ---- needed; sentencepiece's generated one often clashes with the installed protobuf runtime).

def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _fields(buf: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start of the field's tag, end of the field) for each field of a message."""
    pos = 0
    while pos < len(buf):
        tag, p = _read_varint(buf, pos)
        wire = tag & 7
        if wire == 0:
            _, end = _read_varint(buf, p)
        elif wire == 1:
            end = p + 8
        elif wire == 2:
            length, p = _read_varint(buf, p)
            end = p + length
        elif wire == 5:
            end = p + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield tag >> 3, wire, pos, end
        pos = end


def without_dummy_prefix(model_proto: bytes) -> bytes:
    """The same model with NormalizerSpec.add_dummy_prefix (ModelProto field 3, its field 3) set to false."""
    out = bytearray()
    for number, wire, start, end in _fields(model_proto):
        if number == 3 and wire == 2:
            _, body_start = _read_varint(model_proto, _read_varint(model_proto, start)[1])
            body = model_proto[body_start:end]
            spec = bytearray()
            for n2, _, s2, e2 in _fields(body):
                if n2 != 3:
                    spec += body[s2:e2]
            spec += b"\x18\x00"  # field 3, varint: false
            out += _varint((3 << 3) | 2) + _varint(len(spec)) + spec
        else:
            out += model_proto[start:end]
    return bytes(out)


class Tokenizer:
    """A trained model: ids for text, a document's sequence (ids + EOS), text for ids."""

    def __init__(self, model_path: str):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"tokenizer model {model_path} does not exist: pass the tokenizer.model "
                                    "written by `python -m pipeline.prepare` (it sits in the data directory)")
        with open(model_path, "rb") as f:
            self._load(f.read(), model_path)

    @classmethod
    def from_bytes(cls, model_proto: bytes, name: str = "<bytes>") -> "Tokenizer":
        """A Tokenizer from a serialized model (e.g. read through Beam's FileSystems from gs://)."""
        self = cls.__new__(cls)
        self._load(bytes(model_proto), name)
        return self

    def _load(self, model_proto: bytes, name: str) -> None:
        self.model_path = name
        self._proto = model_proto
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
            self._continuation = spm.SentencePieceProcessor(model_proto=without_dummy_prefix(model_proto))
        except (RuntimeError, OSError, ValueError, IndexError) as e:
            raise ValueError(f"{name} is not a SentencePiece model ({e}): pass the tokenizer.model written by "
                             "`python -m pipeline.prepare`") from e
        self.vocab_size: int = self._sp.get_piece_size()
        self.eos_id: int = self._sp.eos_id()
        self.bos_id: int = self._sp.bos_id()
        self.unk_id: int = self._sp.unk_id()
        if self.eos_id < 0:
            raise ValueError(f"{name} has no EOS piece, which every document sequence ends with: train it with "
                             "pipeline.tokenizer.train_tokenizer (eos_id=2)")

    def __reduce__(self):  # picklable (Beam may serialize it): rebuilt from the model bytes
        return (Tokenizer.from_bytes, (self._proto, self.model_path))

    @property
    def model_proto(self) -> bytes:
        """The serialized model (the bytes of tokenizer.model)."""
        return self._proto

    def _id_parts(self, text: str) -> Iterator[list[int]]:
        """Ids of ``text``, chunk by chunk (the rule in the module docstring); one piece for short texts."""
        if len(text) <= ENCODE_CHUNK_CHARS:
            yield self._sp.encode(text)
            return
        start, sp = 0, self._sp
        for end in _cut_points(text, ENCODE_CHUNK_CHARS):
            yield sp.encode(text[start:end])
            start, sp = end, self._continuation

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS, no EOS); long texts in chunks, as the module docstring explains."""
        ids: list[int] = []
        for part in self._id_parts(text):
            ids.extend(part)
        return ids

    def encode_document(self, text: str) -> np.ndarray:
        """A document's sequence: ids of ``text`` followed by EOS, as int32 of shape (len + 1,).

        Chunk by chunk into int32 arrays: 4 bytes per id, where a Python list of ints takes several times that
        for a long document.
        """
        parts = [np.asarray(part, dtype=np.int32) for part in self._id_parts(text)]
        parts.append(np.array([self.eos_id], dtype=np.int32))
        return np.concatenate(parts)

    def decode(self, ids) -> str:
        """Text of ``ids`` (a list or array of ints); special pieces (EOS, BOS) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])
