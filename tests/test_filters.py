"""Tests of pipeline.filters: one hand-built document per Gopher reason, every threshold option, linear cost.

    python -m pytest tests/test_filters.py -q
"""
from __future__ import annotations

import dataclasses
import random
import re

import pytest

from conftest import CountingText, gopher_text
from pipeline import filters
from pipeline.filters import FilterConfig, quality_reason, reject_reason, reject_reasons, repetition_reason

DEFAULT = FilterConfig()

# Distinct sentences with stop words and ordinary word lengths, to build lines and paragraphs from.
SENTENCES = [
    "The old miller walked to the river with a basket of bread.",
    "Children gathered near the bridge and waited for the evening train.",
    "A quiet rain fell over the village that whole autumn morning.",
    "Her brother had carried the letters across the narrow valley.",
    "Nobody remembered when the lantern in the tower first went dark.",
    "The teacher explained the story of the harbor to every student.",
    "Farmers brought copper pots and wooden chairs to the market square.",
    "In winter the forest path was covered with thick silver frost.",
    "They opened the library early so the travelers could rest inside.",
    "The painter mixed yellow and purple paint beside the kitchen window.",
    "Several neighbors noticed the strange music coming from the museum.",
    "Before dawn the sailors checked the ropes and the heavy anchor.",
    "A doctor from the city arrived to help the families with fever.",
    "The engineer drew careful plans for a stone wall near the station.",
    "During the summer festival people danced under golden paper lamps.",
    "My grandmother kept a diary of every storm that passed the coast.",
    "The writer finished the last chapter while thunder rolled outside.",
    "Curious foxes crept beneath the fence to steal eggs from the barn.",
    "Gentle waves returned the small boat to the sand after midnight.",
    "Between the two hills stood an ancient chapel with a broken bell.",
]
NO_STOP_WORDS = ("river mountain village people morning evening garden window kitchen table letter story music "
                 "teacher student market bridge forest winter summer autumn spring harbor station library museum "
                 "painter farmer doctor engineer sailor writer neighbor children family friend stranger traveler "
                 "walked carried opened noticed followed remembered explained returned gathered wondered finished "
                 "quietly slowly early later often never always together outside inside across around").split()

TWO_LETTER_WORDS = ["ox", "go", "up", "my", "we", "hi", "no", "so", "is", "on"]
SHORT_WORDS = ("the and that have with cat dog sun sky sea owl elk fox hen pig cow ant bee elm oak ash fig yam rye oat "
               "pea bean corn rice salt milk tea jam pie cake soup fish crab duck frog goat lamb mule deer hawk lark "
               "moth").split()


def lines(n: int, start: int = 0) -> list[str]:
    """n distinct lines: the sentences, numbered after the first pass so they stay distinct."""
    return [SENTENCES[i % len(SENTENCES)] if i < len(SENTENCES) else
            f"{SENTENCES[i % len(SENTENCES)][:-1]} in year {1800 + i}." for i in range(start, start + n)]


def passing_document() -> str:
    """Passes every rule with the defaults, yet holds one of everything each rule looks at: a '#', a bullet line,
    an ellipsis line, tokens without letters, a duplicated 13-word line that is also a duplicated paragraph (so
    every n-gram size from 1 to 13 repeats). Tightening any single threshold must reject it."""
    refrain = "The end of the story was written by the people of the village."
    body = gopher_text(0, 320).split("\n\n")
    paragraphs = body[:3] + [refrain] + body[3:6] + ["Item #4 was listed below:\n- " + SENTENCES[0],
                                                     "They waited and waited..."] + body[6:] + [refrain]
    return "\n\n".join(paragraphs)


def with_extra_tokens(text: str, token: str, per_word: float) -> str:
    """``text`` plus a line of ``token`` repeated ``per_word`` times its number of words (rounded up)."""
    return text + "\n" + " ".join([token] * (int(len(text.split()) * per_word) + 1))


def repetition_document(*paragraph_lines: list[str]) -> str:
    return "\n\n".join("\n".join(p) for p in paragraph_lines)


