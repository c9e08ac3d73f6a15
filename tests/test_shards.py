"""The shard format: round trips, the exact byte layout, and a clear error for every kind of damage."""
import io
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from pipeline.shards import (
    HEADER_BYTES,
    MAGIC,
    ShardError,
    ShardReader,
    ShardWriter,
    dtype_for_vocab,
    sha256_file,
    validate_shard,
    write_shard,
)

DOCS = [[5, 6, 7, 2], [2], [100, 200, 300, 400, 2], [65499, 2]]


@pytest.fixture
def shard(tmp_path):
    prefix = str(tmp_path / "train" / "shard-00000-of-00001")
    stats = write_shard(prefix, DOCS, vocab_size=65499)
    return prefix, stats


def test_round_trip_and_stats(shard):
    prefix, stats = shard
    reader = ShardReader(prefix)
    assert reader.dtype == np.uint16
    assert len(reader) == len(DOCS)
    assert [reader[i].tolist() for i in range(len(reader))] == DOCS
    assert reader[-1].tolist() == DOCS[-1]
    assert reader.tokens().tolist() == [t for d in DOCS for t in d]
    assert stats == {
        "documents": 4,
        "tokens": 12,
        "sha256_bin": sha256_file(prefix + ".bin"),
        "sha256_idx": sha256_file(prefix + ".idx"),
    }
    assert not [p for p in os.listdir(os.path.dirname(prefix)) if ".tmp-" in p]


def test_exact_byte_layout(shard):
    """The index is Megatron's layout byte for byte (checked field by field, not through our reader)."""
    prefix, _ = shard
    raw = open(prefix + ".idx", "rb").read()
    assert raw[:9] == MAGIC
    version, code, n, docs = struct.unpack("<QBQQ", raw[9:HEADER_BYTES])
    assert (version, code, n, docs) == (1, 8, 4, 5)
    body = raw[HEADER_BYTES:]
    sizes = np.frombuffer(body, "<i4", 4)
    pointers = np.frombuffer(body, "<i8", 4, offset=16)
    doc_idx = np.frombuffer(body, "<i8", 5, offset=48)
    assert sizes.tolist() == [4, 1, 5, 2]
    assert pointers.tolist() == [0, 8, 10, 20]  # bytes, uint16 tokens
    assert doc_idx.tolist() == [0, 1, 2, 3, 4]
    assert len(raw) == HEADER_BYTES + 16 + 32 + 40
    assert open(prefix + ".bin", "rb").read() == np.array([t for d in DOCS for t in d], "<u2").tobytes()


def test_dtype_choice_follows_megatron():
    assert dtype_for_vocab(32000) == np.uint16
    assert dtype_for_vocab(65499) == np.uint16
    assert dtype_for_vocab(65500) == np.int32
    assert dtype_for_vocab(128256) == np.int32
    with pytest.raises(ValueError, match="positive"):
        dtype_for_vocab(0)


def test_int32_shards_and_streaming_writer(tmp_path):
    bin_f, idx_f = io.BytesIO(), io.BytesIO()
    writer = ShardWriter(bin_f, idx_f, dtype_for_vocab(200_000))
    writer.add(np.array([150_000, 2], dtype=np.int64))
    writer.add([])
    stats = writer.close()
    prefix = str(tmp_path / "s")
    open(prefix + ".bin", "wb").write(bin_f.getvalue())
    open(prefix + ".idx", "wb").write(idx_f.getvalue())
    reader = validate_shard(prefix, stats["sha256_bin"], stats["sha256_idx"])
    assert reader.dtype == np.int32
    assert reader[0].tolist() == [150_000, 2] and reader[1].tolist() == []


def test_a_closed_writer_refuses_more_even_under_python_O():
    """After close() the index is written: a sequence added then would be in the .bin but not in the .idx. The
    check is not an assert, so ``python -O`` keeps it."""
    code = (
        "import io; from pipeline.shards import ShardWriter\n"
        "w = ShardWriter(io.BytesIO(), io.BytesIO(), 'uint16'); w.close()\n"
        "for call in (lambda: w.add([5, 2]), w.close):\n"
        "    try:\n        call()\n    except RuntimeError as e:\n        print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.splitlines() == [
        "refused: ShardWriter.add() after close(): the shard's index is already written",
        "refused: ShardWriter.close() called twice: the shard's index would be written twice"]


def test_writing_leaves_no_temporary_file_when_it_fails(tmp_path):
    with pytest.raises(ValueError, match="does not fit uint16"):
        write_shard(str(tmp_path / "s"), [[5, 2], [70_000]], vocab_size=32000)
    assert os.listdir(tmp_path) == []


def test_ids_that_do_not_fit_the_dtype_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not fit uint16"):
        write_shard(str(tmp_path / "s"), [[70_000]], vocab_size=32000)
    assert not os.path.exists(str(tmp_path / "s.idx"))


def test_empty_shard(tmp_path):
    prefix = str(tmp_path / "empty")
    stats = write_shard(prefix, [], vocab_size=100)
    reader = ShardReader(prefix)
    assert (len(reader), reader.num_tokens, stats["documents"]) == (0, 0, 0)


def _damage(prefix, name, fn):
    path = prefix + name
    data = bytearray(open(path, "rb").read())
    open(path, "wb").write(bytes(fn(data)))
    return path


@pytest.mark.parametrize(
    "name, damage, message",
    [
        (".idx", lambda d: b"NOTMEGAT\x00" + d[9:], "bad magic"),
        (".idx", lambda d: d[:9] + struct.pack("<Q", 2) + d[17:], "version 2"),
        (".idx", lambda d: d[:17] + b"\x09" + d[18:], "unknown dtype code 9"),
        (".idx", lambda d: d[:-3], "truncated or corrupt index"),
        (".idx", lambda d: d[:40], "truncated or corrupt index"),
        (".idx", lambda d: d[:10], "shorter than the 34-byte header"),
        (".bin", lambda d: d[:-2], "truncated"),
        (".bin", lambda d: d + b"\x00\x00", "trailing bytes"),
        # Second pointer moved past the end of the .bin.
        (".idx", lambda d: d[: HEADER_BYTES + 16 + 8] + struct.pack("<q", 10_000) + d[HEADER_BYTES + 32 :], "points to byte 10000"),
        (".idx", lambda d: d[: HEADER_BYTES] + struct.pack("<i", -1) + d[HEADER_BYTES + 4 :], "negative sequence size"),
    ],
)
def test_damage_gives_an_error_naming_the_file(shard, name, damage, message):
    prefix, _ = shard
    path = _damage(prefix, name, damage)
    with pytest.raises(ShardError, match=message) as info:
        ShardReader(prefix)
    assert os.path.basename(path) in str(info.value)


def test_checksum_mismatch_names_the_file(shard):
    prefix, stats = shard
    validate_shard(prefix, stats["sha256_bin"], stats["sha256_idx"])
    _damage(prefix, ".bin", lambda d: d[:-1] + bytes([d[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(ShardError, match=r"shard-00000-of-00001\.bin: sha256 .* does not match"):
        validate_shard(prefix, stats["sha256_bin"], stats["sha256_idx"])


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        ShardReader(str(tmp_path / "nope"))


def test_shards_module_imports_numpy_and_stdlib_only():
    code = (
        "import sys, pipeline.shards, pipeline.manifest;"
        "bad = [m for m in ('apache_beam', 'torch', 'sentencepiece', 'model', 'launch') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
