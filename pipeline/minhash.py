"""MinHash signatures and LSH band keys for near-duplicate detection: pure functions (numpy, no Beam).

A document becomes a set of word n-grams ("shingles") of its normalized text; its signature is, for each of
``bands * rows`` random permutations of 64-bit shingle hashes, the smallest permuted hash. Two documents agree
on one signature entry with probability equal to the Jaccard similarity J of their shingle sets, so they
share at least one band (``rows`` consecutive entries, all equal) with probability 1 - (1 - J^rows)^bands:
with FineWeb's 14 bands of 8 rows, 0.92 at J = 0.8, 0.36 at J = 0.6, 0.01 at J = 0.4 (the curve's midpoint is
at J ~ (1/14)^(1/8) ~ 0.72). Documents that share a band key are candidate pairs (pipeline.near_dedup).

Normalization follows datatrove's ``simplify_text`` (the FineWeb pipeline) so that the same documents match:
lowercase, every run of digits (with an optional decimal part) -> "0", combining marks dropped after NFD
decomposition ("café" -> "cafe"), punctuation and symbols -> spaces, whitespace runs -> one space. Words
are the whitespace-separated tokens of that (datatrove splits English with spaCy, which on text without
punctuation splits at the same places but for a few contractions). A document with fewer words than
``ngram_size`` has no shingle and no signature: it is never a near duplicate (exact dedup still sees it).

Every hash is deterministic: blake2b for words and band keys, fixed 64-bit constants derived from ``seed``
with numpy's PCG64 for the permutations; never Python's ``hash()``, which differs between processes.

    python -c "from pipeline.minhash import *; c = NearDedupConfig(); print(band_keys(signature('a b c d e f', c), c))"
"""
from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from dataclasses import dataclass, field, fields
from functools import lru_cache

import numpy as np

NEAR_DUPLICATE = "near_duplicate"
REASONS: tuple[str, ...] = (NEAR_DUPLICATE,)

# Digits in any script (re's \d is Unicode's Nd for str patterns), with one decimal part: "3.14" -> "0".
_NUMBERS = re.compile(r"\d+(?:[.,\u060c\u066b\u2396\u2397\u2398]\d+)?")
# Anything that is neither a word character nor whitespace is punctuation or a symbol; "_" is a \w but
# punctuation all the same.
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_MIX = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's multiplier: a 64-bit odd constant with good avalanche
_CHUNK = 4096  # shingles permuted at a time: bounds the (chunk, hashes) uint64 array to 4096 * 112 * 8 = 3.7 MB
_WORD_CACHE = 1 << 18  # word hashes a process remembers (then it forgets them all)
_word_hashes: dict[str, int] = {}


def _help(help_text: str) -> dict:
    return {"help": help_text}


@dataclass(frozen=True)
class NearDedupConfig:
    """MinHash-LSH near-dedup parameters; defaults are FineWeb's (datatrove MinhashConfig: 5-grams, 14 x 8)."""

    ngram_size: int = field(default=5, metadata=_help("words per shingle (FineWeb: 5)"))
    bands: int = field(default=14, metadata=_help("LSH bands; documents sharing one band are candidates (FineWeb: 14)"))
    rows: int = field(default=8, metadata=_help("signature entries per band (FineWeb: 8); "
                                                  "bands x rows hash functions in all"))
    seed: int = field(default=1, metadata=_help("seed of the hash permutations (fixed, so runs agree)"))
    max_rounds: int = field(default=16, metadata=_help(
        "large-star/small-star clustering rounds run as Beam stages; the run fails if the clusters have not "
        "converged after them"))

    @property
    def num_hashes(self) -> int:
        return self.bands * self.rows

    def validate(self) -> None:
        """Raise ValueError naming the flag and the fix if a parameter is out of range."""
        limits = {"ngram_size": (1, 1000), "bands": (1, 255), "rows": (1, 1000), "seed": (0, 2**63 - 1),
                  "max_rounds": (1, 1000)}
        for f in fields(self):
            value, (low, high) = getattr(self, f.name), limits[f.name]
            flag = "--minhash-" + f.name.replace("_", "-")
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"near-dedup option {f.name} ({flag}) = {value!r}: use an integer in "
                                 f"[{low}, {high}]")


@lru_cache(maxsize=1)
def _combining_marks() -> dict[int, None]:
    """str.translate table deleting every combining mark (Unicode category Mn): built once per process."""
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) == "Mn"}


