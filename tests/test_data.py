"""The training sample stream: packing across shards, the shuffle permutation, rank slicing, O(1) resume, errors.

The reference for every sample is the plain concatenation of the documents the shards were written from.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from launch.data import FeistelPermutation, RankLoader, SampleStream, open_split, rank_batch
from pipeline.manifest import write_manifest
from pipeline.shards import write_shard

EOS = 2


def make_docs(rng, n_docs, vocab=100, max_len=40):
    """Documents of random ids in [3, vocab) with EOS appended, as the data preparation writes them."""
    return [np.append(rng.integers(3, vocab, size=int(rng.integers(0, max_len))), EOS) for _ in range(n_docs)]


def make_data_dir(root, shard_docs, vocab_size=100, val_docs=None, manifest_vocab=None):
    """A prepared data directory: one train shard per list in shard_docs, a val shard, manifest.json."""
    shards = []
    for split, groups in (("train", shard_docs), ("val", [val_docs or [[5, 6, EOS]] * 8])):
        for i, docs in enumerate(groups):
            rel = f"{split}/shard-{i:05d}-of-{len(groups):05d}"
            shards.append({"split": split, "path": rel, **write_shard(os.path.join(root, rel), docs, vocab_size)})
    n_docs = sum(s["documents"] for s in shards)
    manifest = {
        "documents": {"read": n_docs, "kept": n_docs, "rejected": {}},
        "tokens": {sp: sum(s["tokens"] for s in shards if s["split"] == sp) for sp in ("train", "val")},
        "tokenizer": {"path": "tokenizer.model", "vocab_size": manifest_vocab or vocab_size, "eos_id": EOS,
                      "sha256": "0" * 64},
        "shards": shards,
        "config": {},
    }
    write_manifest(str(root), manifest)
    return str(root)


@pytest.fixture
def corpus(tmp_path):
    """Four train shards (one empty, one shorter than a window) and the reference concatenated stream."""
    rng = np.random.default_rng(0)
    groups = [make_docs(rng, 30), [], [np.array([7, 8, EOS])], make_docs(rng, 25)]
    data_dir = make_data_dir(tmp_path, groups)
    flat = np.concatenate([d for g in groups for d in g]).astype(np.int64)
    return data_dir, flat


def test_windows_across_shard_boundaries_equal_the_concatenated_stream(corpus):
    data_dir, flat = corpus
    seq_len = 16
    stream = open_split(data_dir, "train", seq_len, seed=0, model_vocab_size=100)
    assert stream.total_tokens == len(flat)
    assert stream.samples_per_epoch == (len(flat) - 1) // seq_len
    shards_spanned = []
    for k in range(stream.samples_per_epoch):
        start = k * seq_len
        expected = flat[start : start + seq_len + 1]
        np.testing.assert_array_equal(stream.window(k), expected)
        first, last = np.searchsorted(stream.starts, [start, start + seq_len], "right") - 1
        shards_spanned.append(int(last - first) + 1)
    # The fixture must exercise a window over shard 0, the empty shard 1, the 3-token shard 2 and shard 3.
    assert max(shards_spanned) == 4
    # Shuffled samples are exactly those windows, and every token after the first is a target once per epoch.
    n = stream.samples_per_epoch
    samples = stream.samples(np.arange(n))
    windows = stream.window_indices(np.arange(n))
    for row, k in zip(samples, windows):
        np.testing.assert_array_equal(row, flat[k * seq_len : k * seq_len + seq_len + 1])
    target_positions = np.sort((windows[:, None] * seq_len + np.arange(1, seq_len + 1)).ravel())
    np.testing.assert_array_equal(target_positions, np.arange(1, n * seq_len + 1))
    assert samples.dtype == np.int64 and samples.shape == (n, seq_len + 1)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 100, 1000, 4097])
def test_feistel_is_a_permutation(n):
    for seed, epoch in ((0, 0), (1, 0), (0, 1), (-7, 12345)):
        y = FeistelPermutation(n, seed, epoch)(np.arange(n))
        np.testing.assert_array_equal(np.sort(y), np.arange(n))


def test_every_window_once_per_epoch_and_epochs_differ(corpus):
    data_dir, _ = corpus
    stream = open_split(data_dir, "train", 4, seed=3, model_vocab_size=100)
    n = stream.samples_per_epoch
    assert n > 100
    orders = []
    for epoch in range(3):
        w = stream.window_indices(np.arange(epoch * n, (epoch + 1) * n))
        np.testing.assert_array_equal(np.sort(w), np.arange(n))
        orders.append(w)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    # A shuffle, not a near-identity: few fixed points, consecutive indices land far apart.
    assert (orders[0] == np.arange(n)).sum() < 10
    assert np.median(np.abs(np.diff(orders[0]))) > n / 10
    # The seed changes the order; scalar and batched lookups agree.
    other = open_split(data_dir, "train", 4, seed=4, model_vocab_size=100).window_indices(np.arange(n))
    assert not np.array_equal(orders[0], other)
    for i in (0, 1, n - 1, n, 2 * n + 5):
        np.testing.assert_array_equal(stream.sample(i), stream.samples([i])[0])


def test_deterministic_across_instances_and_processes(corpus):
    data_dir, _ = corpus
    a = open_split(data_dir, "train", 8, seed=11, model_vocab_size=100)
    b = open_split(data_dir, "train", 8, seed=11, model_vocab_size=100)
    idx = np.array([0, 1, 7, 123, 10**9, 10**12 + 3])  # far indices cost the same: no state, no replay
    np.testing.assert_array_equal(a.samples(idx), b.samples(idx))
    code = (
        "import numpy as np, sys; from launch.data import open_split; "
        f"s = open_split({data_dir!r}, 'train', 8, 11, 100); "
        f"print(s.samples(np.array({idx.tolist()!r})).tolist())"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(a.samples(idx).tolist())


@pytest.mark.parametrize("micro_batch", [1, 2])
def test_rank_slices_tile_the_global_batch(corpus, micro_batch):
    data_dir, _ = corpus
    seq_len, global_batch = 8, 8
    stream = open_split(data_dir, "train", seq_len, seed=5, model_vocab_size=100)
    for step in (0, 1, 37):
        expected = stream.samples(np.arange(step * global_batch, (step + 1) * global_batch))
        for world_size in (1, 2, 4):
            inputs, targets = [], []
            for rank in range(world_size):
                mbs = rank_batch(stream, step, global_batch, micro_batch, rank, world_size)
                assert len(mbs) == global_batch // world_size // micro_batch
                for x, y in mbs:
                    assert x.shape == y.shape == (micro_batch, seq_len) and x.dtype == y.dtype == torch.int64
                    inputs.append(x)
                    targets.append(y)
            np.testing.assert_array_equal(torch.cat(inputs).numpy(), expected[:, :-1])
            np.testing.assert_array_equal(torch.cat(targets).numpy(), expected[:, 1:])


def test_loader_started_at_step_k_matches_loader_from_zero(corpus):
    data_dir, _ = corpus
    stream = open_split(data_dir, "train", 8, seed=9, model_vocab_size=100)
    global_batch = 12  # does not divide samples_per_epoch, so some step straddles an epoch boundary
    assert stream.samples_per_epoch % global_batch
    steps = stream.samples_per_epoch // global_batch + 3
    for rank in (0, 1):
        from_zero = [(s, b) for (s, b), _ in zip(RankLoader(stream, global_batch, 3, rank, 2, 0), range(steps))]
        for k in (1, steps // 2, steps - 1):
            s, batch = next(iter(RankLoader(stream, global_batch, 3, rank, 2, start_step=k)))
            assert s == from_zero[k][0] == k
            for (x, y), (x0, y0) in zip(batch, from_zero[k][1]):
                assert torch.equal(x, x0) and torch.equal(y, y0)


def test_batch_shape_errors(corpus):
    data_dir, _ = corpus
    stream = open_split(data_dir, "train", 8, seed=0, model_vocab_size=100)
    with pytest.raises(ValueError, match=r"global_batch=6 is not micro_batch=1 x world size 4.*multiple of 4 "
                                         r"\(e.g. 4 or 8\)"):
        rank_batch(stream, 0, 6, 1, 0, 4)
    with pytest.raises(ValueError, match=r"micro_batch in \[1, 2\] or global_batch to a multiple of 16"):
        RankLoader(stream, 8, 4, 0, 4, 0)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        rank_batch(stream, 0, 8, 1, 2, 2)


def test_vocab_mismatch_errors(tmp_path):
    rng = np.random.default_rng(1)
    docs = make_docs(rng, 20, vocab=300)
    data_dir = make_data_dir(tmp_path / "a", [docs], vocab_size=300)
    with pytest.raises(ValueError) as err:
        open_split(data_dir, "train", 8, 0, model_vocab_size=256)
    message = str(err.value)
    assert data_dir in message and "300" in message and "256" in message and "vocab_size >= 300" in message
    # A shard whose dtype does not belong to the manifest's vocabulary (int32 shards, uint16-sized vocab).
    mixed = make_data_dir(tmp_path / "b", [docs], vocab_size=70000, manifest_vocab=300)
    with pytest.raises(ValueError, match="int32.*different preparation runs"):
        open_split(mixed, "train", 8, 0, model_vocab_size=300)
    # A manifest that under-reports the vocabulary: caught on the first sample holding a too-large id.
    liar = make_data_dir(tmp_path / "c", [docs], vocab_size=300, manifest_vocab=200)
    stream = open_split(liar, "train", 8, 0, model_vocab_size=200)
    with pytest.raises(ValueError, match=r"holds token id \d+ >= the model's vocab_size 200"):
        stream.samples(np.arange(stream.samples_per_epoch))


def test_too_little_data_and_missing_split(tmp_path):
    data_dir = make_data_dir(tmp_path, [[[5, 6, EOS]], [[7, EOS]]])  # 5 train tokens
    stream = open_split(data_dir, "train", 4, 0, model_vocab_size=100)  # exactly one window of 5 tokens
    assert stream.samples_per_epoch == 1
    np.testing.assert_array_equal(stream.sample(3), [5, 6, EOS, 7, EOS])
    with pytest.raises(ValueError, match=r"5 tokens, fewer than one sample of seq_len \+ 1 = 6 tokens"):
        open_split(data_dir, "train", 5, 0, model_vocab_size=100)
    with pytest.raises(ValueError, match="no 'test' shards"):
        open_split(data_dir, "test", 4, 0, model_vocab_size=100)
    with pytest.raises(FileNotFoundError, match="pipeline.prepare"):
        open_split(str(tmp_path / "nowhere"), "train", 4, 0, model_vocab_size=100)
    with pytest.raises(ValueError, match="fewer than one sample"):
        SampleStream([os.path.join(data_dir, "train/shard-00000-of-00002")], 3, 0)
