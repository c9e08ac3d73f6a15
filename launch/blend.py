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

import math

import numpy as np

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
        if i.size and int(i.min()) < 0:
            raise ValueError("blended sample indices must be >= 0")
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