# One document per reason, each built to fail exactly that rule and pass every rule before it (reject_reason
# returns the first failing rule in REASONS order, so equality with the expected reason shows both).
CASES = {
    None: passing_document(),
    "too_few_words": "The river ran quietly past the old mill and the bakery.",
    "too_many_words": gopher_text(1, 100_020),
    "mean_word_length": " ".join(["it is to be or so"] * 10),  # 60 words of mean length 2
    "symbol_word_ratio": with_extra_tokens(gopher_text(2, 120), "#", 0.11),  # '#' tokens > 0.1 per word
    "bullet_lines": "\n".join("- " + s for s in lines(20)),  # every non-blank line a bullet
    "ellipsis_lines": "\n".join(s[:-1] + "..." if i % 5 < 2 else s for i, s in enumerate(lines(20))),  # 40%
    "alpha_words": with_extra_tokens(gopher_text(3, 120), "2024", 0.3),  # 1/1.3 = 0.77 of tokens with a letter
    "stop_words": " ".join(NO_STOP_WORDS[:60]) + ". The end.",  # one stop word
    # 12 lines, two of them occurring twice: 4/12 = 0.33 duplicated lines > 0.3
    "duplicate_lines": "\n".join(lines(8) + lines(2, 8) + lines(2, 8)),
    # 2 of 16 lines duplicated (0.125 <= 0.3), but they are long: > 20% of the line characters
    "duplicate_line_chars": "\n".join([" ".join(SENTENCES[:4])] * 2 + [" ".join(NO_STOP_WORDS[i:i + 2])
                                                                           for i in range(0, 28, 2)]),
    # 6 paragraphs, a one-line one twice: 2/6 = 0.33 duplicated paragraphs > 0.3, but 2/34 lines, few characters
    "duplicate_paragraphs": repetition_document(["Thanks."], lines(8, 0), lines(8, 8), lines(8, 16), lines(8, 24),
                                                ["Thanks."]),
    # 8 paragraphs: one of 10 two-letter lines occurring twice (2/8 <= 0.3 paragraphs; 20/67 <= 0.3 lines; line
    # characters 40/202 <= 0.2), but with the newlines inside it, it holds 58/261 > 0.2 of the paragraph characters
    "duplicate_paragraph_chars": repetition_document(TWO_LETTER_WORDS, *[SHORT_WORDS[i:i + 8] for i in range(0, 48, 8)],
                                                     TWO_LETTER_WORDS),
    # one line, no repeated sentence; "golden lantern" 40 times covers > 20% of the characters
    "top_ngram": " ".join(s + " golden lantern" * 2 for s in lines(20)),
    # one line of 20 distinct sentences, one 11-word sentence written 3 times: every 2/3/4-gram occurs at most
    # 3 times (under the top n-gram limits) but the duplicated 5-grams cover > 15% of the characters
    "duplicate_ngram": " ".join(lines(20) + [SENTENCES[2]] * 2),
}


def test_reasons_are_in_the_documented_order():
    """reject_reason returns the first failing rule in REASONS order; the module docstring is where a reader
    learns that order, so the two must agree (and every reason is a distinct counter name: rejected_<reason>)."""
    documented = re.findall(r"^    ([a-z_]+) {2,}", filters.__doc__, flags=re.MULTILINE)
    assert tuple(documented) == filters.REASONS
    assert len(set(filters.REASONS)) == len(filters.REASONS)


@pytest.mark.parametrize("reason", [None] + [r for r in filters.REASONS if r in CASES], ids=str)
def test_each_reason_on_a_hand_built_document(reason):
    text = CASES[reason]
    assert reject_reason(text, DEFAULT) == reason
    if reason in filters.REPETITION_REASONS:
        assert quality_reason(text, DEFAULT) is None and repetition_reason(text, DEFAULT) == reason
    if reason in filters.QUALITY_REASONS:
        assert quality_reason(text, DEFAULT) == reason


def test_every_reason_has_a_case():
    missing = [r for r in filters.REASONS if r not in CASES]
    assert missing == [], f"no test document for {missing}"


