"""Tests of pipeline.minhash: normalization (against datatrove's), shingles, signatures, band keys, the config.

    python -m pytest tests/test_minhash.py -q
"""
from __future__ import annotations

import os
import random
import string
import subprocess
import sys

import numpy as np
import pytest

from pipeline.minhash import NearDedupConfig, band_keys, jaccard, normalize, shingles, signature, words

CFG = NearDedupConfig()


def random_words(rng: random.Random, n: int, vocab_size: int = 5000) -> list[str]:
    vocab = [f"w{''.join(rng.choice(string.ascii_lowercase) for _ in range(6))}" for _ in range(vocab_size)]
    return [rng.choice(vocab) for _ in range(n)]


def edited(ws: list[str], count: int, rng: random.Random) -> list[str]:
    """``ws`` with ``count`` words at random positions replaced by new ones."""
    out = list(ws)
    for i in rng.sample(range(len(out)), count):
        out[i] = "new" + "".join(rng.choice(string.ascii_lowercase) for _ in range(7))
    return out


@pytest.mark.parametrize("text", [
    "Hello, World! It's 3.14 o'clock.", "Café naïve résumé — «quoted» text", "snake_case and under_score",
    "Tabs\tand\nnewlines  here\r\n", "Page 1,234 of 5,678; chapter ٣", "日本語のテキスト、句読点。",
    "CAPITALS and MiXeD case", "a-b/c\\d (e) [f] {g}", "  leading and trailing  ",
])
def test_normalize_matches_datatrove(text):
    from references import require
    datatrove_text = require("datatrove.utils.text")
    assert normalize(text) == datatrove_text.simplify_text(text)


def test_normalize_drops_every_symbol():
    # A deliberate difference: datatrove keeps symbols missing from its punctuation list (©, °, emoji).
    assert normalize("© 2024 ° 50% off 😀 now") == "0 0 off now"


def test_shingles_are_word_ngrams():
    sh = shingles("a b c d e f", 5)
    assert sh.dtype == np.uint64 and sh.shape == (2,) and sh[0] != sh[1]
    assert shingles("A, b. C d E!", 5).tolist() == shingles("a b c d e", 5).tolist()
    assert shingles("a b c d", 5).size == 0
    # Same words in another order are another shingle.
    assert shingles("e d c b a", 5).tolist() != shingles("a b c d e", 5).tolist()
    assert words("Don't stop") == ["don", "t", "stop"]


def test_short_document_has_no_signature():
    assert signature("only four words here", CFG) is None
    assert signature("", CFG) is None
    assert signature("exactly five words are here", CFG).shape == (112,)


def test_signature_estimates_jaccard():
    rng = random.Random(1)
    errors = []
    for count in (5, 15, 40, 80):
        for _ in range(5):
            a = random_words(rng, 300)
            b = edited(a, count, rng)
            sa, sb = signature(" ".join(a), CFG), signature(" ".join(b), CFG)
            errors.append(float((sa == sb).mean()) - jaccard(" ".join(a), " ".join(b)))
    # Each estimate has a standard deviation of at most 0.05 (112 hashes); the mean error over 20 is ~0.01.
    assert abs(np.mean(errors)) < 0.03, errors
    assert max(abs(e) for e in errors) < 0.2, errors


def test_signature_is_deterministic_across_processes():
    """Never Python's hash(): two interpreters with different hash seeds give the same band keys."""
    code = ("from pipeline.minhash import *; c = NearDedupConfig(); "
            "print([k.hex() for k in band_keys(signature('the quick brown fox jumps over the lazy dog', c), c)])")
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1
    assert outs == {str([k.hex() for k in band_keys(signature("the quick brown fox jumps over the lazy dog", CFG),
                                                      CFG)]) + "\n"}


def test_band_keys_equal_exactly_when_bands_agree():
    rng = random.Random(2)
    sig = signature(" ".join(random_words(rng, 100)), CFG)
    keys = band_keys(sig, CFG)
    assert len(keys) == 14 and len(set(keys)) == 14 and all(len(k) == 16 for k in keys)
    other = sig.copy()
    other[3 * 8 + 5] ^= np.uint64(1)  # one entry of band 3
    changed = band_keys(other, CFG)
    assert [i for i in range(14) if keys[i] != changed[i]] == [3]
    # Another group never shares a key, even for the same signature.
    assert not set(band_keys(sig, CFG, "crawl-2")) & set(keys)
    # Another seed gives another signature.
    assert not np.array_equal(signature("a b c d e f g", NearDedupConfig(seed=2)), signature("a b c d e f g", CFG))


def test_lsh_candidates_follow_the_s_curve():
    """Pairs at Jaccard ~0.9 share a band key, pairs at ~0.3 do not (1 - (1 - J^8)^14: 0.9996 and 0.0009)."""
    rng = random.Random(3)
    near = far = 0
    for _ in range(20):
        a = random_words(rng, 300)
        b, c = edited(a, 4, rng), edited(a, 60, rng)
        ka = set(band_keys(signature(" ".join(a), CFG), CFG))
        near += bool(ka & set(band_keys(signature(" ".join(b), CFG), CFG)))
        far += bool(ka & set(band_keys(signature(" ".join(c), CFG), CFG)))
        assert jaccard(" ".join(a), " ".join(b)) > 0.85 and jaccard(" ".join(a), " ".join(c)) < 0.4
    assert near == 20 and far == 0


def test_long_document_signature_in_chunks():
    """More shingles than one chunk: the same signature as the minimum over the parts."""
    rng = random.Random(4)
    ws = random_words(rng, 10_000)
    sig = signature(" ".join(ws), CFG)
    first, second = signature(" ".join(ws[:5004]), CFG), signature(" ".join(ws[5000:]), CFG)
    assert np.array_equal(sig, np.minimum(first, second))


@pytest.mark.parametrize("field,value,flag", [
    ("ngram_size", 0, "--minhash-ngram-size"), ("bands", 0, "--minhash-bands"), ("rows", 1.5, "--minhash-rows"),
    ("seed", -1, "--minhash-seed"), ("max_rounds", 0, "--minhash-max-rounds"), ("bands", True, "--minhash-bands"),
])
def test_validate_names_the_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        NearDedupConfig(**{field: value}).validate()


def test_defaults_are_finewebs():
    from references import require
    minhash = require("datatrove.pipeline.dedup.minhash")
    theirs = minhash.MinhashConfig()
    assert (CFG.ngram_size, CFG.bands, CFG.rows) == (theirs.n_grams, theirs.num_buckets, theirs.hashes_per_bucket)
    assert theirs.hash_config.precision == 64 and CFG.num_hashes == 112
    CFG.validate()
