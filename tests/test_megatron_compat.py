"""Our shards against Megatron-LM's own indexed dataset code (megatron.core.datasets.indexed_dataset).

Megatron reads what pipeline.prepare writes (every kept document, in order, exactly its encode_document
ids), and we read what Megatron's IndexedDatasetBuilder writes; for the same sequences the files are equal
byte for byte.

    python -m pytest tests/test_megatron_compat.py -q
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from references import require  # noqa: E402
require("apache_beam")
torch = require("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Transformer Engine and Apex are not installed": irrelevant to the reader
    indexed_dataset = require("megatron.core.datasets.indexed_dataset")

from pipeline.shards import ShardReader, write_shard  # noqa: E402
from pipeline.split import assign_shard  # noqa: E402
from pipeline.tokenizer import Tokenizer  # noqa: E402


def test_megatron_reads_our_shards(prepared):
    out, manifest, kept = prepared["out"], prepared["manifest"], prepared["kept"]
    tok = Tokenizer(os.path.join(out, "tokenizer.model"))
    total = 0
    for shard in manifest["shards"]:
        split, index = shard["split"], int(shard["path"].split("-")[1])
        keys = sorted(k for k in kept if assign_shard(k, 0.15, 3, 1) == (split, index))
        ds = indexed_dataset.IndexedDataset(os.path.join(out, shard["path"]))
        assert len(ds) == len(keys) > 0, shard["path"]
        assert ds.index.dtype == np.uint16  # vocab 400 < 65500
        np.testing.assert_array_equal(ds.document_indices, np.arange(len(keys) + 1))
        for i, key in enumerate(keys):
            expected = tok.encode_document(kept[key])
            assert ds[i].tolist() == expected.tolist(), (shard["path"], key)
            assert ds.sequence_lengths[i] == len(expected)
            assert ds.get(i, offset=1, length=3).tolist() == expected[1:4].tolist()  # partial reads agree too
        assert int(ds.sequence_lengths.sum()) == shard["tokens"]
        total += len(ds)
    assert total == len(kept)


@pytest.mark.parametrize("vocab_size,dtype", [(400, np.uint16), (70_000, np.int32)])
def test_we_read_megatron_builder_output_and_write_the_same_bytes(tmp_path, vocab_size, dtype):
    rng = np.random.default_rng(vocab_size)
    sequences = [np.append(rng.integers(3, vocab_size, size=int(n)), 2) for n in rng.integers(0, 50, size=20)]
    theirs = str(tmp_path / "megatron")
    builder = indexed_dataset.IndexedDatasetBuilder(theirs + ".bin", dtype=dtype)
    for seq in sequences:
        builder.add_item(torch.from_numpy(seq.astype(np.int64)))
        builder.end_document()
    builder.finalize(theirs + ".idx")

    reader = ShardReader(theirs)
    assert reader.dtype == dtype and len(reader) == len(sequences)
    for i, seq in enumerate(sequences):
        assert reader[i].tolist() == seq.tolist()
    assert reader.num_tokens == sum(len(s) for s in sequences)
    assert reader.tokens().tolist() == np.concatenate(sequences).tolist()

    ours = str(tmp_path / "ours")
    write_shard(ours, sequences, vocab_size)
    for ext in (".bin", ".idx"):
        with open(ours + ext, "rb") as a, open(theirs + ext, "rb") as b:
            assert a.read() == b.read(), ext
