"""Weighted blends of several data sources: which source, and which of its samples, blended sample i reads.

Semantics are Megatron's (megatron.core.datasets.helpers.build_blending_indices): weights are shares of
samples; sample i goes to the source whose count lags its share the most, ``argmax_d(w_d * max(i, 1) - c_d)``
with ties to the lowest index, where ``c_d`` counts the samples source d received before i. So over any prefix
each source's count stays within about one sample of its share.

Megatron computes that index for the whole run up front (a C++ loop over every sample). Here a sample's source
is a pure function of (weights, i), computed in O(1) per sample after O(PERIOD x sources) set-up, so every rank
computes its own part of any step without communication and a resume seeks to any step at the cost of step 0:

* Weights are quantized to multiples of 1/PERIOD (PERIOD = 2**16), largest remainder first so that they sum to
  exactly 1. Then every lag ``w_d * i - c_d`` is exact in float64 (a 16-bit dyadic fraction times an integer),
  and the greedy is exactly periodic: after the first period every source has received exactly its n_d = w_d * PERIOD
  samples (checked when the index is built), so at sample PERIOD every lag is 0 again and the steps from there on
  repeat one fixed period.
* The first period differs from the later ones only because Megatron uses ``max(i, 1)`` (sample 0 goes to the
  heaviest source); both periods are replayed once, here, with the same arithmetic as Megatron's loop.

For the quantized weights the index is identical to megatron-core's (tests/test_blend.py). Against Megatron run
with the unquantized weights, the shares differ by at most 2**-17 each, and so can the order of a few samples.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from launch.data import WINDOW_BLOCK, open_split
from pipeline.manifest import data_identity, load_manifest

PERIOD = 1 << 16  # weights are multiples of 1/PERIOD; the index repeats every PERIOD samples after the first


def quantize_weights(weights: list[float]) -> np.ndarray:
    """Samples per period of each source (int64, summing to PERIOD), from positive weights of any scale.

    Largest remainder rounding of ``weights / sum(weights) * PERIOD``; ties by source order. Raises ValueError
    naming the source for a weight that is not a positive finite number, or so small that it rounds to 0.
    """
    if len(weights) == 0:
        raise ValueError("a blend needs at least one source")
    for i, w in enumerate(weights):
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
            raise ValueError(f"source {i}: weight {w!r} must be a positive finite number")
    w = np.asarray(weights, dtype=np.float64)
    raw = w / w.sum() * PERIOD
    counts = np.floor(raw).astype(np.int64)
    rest = PERIOD - int(counts.sum())
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    for i in np.flatnonzero(counts == 0):
        raise ValueError(f"source {i}: weight {weights[i]!r} is under 1/{PERIOD} of the total and would never be "
                         "sampled; raise it or drop the source")
    return counts


def _replay(weights: list[float], start: int) -> tuple[np.ndarray, list[int]]:
    """Megatron's greedy over samples start .. start+PERIOD-1 from zero counts: (source per sample, counts)."""
    n = len(weights)
    counts = [0] * n
    out = np.empty(PERIOD, dtype=np.int64)
    for k in range(PERIOD):
        # Later periods: the lag at i = PERIOD*q + k is w*i - (q*n + c) = w*k - c, exactly (dyadic w).
        x = float(max(k, 1)) if start == 0 else float(k)
        best, best_err = 0, weights[0] * x - counts[0]
        for d in range(1, n):
            err = weights[d] * x - counts[d]
            if err > best_err:
                best, best_err = d, err
        out[k] = best
        counts[best] += 1
    return out, counts


def _ranks(sources: np.ndarray, n: int) -> np.ndarray:
    """For each position, how many earlier positions hold the same source (int64)."""
    ranks = np.empty_like(sources)
    for d in range(n):
        where = np.flatnonzero(sources == d)
        ranks[where] = np.arange(len(where))
    return ranks