# For every threshold: a value that makes the passing document fail, and the reason it must then give.
TIGHTER = {
    "min_words": (1000, "too_few_words"),
    "max_words": (100, "too_many_words"),
    "min_mean_word_length": (6.0, "mean_word_length"),
    "max_mean_word_length": (4.0, "mean_word_length"),
    "max_symbol_word_ratio": (0.0, "symbol_word_ratio"),
    "min_stop_words": (10_000, "stop_words"),
    "max_bullet_lines_ratio": (0.0, "bullet_lines"),
    "max_ellipsis_lines_ratio": (0.0, "ellipsis_lines"),
    "min_alpha_words_ratio": (1.0, "alpha_words"),
    "max_duplicate_line_fraction": (0.0, "duplicate_lines"),
    "max_duplicate_line_char_fraction": (0.0, "duplicate_line_chars"),
    "max_duplicate_paragraph_fraction": (0.0, "duplicate_paragraphs"),
    "max_duplicate_paragraph_char_fraction": (0.0, "duplicate_paragraph_chars"),
    **{f"max_top_{n}gram_char_fraction": (0.0, "top_ngram") for n in (2, 3, 4)},
    **{f"max_duplicate_{n}gram_char_fraction": (0.0, "duplicate_ngram") for n in range(5, 11)},
}


def test_every_option_has_help_and_a_tightening_case():
    names = [f.name for f in dataclasses.fields(FilterConfig)]
    assert sorted(names) == sorted(TIGHTER)
    assert all(f.metadata.get("help") for f in dataclasses.fields(FilterConfig))


@pytest.mark.parametrize("name", sorted(TIGHTER))
def test_each_option_changes_the_outcome(name):
    value, reason = TIGHTER[name]
    text = CASES[None]
    assert reject_reason(text, DEFAULT) is None
    cfg = dataclasses.replace(DEFAULT, **{name: value})
    if name.startswith("min_") and name.endswith("_length"):
        cfg = dataclasses.replace(cfg, max_mean_word_length=max(cfg.max_mean_word_length, value))
    if name == "max_words":
        cfg = dataclasses.replace(cfg, min_words=0)
    cfg.validate()
    assert reject_reason(text, cfg) == reason


# Loosening the rule a case fails lets it through that rule (it may still fail a later one).
LOOSER = {
    "too_few_words": {"min_words": 5},
    "too_many_words": {"max_words": 200_000},
    "mean_word_length": {"min_mean_word_length": 1.0},
    "symbol_word_ratio": {"max_symbol_word_ratio": 0.2},
    "bullet_lines": {"max_bullet_lines_ratio": 1.0},
    "ellipsis_lines": {"max_ellipsis_lines_ratio": 0.5},
    "alpha_words": {"min_alpha_words_ratio": 0.7},
    "stop_words": {"min_stop_words": 1},
    "duplicate_lines": {"max_duplicate_line_fraction": 0.4},
    "duplicate_line_chars": {"max_duplicate_line_char_fraction": 0.8},
    "duplicate_paragraphs": {"max_duplicate_paragraph_fraction": 0.5},
    "duplicate_paragraph_chars": {"max_duplicate_paragraph_char_fraction": 0.5},
    "top_ngram": {"max_top_2gram_char_fraction": 0.5, "max_top_3gram_char_fraction": 0.5,
                  "max_top_4gram_char_fraction": 0.5},
    "duplicate_ngram": {"max_duplicate_5gram_char_fraction": 0.5, "max_duplicate_6gram_char_fraction": 0.5,
                        "max_duplicate_7gram_char_fraction": 0.5, "max_duplicate_8gram_char_fraction": 0.5,
                        "max_duplicate_9gram_char_fraction": 0.5, "max_duplicate_10gram_char_fraction": 0.5},
}


@pytest.mark.parametrize("reason", sorted(LOOSER))
def test_loosening_the_option_lets_the_document_past_that_rule(reason):
    cfg = dataclasses.replace(DEFAULT, **LOOSER[reason])
    cfg.validate()
    after = reject_reason(CASES[reason], cfg)
    assert after != reason
    assert after is None or filters.REASONS.index(after) > filters.REASONS.index(reason)