def normalize(text: str) -> str:
    """The text shingles are made of: lowercase, numbers -> "0", no combining marks, punctuation -> space,
    single spaces. Linear in len(text)."""
    text = _NUMBERS.sub("0", text.lower())
    if not text.isascii():
        text = unicodedata.normalize("NFD", text).translate(_combining_marks())
    return " ".join(_PUNCTUATION.sub(" ", text).split())


def words(text: str) -> list[str]:
    """The words of the normalized text."""
    return normalize(text).split()


def _word_hash_array(ws: list[str]) -> np.ndarray:
    """uint64 blake2b hashes of ``ws``; each distinct word is hashed once per process (up to _WORD_CACHE)."""
    hs = list(map(_word_hashes.get, ws))  # a loop in C: most words of a document were seen before
    if None in hs:
        if len(_word_hashes) >= _WORD_CACHE:  # only a bound on memory: the hashes do not depend on it
            _word_hashes.clear()
        for i, h in enumerate(hs):
            if h is None:
                word = ws[i]
                h = _word_hashes.get(word)
                if h is None:
                    digest = hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest()
                    h = _word_hashes[word] = int.from_bytes(digest, "little")
                hs[i] = h
    return np.array(hs, dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """A bijection of uint64 that spreads every input bit over the high bits (splitmix64's finalizer, halved)."""
    x = x ^ (x >> np.uint64(31))
    x = x * _MIX
    return x ^ (x >> np.uint64(29))


def shingles(text: str, ngram_size: int) -> np.ndarray:
    """uint64 hashes of the word ``ngram_size``-grams of the normalized text, shape (max(0, words - n + 1),).

    Each word is hashed once (blake2b); an n-gram's hash is a polynomial of its word hashes, mixed, so two
    n-grams get the same hash only if they have the same words in the same order (up to 64-bit collisions).
    """
    ws = words(text)
    count = len(ws) - ngram_size + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    w = _word_hash_array(ws)
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(ngram_size):  # h = (...(w0 * M + w1) * M + ...) + w_{n-1}, wrapping at 2^64
            h = h * _MIX + w[j:j + count]
        return _mix(h)


@lru_cache(maxsize=8)
def permutations(num_hashes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): ``num_hashes`` random odd multipliers and offsets, shape (1, num_hashes) each; permutation i maps
    x to mix(a_i * x + b_i mod 2^64), a bijection of the 64-bit hashes."""
    rng = np.random.Generator(np.random.PCG64(seed))
    a = rng.integers(0, 2**64, size=(1, num_hashes), dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, size=(1, num_hashes), dtype=np.uint64, endpoint=False)
    return a, b


def signature_of_shingles(sh: np.ndarray, cfg: NearDedupConfig) -> np.ndarray | None:
    """The MinHash signature, uint64 of shape (bands * rows,), of a shingle array; None when it is empty."""
    if sh.size == 0:
        return None
    a, b = permutations(cfg.num_hashes, cfg.seed)
    sig = np.full(cfg.num_hashes, np.iinfo(np.uint64).max, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, sh.size, _CHUNK):  # (chunk, 1) x (1, hashes) -> (chunk, hashes) -> min per column
            permuted = _mix(sh[start:start + _CHUNK, None] * a + b)
            np.minimum(sig, permuted.min(axis=0), out=sig)
    return sig


def signature(text: str, cfg: NearDedupConfig) -> np.ndarray | None:
    """The MinHash signature of a text (see signature_of_shingles); None when it has fewer words than n."""
    return signature_of_shingles(shingles(text, cfg.ngram_size), cfg)


def band_keys(sig: np.ndarray, cfg: NearDedupConfig, group: str = "") -> list[bytes]:
    """One 16-byte key per band: blake2b of (group, band index, the band's ``rows`` entries). Two documents of the
    same group share band i's key exactly when their signatures agree on all of band i's entries (up to 128-bit
    collisions); documents of different groups never share a key."""
    raw = sig.astype("<u8").tobytes()
    width, prefix = 8 * cfg.rows, group.encode("utf-8", "surrogatepass") + b"\x00"
    return [hashlib.blake2b(prefix + band.to_bytes(2, "little") + raw[band * width:(band + 1) * width],
                            digest_size=16).digest() for band in range(cfg.bands)]


def jaccard(a: str, b: str, ngram_size: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (what the signatures estimate): for tests and tuning."""
    x, y = set(shingles(a, ngram_size).tolist()), set(shingles(b, ngram_size).tolist())
    return len(x & y) / len(x | y) if x or y else 1.0