class BlendIndex:
    """(source, sample within the source) of any blended sample index, in O(1) per sample.

    ``per_period[d]`` is source d's samples in every PERIOD consecutive samples (from sample 0 or from any
    multiple of PERIOD); ``weights`` are the quantized shares actually used (per_period / PERIOD).
    """

    def __init__(self, weights: list[float]):
        self.per_period = quantize_weights(weights)
        self.weights = [float(c) / PERIOD for c in self.per_period]  # exact dyadic fractions summing to 1.0
        n = len(self.weights)
        self._first, first_counts = _replay(self.weights, 0)
        if first_counts != self.per_period.tolist():  # the periodicity that every later sample relies on
            raise RuntimeError(f"blend of weights {self.weights}: the first period gave counts {first_counts}, not "
                               f"{self.per_period.tolist()}; the index would not repeat")
        self._steady, steady_counts = _replay(self.weights, PERIOD)
        if steady_counts != self.per_period.tolist():
            raise RuntimeError(f"blend of weights {self.weights}: a period gave counts {steady_counts}, not "
                               f"{self.per_period.tolist()}")
        self._first_rank = _ranks(self._first, n)
        self._steady_rank = _ranks(self._steady, n)

    def __call__(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(source, sample within the source) for an int array of blended sample indices (same shape, int64)."""
        i = np.asarray(indices, dtype=np.int64)
        low = int(i.min()) if i.size else PERIOD
        if low < 0:
            raise ValueError("blended sample indices must be >= 0")
        if low >= PERIOD:  # every sample past the first period: the common case, in fewer numpy calls
            period, pos = np.divmod(i - PERIOD, PERIOD)
            source = self._steady[pos]
            return source, (period + 1) * self.per_period[source] + self._steady_rank[pos]
        first = i < PERIOD
        period, pos = np.divmod(np.maximum(i - PERIOD, 0), PERIOD)
        source = np.where(first, self._first[np.minimum(i, PERIOD - 1)], self._steady[pos])
        within = np.where(first, self._first_rank[np.minimum(i, PERIOD - 1)],
                          (period + 1) * self.per_period[source] + self._steady_rank[pos])
        return source, within

    def counts_before(self, index: int) -> np.ndarray:
        """Samples each source has given to blended samples ``[0, index)`` (int64, one per source)."""
        n = len(self.weights)
        if index <= PERIOD:
            return np.bincount(self._first[:index], minlength=n).astype(np.int64)
        period, pos = divmod(index - PERIOD, PERIOD)
        return (period + 1) * self.per_period + np.bincount(self._steady[:pos], minlength=n)


# ----------------------------------------------------------------------------------------- sources of a run

@dataclass(frozen=True)
class Source:
    """One prepared data directory of a blend: its path, its weight (any positive scale) and its name in logs."""

    path: str
    weight: float
    name: str


def _source_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or path


def parse_data_arg(text: str) -> Source:
    """``--data [WEIGHT:]PATH`` -> Source (weight 1 when absent; the name is the directory's base name)."""
    weight_text, sep, path = text.partition(":")
    if not sep or os.path.exists(text):  # a path that itself holds ":" and exists wins
        return Source(text, 1.0, _source_name(text))
    try:
        weight = float(weight_text)
    except ValueError:
        raise ValueError(f"--data {text!r}: {weight_text!r} is not a number; write --data WEIGHT:PATH, e.g. "
                         "--data 0.7:data/web") from None
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"--data {text!r}: the weight must be a positive number, got {weight_text}")
    return Source(path, weight, _source_name(path))


def sources_from_config(entries, where: str) -> list[Source]:
    """The run config's ``data`` list of {"path", "weight", "name"} (weight default 1, name the base name)."""
    if not isinstance(entries, list):
        raise ValueError(f"{where}: data must be a list of {{\"path\", \"weight\", \"name\"}} objects")
    sources = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(f"{where}: data[{i}] must be an object with a \"path\" (and optionally \"weight\", "
                             f"\"name\"), got {entry!r}")
        unknown = sorted(set(entry) - {"path", "weight", "name"})
        if unknown:
            raise ValueError(f"{where}: data[{i}] has unknown keys {unknown}; use path, weight, name")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight)
                                                                                    and weight > 0):
            raise ValueError(f"{where}: data[{i}] ({entry['path']}): weight must be a positive number, got {weight!r}")
        name = entry.get("name", _source_name(entry["path"]))
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: data[{i}] ({entry['path']}): name must be a non-empty string")
        sources.append(Source(entry["path"], float(weight), name))
    return sources


def check_sources(sources: list[Source]) -> list[Source]:
    """At least one source, and names that tell them apart in metrics; returns ``sources``."""
    if not sources:
        raise ValueError("no training data: pass --data DIR (or --data WEIGHT:DIR, repeated for a blend), or set "
                         "\"data\" in the run config")
    seen: dict[str, str] = {}
    for s in sources:
        if s.name in seen:
            raise ValueError(f"data sources {seen[s.name]} and {s.path} are both named {s.name!r}; give them "
                             "distinct names (\"name\" in the run config's data list)")
        seen[s.name] = s.path
    return sources


def source_seed(seed: int, index: int) -> int:
    """The shuffle seed of source ``index``: the run's own for the first (a one-source run keeps its order), a
    well-spread derived one for the others, so sources never share a permutation."""
    if index == 0:
        return seed
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) & ((1 << 63) - 1)
    return x ^ (x >> 29)