def test_definitions_by_hand():
    # Only the rule under test is active: the others are switched off (0 for minimums, 1 for fractions).
    only_5grams = dataclasses.replace(
        FilterConfig(**{f.name: (0 if f.name.startswith("min_") else 1.0) for f in dataclasses.fields(FilterConfig)
                        if f.name.endswith(("_ratio", "_fraction", "_words"))}),
        max_words=100, min_mean_word_length=0.0, max_mean_word_length=100.0)
    # Duplicated 5-grams: "alpha .. epsilon" twice, then "omega": the ten covered tokens count, omega does not.
    text = "alpha beta gamma delta epsilon alpha beta gamma delta epsilon omega"
    total = sum(map(len, text.split()))
    covered = total - len("omega")
    at = covered / total
    assert reject_reason(text, dataclasses.replace(only_5grams, max_duplicate_5gram_char_fraction=at - 1e-9)) \
        == "duplicate_ngram"
    assert reject_reason(text, dataclasses.replace(only_5grams, max_duplicate_5gram_char_fraction=at)) is None
    # Overlapping duplicated 5-grams are not double counted: 12 equal tokens cover exactly all characters (1.0).
    same = " ".join(["again"] * 12)
    assert reject_reason(same, dataclasses.replace(only_5grams, max_duplicate_5gram_char_fraction=0.999)) \
        == "duplicate_ngram"
    assert reject_reason(same, dataclasses.replace(only_5grams, max_duplicate_5gram_char_fraction=1.0)) is None
    # Top 2-gram: "to be" 3 times in 8 tokens covers its 6 tokens' characters once each.
    text = "to be or not to be to be"
    top = dataclasses.replace(only_5grams, max_top_2gram_char_fraction=12 / 17 - 1e-9)
    assert reject_reason(text, top) == "top_ngram"
    assert reject_reason(text, dataclasses.replace(top, max_top_2gram_char_fraction=12 / 17)) is None
    # Stop words are matched case-insensitively without punctuation; '#'-only tokens are not words.
    assert quality_reason("The, THE. (of) and! " + "river " * 60, dataclasses.replace(DEFAULT, min_stop_words=4)) \
        is None
    assert quality_reason("### " * 30 + "river " * 49, dataclasses.replace(
        DEFAULT, max_symbol_word_ratio=1.0, min_alpha_words_ratio=0.0)) == "too_few_words"


def _naive_ngram_reason(tokens: list[str], cfg: FilterConfig) -> set[str | None]:
    """The n-gram rules written out plainly (tuples, every n, no early exits): the outcomes they allow.

    A set, because the rules leave open which of several equally frequent, equally long top n-grams counts.
    """
    total = sum(map(len, tokens))

    def covered(starts, n):
        cover = set()
        for i in starts:
            cover.update(range(i, i + n))
        return sum(len(tokens[i]) for i in cover)

    for n in (2, 3, 4):
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        counts = {g: grams.count(g) for g in set(grams)}
        if not counts or max(counts.values()) < 2:
            return {None}
        top = max(counts.values())
        longest = max(sum(map(len, g)) for g, c in counts.items() if c == top)
        limit = getattr(cfg, f"max_top_{n}gram_char_fraction") * total
        outcomes = {covered([i for i, g in enumerate(grams) if g == best], n) > limit
                    for best, c in counts.items() if c == top and sum(map(len, best)) == longest}
        if outcomes == {True}:
            return {"top_ngram"}
        if outcomes == {True, False}:
            return {"top_ngram", None, "duplicate_ngram"}  # it depends on the tie-break: any outcome goes
    for n in range(5, 11):
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        dup = [i for i, g in enumerate(grams) if grams.count(g) > 1]
        if covered(dup, n) > getattr(cfg, f"max_duplicate_{n}gram_char_fraction") * total:
            return {"duplicate_ngram"}
    return {None}


NGRAM_WORDS = "river stone lamp cloud north amber quiet field harbor signal".split()
NO_LINE_RULES = {f.name: 1.0 for f in dataclasses.fields(FilterConfig) if "duplicate_line" in f.name
                 or "duplicate_paragraph" in f.name}
# Every quality rule switched off, so short random documents reach the n-gram rules.
NO_QUALITY = dataclasses.replace(DEFAULT, min_words=0, max_words=10**9, min_mean_word_length=0.0,
                                 max_mean_word_length=1e9, max_symbol_word_ratio=1.0, max_bullet_lines_ratio=1.0,
                                 max_ellipsis_lines_ratio=1.0, min_alpha_words_ratio=0.0, min_stop_words=0)


def random_ngram_tokens(rng: random.Random) -> list[str]:
    """5-72 tokens from a small vocabulary, half the time with a pasted repeat, so every n-gram rule fires somewhere."""
    tokens = [rng.choice(NGRAM_WORDS[:rng.randint(3, 10)]) + rng.choice(["", "", "s", ","])
              for _ in range(rng.randint(5, 60))]
    if rng.random() < 0.5:
        i, n = rng.randrange(len(tokens)), rng.randint(5, 12)
        tokens += tokens[i:i + n]
    return tokens


