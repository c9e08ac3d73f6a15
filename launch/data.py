"""The training data stream: packed fixed-length samples over token shards, shuffled, rank-aware, resumable.

A sample is a pure function of (shards, seq_len, seed, global sample index), so every rank computes its own
part of a global batch without communication, and resuming at step k costs the same as starting: O(1), no
replay, no permutation array in memory (a 100B-token corpus has ~50M windows at seq_len 2048).

Packing. The split's shards, in manifest order, form one virtual token stream (every document already ends
in EOS). Window k is ``stream[k*seq_len : k*seq_len + seq_len + 1]``: consecutive windows overlap by one token,
so every token after the first is a target exactly once per epoch. ``samples_per_epoch = (tokens - 1) // seq_len``;
the tail that does not fill a window is not used.

Shuffling. Global sample index i belongs to epoch ``e = i // samples_per_epoch`` and reads window
``perm_e(i % samples_per_epoch)``, where ``perm_e`` is a keyed pseudo-random permutation of
``[0, samples_per_epoch)``: a Feistel network over the next power of two (at most twice the window count), keyed
by (seed, epoch), with cycle walking to stay inside the range. Each lookup costs a few dozen integer operations.

Ranks. Optimizer step s reads global samples ``[s*global_batch, (s+1)*global_batch)``; rank r takes the
contiguous ``global_batch // world_size`` samples starting at ``s*global_batch + r*global_batch // world_size``
and splits them into micro-batches in order. A world-size change with the same global batch therefore sees the
same global batches.

Peek at a prepared data directory's first training batch::

    python -m launch.data --data DIR --seq-len 256 --seed 0 --steps 1
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from launch.processes import EXIT_USAGE
from pipeline.manifest import load_manifest, shard_prefixes
from pipeline.shards import ShardReader, dtype_for_vocab

_MASK64 = (1 << 64) - 1
WINDOW_BLOCK = 4096  # positions of an epoch whose shuffled windows are computed together (SampleStream._window_block)
_FEISTEL_ROUNDS = 6  # Luby-Rackoff: 4 rounds already give a strong PRP; 6 leave margin for a cheap round function


def _splitmix64(x: int) -> int:
    """SplitMix64 step on a Python int: derives well-spread 64-bit round keys from (seed, epoch, round)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on a uint64 array (wrapping multiplication is intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A keyed bijection of ``[0, n)`` evaluated per element in O(1) time and memory.

    An unbalanced Feistel network permutes ``[0, 2**bits)`` with ``2**bits >= n`` (at most 2n, so cycle
    walking takes < 2 extra rounds on average): values that land outside ``[0, n)`` are encrypted again until
    they land inside, which restricts a permutation of the larger domain to a permutation of ``[0, n)``.
    """

    def __init__(self, n: int, seed: int, epoch: int):
        assert n >= 1, f"cannot permute an empty range (n={n})"
        self.n = n
        # At least 2 bits so that n = 2 is shuffled too (a 1-bit Feistel network is the identity).
        self.bits = max(2, (n - 1).bit_length())
        base = _splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64))
        self.keys = [np.uint64(_splitmix64(base ^ r)) for r in range(_FEISTEL_ROUNDS)]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        # The state is (L, R) with widths (wl, wr), wl + wr = bits. A round maps it to (R, L ^ F(R)) whose
        # widths are (wr, wl): invertible because R is kept, so every round is a bijection of [0, 2**bits).
        wl, wr = self.bits // 2, self.bits - self.bits // 2
        for key in self.keys:
            left, right = x >> np.uint64(wr), x & np.uint64((1 << wr) - 1)
            f = _mix(right ^ key) & np.uint64((1 << wl) - 1)
            x = (right << np.uint64(wl)) | (left ^ f)
            wl, wr = wr, wl
        return x

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        """Map an int array of positions in ``[0, n)`` to their shuffled positions (same shape, int64)."""
        x = np.asarray(indices, dtype=np.int64)
        assert x.size == 0 or (int(x.min()) >= 0 and int(x.max()) < self.n), f"positions outside [0, {self.n})"
        y = self._encrypt(x.astype(np.uint64).ravel())
        outside = np.flatnonzero(y >= np.uint64(self.n))
        while outside.size:  # cycle walking; terminates because x itself lies on the cycle inside [0, n)
            y[outside] = self._encrypt(y[outside])
            outside = outside[y[outside] >= np.uint64(self.n)]
        return y.astype(np.int64).reshape(x.shape)


class SampleStream:
    """Packed fixed-length samples: a pure function of (shards, seq_len, seed, global sample index).

    ``vocab_size`` (optional) makes every sample check its largest token id against the model's vocabulary,
    which costs one pass over seq_len tokens and turns a corrupt or foreign shard into a clear error instead
    of an out-of-range embedding lookup.
    """

    def __init__(self, shard_prefixes: list[str], seq_len: int, seed: int, vocab_size: int | None = None):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if not shard_prefixes:
            raise ValueError("SampleStream needs at least one shard prefix")
        self.shard_prefixes = list(shard_prefixes)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.vocab_size = vocab_size
        self.readers = [ShardReader(p) for p in self.shard_prefixes]
        self._tokens = [r.tokens() for r in self.readers]
        counts = np.array([r.num_tokens for r in self.readers], dtype=np.int64)
        # starts[i] = position of shard i's first token in the virtual stream; starts[-1] = total tokens.
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.total_tokens = int(self.starts[-1])
        self.samples_per_epoch = (self.total_tokens - 1) // self.seq_len if self.total_tokens else 0
        if self.samples_per_epoch < 1:
            raise ValueError(
                f"{len(self.readers)} shard(s) starting at {self.shard_prefixes[0]} hold {self.total_tokens} tokens, "
                f"fewer than one sample of seq_len + 1 = {self.seq_len + 1} tokens; prepare more data or lower seq_len"
            )
        self._perms: dict[int, FeistelPermutation] = {}
        self._blocks: dict[tuple[int, int], np.ndarray] = {}  # (epoch, block) -> window indices (_window_block)

    def _perm(self, epoch: int) -> FeistelPermutation:
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) > 8:  # a loader touches one or two epochs at a time
                self._perms.clear()
            perm = self._perms[epoch] = FeistelPermutation(self.samples_per_epoch, self.seed, epoch)
        return perm

    def _window_block(self, epoch: int, block: int) -> np.ndarray:
        """Window indices of positions [block * WINDOW_BLOCK, (block + 1) * WINDOW_BLOCK) of ``epoch`` (fewer at
        the epoch's end), kept for reuse.

        Consecutive steps read consecutive samples, so one permutation call per block instead of one per batch:
        numpy's per-call cost, not the arithmetic, dominates a small batch (a blend asks each source in turn).
        Blocks never cross an epoch, so every block costs one permutation call wherever a run resumes.
        """
        key = (epoch, block)
        table = self._blocks.get(key)
        if table is None:
            if len(self._blocks) >= 4:  # a loader (train or val, each rank) is in one or two blocks at a time
                self._blocks.clear()
            start = block * WINDOW_BLOCK
            positions = np.arange(start, min(start + WINDOW_BLOCK, self.samples_per_epoch), dtype=np.int64)
            table = self._blocks[key] = self._perm(epoch)(positions)
        return table

    def drop_caches(self) -> None:
        """Forget cached permutations and window blocks (what a freshly started process has)."""
        self._perms.clear()
        self._blocks.clear()

    def window_indices(self, indices) -> np.ndarray:
        """Global sample indices (int array) -> packed window indices in ``[0, samples_per_epoch)``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return idx.copy()
        if int(idx.min()) < 0:
            raise IndexError(f"sample indices must be >= 0, got {int(idx.min())}")
        epochs, positions = np.divmod(idx.ravel(), self.samples_per_epoch)
        blocks, offsets = np.divmod(positions, WINDOW_BLOCK)
        keys = epochs * (self.samples_per_epoch // WINDOW_BLOCK + 1) + blocks  # one int per (epoch, block)
        if int(keys.min()) == int(keys.max()):
            return self._window_block(int(epochs[0]), int(blocks[0]))[offsets].reshape(idx.shape)
        out = np.empty_like(keys)
        for key in np.unique(keys):
            sel = keys == key
            first = int(np.flatnonzero(sel)[0])
            out[sel] = self._window_block(int(epochs[first]), int(blocks[first]))[offsets[sel]]
        return out.reshape(idx.shape)

    def window(self, k: int) -> np.ndarray:
        """Unshuffled window k of the packed stream: int64 (seq_len + 1,), read across shard boundaries."""
        assert 0 <= k < self.samples_per_epoch, f"window {k} outside [0, {self.samples_per_epoch})"
        start = k * self.seq_len
        end = start + self.seq_len + 1
        # The last shard whose first token is <= start ('right' skips empty shards that start at the same place).
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        local = start - int(self.starts[shard])
        if end <= self.starts[shard + 1]:
            out = self._tokens[shard][local : local + self.seq_len + 1].astype(np.int64)
        else:
            pieces, need = [], self.seq_len + 1
            while need:
                piece = self._tokens[shard][local : local + need]
                pieces.append(piece)
                need -= len(piece)
                shard, local = shard + 1, 0
            out = np.concatenate(pieces).astype(np.int64)
        if self.vocab_size is not None and int(out.max()) >= self.vocab_size:
            raise ValueError(
                f"window {k} (tokens {start}..{end} of the stream over {self.shard_prefixes[0]} ...) holds token id "
                f"{int(out.max())} >= the model's vocab_size {self.vocab_size}; the shards were made with another "
                "tokenizer: re-prepare the data or set the model's vocab_size >= the tokenizer's"
            )
        return out

    def samples(self, indices) -> np.ndarray:
        """Many samples at once: int64 array (len(indices), seq_len + 1), vectorized shuffling."""
        windows = self.window_indices(indices)
        out = np.empty((len(windows), self.seq_len + 1), dtype=np.int64)
        for row, k in enumerate(windows.tolist()):
            out[row] = self.window(k)
        return out

    def sample(self, index: int) -> np.ndarray:
        """Global sample ``index`` (any epoch): int64 (seq_len + 1,); inputs = s[:-1], targets = s[1:]."""
        return self.samples([index])[0]

    def __repr__(self) -> str:
        return (
            f"SampleStream({len(self.readers)} shards, {self.total_tokens} tokens, seq_len={self.seq_len}, "
            f"seed={self.seed}, samples_per_epoch={self.samples_per_epoch})"
        )


def samples_per_rank(global_batch: int, micro_batch: int, world_size: int, where: str = "the run config") -> int:
    """Samples each rank takes per optimizer step, global_batch / world_size; ValueError naming valid choices when
    the ranks' micro-batches do not tile the global batch (the one check of it: TrainConfig.accumulation uses it)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if global_batch < 1 or micro_batch < 1:
        raise ValueError(f"{where}: global_batch ({global_batch}) and micro_batch ({micro_batch}) must be >= 1")
    per_rank, rem = divmod(global_batch, world_size)
    if rem or per_rank % micro_batch:
        good_micro = [m for m in range(1, per_rank + 1) if per_rank % m == 0] if not rem else []
        unit = micro_batch * world_size
        lower = (global_batch // unit) * unit
        good_global = sorted({g for g in (lower, lower + unit) if g > 0})
        hint = f"micro_batch in {good_micro} or " if good_micro else ""
        raise ValueError(
            f"{where}: global_batch={global_batch} is not micro_batch={micro_batch} x world size {world_size} x a "
            f"whole number of accumulation steps. Set {hint}global_batch to a multiple of {unit} "
            f"(e.g. {' or '.join(map(str, good_global))})"
        )
    return per_rank


def _check_rank(rank: int, world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")


def rank_batch(
    stream: SampleStream, step: int, global_batch: int, micro_batch: int, rank: int, world_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches of optimizer step ``step`` (0-based): [(inputs, targets)], each (micro_batch, seq_len) int64.

    Global batch ``step`` is global samples [step*global_batch, (step+1)*global_batch); rank r takes the
    contiguous slice of global_batch // world_size samples at offset r * global_batch // world_size.
    """
    per_rank = samples_per_rank(global_batch, micro_batch, world_size)
    _check_rank(rank, world_size)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    first = step * global_batch + rank * per_rank
    batch = stream.samples(np.arange(first, first + per_rank, dtype=np.int64))  # (per_rank, seq_len + 1)
    inputs = torch.from_numpy(np.ascontiguousarray(batch[:, :-1]))  # (per_rank, seq_len)
    targets = torch.from_numpy(np.ascontiguousarray(batch[:, 1:]))  # (per_rank, seq_len)
    return [
        (inputs[i : i + micro_batch], targets[i : i + micro_batch]) for i in range(0, per_rank, micro_batch)
    ]


class RankLoader:
    """Endless iterator over optimizer steps from ``start_step``: yields (step, rank_batch(...)).

    Seeking is O(1): step k's batch is computed from k directly. Resume from a checkpoint with
    ``start_step = consumed_samples // global_batch``.
    """

    def __init__(
        self, stream: SampleStream, global_batch: int, micro_batch: int, rank: int, world_size: int, start_step: int
    ):
        samples_per_rank(global_batch, micro_batch, world_size)
        _check_rank(rank, world_size)
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.stream = stream
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.rank, self.world_size = rank, world_size
        self.start_step = start_step

    def __iter__(self):
        step = self.start_step
        while True:
            yield step, rank_batch(self.stream, step, self.global_batch, self.micro_batch, self.rank, self.world_size)
            step += 1


def open_split(data_dir: str, split: str, seq_len: int, seed: int, model_vocab_size: int) -> SampleStream:
    """The SampleStream of one split of a prepared data directory, checked against the model's vocabulary.

    Checks (all O(1) per shard): the tokenizer's vocab_size in the manifest fits the model; each shard's dtype is
    the one data preparation picks for that vocabulary (a foreign or mismatched shard would not be); each shard
    holds the token count the manifest lists. Every sample's largest id is then checked as it is read.
    """
    manifest = load_manifest(data_dir)
    data_vocab = int(manifest["tokenizer"]["vocab_size"])
    if data_vocab > model_vocab_size:
        raise ValueError(
            f"{data_dir}: the data's tokenizer has vocab_size {data_vocab} but the model's vocab_size is "
            f"{model_vocab_size}; token ids up to {data_vocab - 1} would index past the embedding. "
            f"Set the model's vocab_size >= {data_vocab} (e.g. --set model.vocab_size={data_vocab}) or prepare the "
            "data with a smaller tokenizer"
        )
    prefixes = shard_prefixes(manifest, data_dir, split)
    entries = [s for s in manifest["shards"] if s["split"] == split]
    expected_dtype = dtype_for_vocab(data_vocab)
    _check_shards(prefixes, entries, expected_dtype, data_dir, data_vocab, seq_len, split)
    return SampleStream(prefixes, seq_len, seed, vocab_size=model_vocab_size)


def _check_shards(prefixes, entries, expected_dtype, data_dir, data_vocab, seq_len, split) -> None:
    """Per-shard O(1) checks before the stream opens; raises ValueError naming the shard and the fix."""
    total = 0
    for prefix, entry in zip(prefixes, entries):
        reader = ShardReader(prefix)
        if reader.dtype != expected_dtype:
            raise ValueError(
                f"{reader.idx_path}: tokens are stored as {reader.dtype}, but a tokenizer of vocab_size {data_vocab} "
                f"(manifest of {data_dir}) gives {expected_dtype} shards; the shard and the manifest come from "
                "different preparation runs: re-run `python -m pipeline.prepare` into a fresh directory"
            )
        if reader.num_tokens != int(entry["tokens"]):
            raise ValueError(
                f"{reader.bin_path}: {reader.num_tokens} tokens, but {os.path.join(data_dir, 'manifest.json')} lists "
                f"{entry['tokens']}; the shard was replaced after preparation: copy the data directory again"
            )
        total += reader.num_tokens
    if total < seq_len + 1:
        raise ValueError(
            f"{data_dir}: the {split!r} split holds {total} tokens, fewer than one sample of seq_len + 1 = "
            f"{seq_len + 1} tokens; prepare more data or lower seq_len"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print the first batches of a prepared data directory's stream.")
    parser.add_argument("--data", required=True, help="prepared data directory (holds manifest.json)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--global-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--start-step", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        vocab = int(load_manifest(args.data)["tokenizer"]["vocab_size"])
        stream = open_split(args.data, args.split, args.seq_len, args.seed, vocab)
        loader = RankLoader(stream, args.global_batch, args.global_batch, 0, 1, args.start_step)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(stream)
    for (step, [(inputs, _)]), _ in zip(loader, range(args.steps)):
        for row in inputs.tolist():
            print(f"step {step}: {row[:16]}{' ...' if len(row) > 16 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