class BlendedStream:
    """Samples drawn from several SampleStreams at their weights: a pure function of (sources, weights, seq_len,
    seed, sample index), like one SampleStream, so rank_batch and RankLoader use it unchanged.

    Blended sample i reads sample ``j`` of source ``d`` (BlendIndex); a source's own stream shuffles its windows
    per epoch, so a source smaller than its share repeats, each epoch in a new order.
    """

    def __init__(self, streams: list, weights: list[float], names: list[str]):
        if not len(streams) == len(weights) == len(names) >= 1:
            raise ValueError("a blend needs one weight and one name per stream")
        lengths = {s.seq_len for s in streams}
        if len(lengths) != 1:
            raise ValueError(f"the sources' streams have different seq_len {sorted(lengths)}")
        self.streams, self.names = list(streams), list(names)
        self.index = BlendIndex(weights)
        self.seq_len = streams[0].seq_len
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # block -> (source, window) (_block)

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, packed window within that source) of blended samples [block * WINDOW_BLOCK, next block),
        kept for reuse: consecutive steps read consecutive samples, so each source's stream is asked once per
        block instead of once per batch (numpy's per-call cost, not the arithmetic, dominates a small batch)."""
        table = self._blocks.get(block)
        if table is None:
            if len(self._blocks) >= 4:  # a loader is in one or two blocks at a time
                self._blocks.clear()
            source, within = self.index(np.arange(block * WINDOW_BLOCK, (block + 1) * WINDOW_BLOCK, dtype=np.int64))
            windows = np.empty_like(within)
            for d, stream in enumerate(self.streams):
                rows = source == d
                if rows.any():
                    windows[rows] = stream.window_indices(within[rows])
            table = self._blocks[block] = (source, windows)
        return table

    def samples(self, indices) -> np.ndarray:
        """Many samples at once: int64 array (len(indices), seq_len + 1), each read straight from its source."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and int(idx.min()) < 0:
            raise ValueError("blended sample indices must be >= 0")
        blocks, offsets = np.divmod(idx, WINDOW_BLOCK)
        source, windows = np.empty_like(idx), np.empty_like(idx)
        for block in np.unique(blocks).tolist():
            sel = blocks == block
            table_source, table_windows = self._block(block)
            source[sel], windows[sel] = table_source[offsets[sel]], table_windows[offsets[sel]]
        out = np.empty((len(idx), self.seq_len + 1), dtype=np.int64)
        streams = self.streams
        for row, (d, k) in enumerate(zip(source.tolist(), windows.tolist())):
            out[row] = streams[d].window(k)
        return out

    def sample(self, index: int) -> np.ndarray:
        return self.samples([index])[0]

    def drop_caches(self) -> None:
        """Forget cached blocks here and in every source (what a freshly started process has)."""
        self._blocks.clear()
        for stream in self.streams:
            stream.drop_caches()

    def tokens_before(self, samples: int) -> dict[str, int]:
        """Tokens (targets) each source has given to the first ``samples`` blended samples."""
        counts = self.index.counts_before(samples)
        return {name: int(c) * self.seq_len for name, c in zip(self.names, counts)}

    def epochs_before(self, samples: int) -> dict[str, float]:
        """Passes over each source's windows that the first ``samples`` blended samples make."""
        counts = self.index.counts_before(samples)
        return {name: int(c) / s.samples_per_epoch for name, c, s in zip(self.names, counts, self.streams)}

    def __repr__(self) -> str:
        parts = ", ".join(f"{n} {w:.4f}" for n, w in zip(self.names, self.index.weights))
        return f"BlendedStream({parts}; seq_len={self.seq_len})"


# ------------------------------------------------------------------------------------- opening a run's data

def load_manifests(sources: list[Source]) -> list[dict]:
    """Each source's manifest; all must share one tokenizer (its sha256), else an error naming the source."""
    manifests = []
    for s in sources:
        try:
            manifests.append(load_manifest(s.path))
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"data source {s.name!r} ({s.path}): {e}") from e
    first = manifests[0]["tokenizer"]["sha256"]
    for s, m in zip(sources[1:], manifests[1:]):
        if m["tokenizer"]["sha256"] != first:
            raise ValueError(
                f"data source {s.name!r} ({s.path}) was prepared with another tokenizer (sha256 "
                f"{m['tokenizer']['sha256'][:12]}...) than {sources[0].name!r} ({first[:12]}...); every source of a "
                "blend must use the same one: prepare it again with --tokenizer "
                f"{os.path.join(sources[0].path, manifests[0]['tokenizer']['path'])}")
    return manifests


def open_blend(sources: list[Source], split: str, seq_len: int, seed: int, model_vocab_size: int):
    """The stream of ``split`` over the sources: a SampleStream for one source (exactly the one-directory run), a
    BlendedStream for several. Errors name the source."""
    streams = []
    for i, s in enumerate(sources):
        try:
            streams.append(open_split(s.path, split, seq_len, source_seed(seed, i), model_vocab_size))
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"data source {s.name!r} ({s.path}): {e}") from e
    if len(streams) == 1:
        return streams[0]
    return BlendedStream(streams, [s.weight for s in sources], [s.name for s in sources])


def blend_identity(sources: list[Source], manifests: list[dict]) -> str:
    """What makes two runs' training data the same: one source's data identity, or, for a blend, every
    source's name, quantized weight and data identity, in order."""
    if len(sources) == 1:
        return data_identity(manifests[0])
    per_period = quantize_weights([s.weight for s in sources]).tolist()
    parts = [[s.name, n, data_identity(m)] for s, n, m in zip(sources, per_period, manifests)]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()