def random_ngram_limits(rng: random.Random) -> dict[str, float]:
    """Random n-gram limits, later ones sometimes looser than earlier ones (exercising the early exits)."""
    limits = {f"max_top_{n}gram_char_fraction": rng.uniform(0.05, 0.6) for n in (2, 3, 4)}
    limits.update({f"max_duplicate_{n}gram_char_fraction": rng.uniform(0.05, 0.6) for n in range(5, 11)})
    return limits


def test_ngram_rules_match_a_plain_reference_on_random_documents():
    rng = random.Random(7)
    seen = set()
    for _ in range(400):
        tokens, limits = random_ngram_tokens(rng), random_ngram_limits(rng)
        cfg = dataclasses.replace(DEFAULT, **NO_LINE_RULES, **limits)
        got = repetition_reason(" ".join(tokens), cfg)
        allowed = _naive_ngram_reason(tokens, cfg)
        assert got in allowed, (tokens, limits, got, allowed)
        seen.add(got)
    assert seen == {None, "top_ngram", "duplicate_ngram"}


def test_batched_ngram_rules_match_the_plain_reference():
    # Random documents judged 25 at a time by reject_reasons (one numpy pass over the batch): documents of a
    # batch share arrays, so a position or label leaking across documents would show here.
    rng = random.Random(11)
    seen = set()
    for _ in range(16):
        limits = random_ngram_limits(rng)
        cfg = dataclasses.replace(NO_QUALITY, **NO_LINE_RULES, **limits)
        docs = [random_ngram_tokens(rng) for _ in range(25)]
        got = reject_reasons([" ".join(t) for t in docs], cfg)
        for tokens, reason in zip(docs, got):
            assert reason in _naive_ngram_reason(tokens, cfg), (tokens, limits, reason)
            assert reason == repetition_reason(" ".join(tokens), cfg)
        seen.update(got)
    assert seen == {None, "top_ngram", "duplicate_ngram"}


def test_batch_gives_the_same_reasons_as_one_document_at_a_time(make_text):
    # Every hand-built case (the too_many_words one is over 1 MiB, so it takes the streamed path inside the
    # batch), blank and tiny texts, and real-looking documents, under the default limits and every tightened
    # and loosened one: reject_reasons must agree with reject_reason document by document, in any order.
    texts = list(CASES.values()) + ["", "   \n\n ", "one", passing_document(), make_text(2000)]
    texts += [gopher_text(seed, 120) for seed in range(10)]
    configs = [DEFAULT, NO_QUALITY] + [dataclasses.replace(DEFAULT, **LOOSER[r]) for r in sorted(LOOSER)]
    for name, (value, _) in sorted(TIGHTER.items()):
        cfg = dataclasses.replace(DEFAULT, **{name: value})
        if name.startswith("min_") and name.endswith("_length"):
            cfg = dataclasses.replace(cfg, max_mean_word_length=max(cfg.max_mean_word_length, value))
        if name == "max_words":
            cfg = dataclasses.replace(cfg, min_words=0)
        configs.append(cfg)
    outcomes = set()
    for cfg in configs:
        one_by_one = [reject_reason(t, cfg) for t in texts]
        assert reject_reasons(texts, cfg) == one_by_one, cfg
        assert reject_reasons(texts[::-1], cfg) == one_by_one[::-1], cfg
        outcomes.update(one_by_one)
    assert outcomes >= set(filters.REASONS) | {None}
    assert reject_reasons([], DEFAULT) == []
    # The streamed form: batches of a few documents (and of one, and of everything) give the same reasons.
    expected = [reject_reason(t, DEFAULT) for t in texts]
    for batch_chars in (1, 5000, 10**9):
        assert list(filters.iter_reject_reasons(iter(texts), DEFAULT, batch_chars)) == expected, batch_chars
    assert list(filters.iter_reject_reasons([], DEFAULT)) == []


@pytest.mark.parametrize("name, value, fragment", [
    ("min_words", -1, "min_words (--min-words)"),
    ("max_symbol_word_ratio", 1.5, "is a fraction"),
    ("max_top_2gram_char_fraction", float("nan"), "max_top_2gram_char_fraction"),
    ("min_stop_words", 2.5, "integer"),
])
def test_validate_names_the_option(name, value, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(DEFAULT, **{name: value}).validate()
    with pytest.raises(ValueError, match="--min-words <= --max-words"):
        FilterConfig(min_words=10, max_words=5).validate()


def _one_line(rng: random.Random, chars: int, vocabulary: list[str]) -> str:
    return " ".join(rng.choices(vocabulary, k=chars // 5))[:chars]


def test_a_huge_document_over_max_words_is_judged_from_its_first_chunk(monkeypatch):
    """With the default max_words a 20 MB one-line document costs what a 1 MiB one does: the quality pass reads
    one ~1 MiB chunk, finds too_many_words and stops; nothing else goes over the text. Counted, not timed
    (benchmarks/bench_filters.py times it)."""
    chunks: list[int] = []
    real_chunks = filters._chunks

    def counted_chunks(text, splitter):
        for chunk in real_chunks(text, splitter):
            chunks.append(len(chunk))
            yield chunk

    def no_repetition_pass(text, cfg):
        raise AssertionError("the repetition rules ran on a document the quality pass had already rejected")

    monkeypatch.setattr(filters, "_chunks", counted_chunks)
    monkeypatch.setattr(filters, "repetition_reason", no_repetition_pass)
    vocabulary = gopher_text(5, 3000).split()
    large = CountingText(_one_line(random.Random(7), 20_000_000, vocabulary))
    assert reject_reason(large, DEFAULT) == "too_many_words"
    assert reject_reasons(["short", large], DEFAULT) == ["too_few_words", "too_many_words"]
    assert len(chunks) == 2 and max(chunks) <= filters._CHUNK_CHARS + 64, chunks  # one chunk per call above
    assert large.touched <= 2 * (filters._CHUNK_CHARS + 64), large.touched


def test_every_rule_over_a_huge_document_touches_each_character_a_bounded_number_of_times():
    """With max_words lifted every rule reads the whole text; the Python-level passes over it (slices, splits,
    counts, finds) must add up to at most 8 times its length at 1.1 and 4.4 MB, with or without lines: a
    constant number of passes. A pass that rescanned the rest of the text once per 1 MiB chunk would add ~2 at
    4.4 MB, once per line far more. numpy's own work (a sort per n-gram size, n log n) is timed in
    benchmarks/bench_filters.py instead."""
    unbounded = dataclasses.replace(DEFAULT, max_words=10**9)
    vocabulary = gopher_text(5, 3000).split()
    rng = random.Random(8)
    for lines in (False, True):
        per_char = []
        for size in (1_100_000, 4_400_000):
            text = _one_line(rng, size, vocabulary)
            if lines:  # ~80-character lines: the line rules and _lines' chunks see ~12k lines per MB
                text = "\n".join(text[i:i + 80] for i in range(0, len(text), 80))
            counted = CountingText(text)
            assert reject_reason(counted, unbounded) == reject_reason(text, unbounded)
            per_char.append(counted.touched / len(text))
        assert max(per_char) <= 8, (lines, per_char)


def test_token_class_cache_is_bounded_and_starts_over_when_full():
    """A worker classifies each distinct token once, but a corpus has millions of distinct tokens (hapaxes,
    numbers): the cache must stay at _CLASS_CACHE_SIZE entries, and tokens over 64 characters never enter it."""
    from pipeline import filters

    classes = filters._TokenClasses()
    tokens = [f"w{i}" for i in range(filters._CLASS_CACHE_SIZE + 10)]
    codes = [classes[t] for t in tokens]
    assert len(classes) == 10  # full at _CLASS_CACHE_SIZE, cleared, then the last 10 tokens
    assert codes == [filters._TokenClasses()[t] for t in tokens]  # same codes as a fresh cache
    for long_token, alpha in (("https://example.com/" + "a" * 50, True), ("1234567890" * 7, False)):
        code = classes[long_token]  # classified like any token (length, word, letter, not a stop word) ...
        assert (code >> filters._LENGTH_SHIFT, bool(code & filters._WORD), bool(code & filters._ALPHA),
                bool(code & filters._STOP)) == (len(long_token), True, alpha, False)
        assert long_token not in classes  # ... but not kept
