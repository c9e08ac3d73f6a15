"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models", Appendix A, Table A1).

Pure functions of a document's text: each rule returns a stable reason name or None, so they are tested
without a Beam runner and the pipeline counts every drop under its name. :func:`reject_reason` applies the
rules in this FIXED order and returns the first that fails (``REASONS`` lists them in the same order):

    quality (cheap, and the word count bounds everything after it)
    too_few_words            fewer than min_words words (default 50)
    too_many_words           more than max_words words (default 100,000); counting stops early here
    mean_word_length         mean word length outside [3, 10] characters
    symbol_word_ratio        "#" per word, or ellipses ("...", "…") per word, above 0.1 (either one)
    bullet_lines             more than 90% of non-blank lines start with a bullet (• ● ◦ ‣ ▪ - * –)
    ellipsis_lines           more than 30% of non-blank lines end with "..." or "…"
    alpha_words              fewer than 80% of tokens contain an alphabetic character
    stop_words               fewer than 2 of: the, be, to, of, and, that, have, with
    repetition
    duplicate_lines          more than 30% of non-blank lines are duplicated lines
    duplicate_line_chars     duplicated lines hold more than 20% of the line characters
    duplicate_paragraphs     more than 30% of paragraphs are duplicated paragraphs
    duplicate_paragraph_chars  duplicated paragraphs hold more than 20% of the paragraph characters
    top_ngram                the most frequent 2/3/4-gram covers more than 20/18/16% of the word characters
    duplicate_ngram          duplicated 5..10-grams cover more than 15/14/13/12/11/10% of the word characters

Definitions (every number above is a FilterConfig field, i.e. a command-line option):
- token: a maximal run of non-whitespace (``str.split()``); word: a token holding a letter or digit (tokens of
  punctuation and symbols only, like "-" or "***", are not words). Word lengths include attached punctuation.
- line: a "\\n"-separated line with surrounding whitespace stripped; blank lines are ignored. paragraph: a run
  of non-blank lines between blank lines.
- duplicated: every occurrence of a line/paragraph/n-gram that occurs more than once in the document, the first
  one included (as Dolma's Gopher tagger counts; datatrove counts only the repeats after the first). Character
  fractions count each token once however many duplicated n-grams overlap it; their denominators are the
  characters of all tokens (n-gram rules) or of all non-blank lines/paragraphs (whitespace between them excluded).
- n-grams are over tokens. The top n-gram is the most frequent one (the longest in characters among equally
  frequent ones), and only when it occurs at least twice.

Cost is linear in the text's length: the quality pass streams over 1 MiB chunks split at whitespace and stops
counting at max_words, so a 50 MB single-line document is rejected after scanning, not materialized as a list
of millions of tokens; the repetition rules only see documents that passed it (<= max_words words).

Try it:

    python -c "from pipeline.filters import *; print(reject_reason(open('README.md').read(), FilterConfig()))"
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, fields
from bisect import bisect_right
from itertools import compress, count, repeat
from operator import add, gt, mul

import numpy as np

TOO_FEW_WORDS = "too_few_words"
TOO_MANY_WORDS = "too_many_words"
MEAN_WORD_LENGTH = "mean_word_length"
SYMBOL_WORD_RATIO = "symbol_word_ratio"
BULLET_LINES = "bullet_lines"
ELLIPSIS_LINES = "ellipsis_lines"
ALPHA_WORDS = "alpha_words"
STOP_WORDS_REASON = "stop_words"
DUPLICATE_LINES = "duplicate_lines"
DUPLICATE_LINE_CHARS = "duplicate_line_chars"
DUPLICATE_PARAGRAPHS = "duplicate_paragraphs"
DUPLICATE_PARAGRAPH_CHARS = "duplicate_paragraph_chars"
TOP_NGRAM = "top_ngram"
DUPLICATE_NGRAM = "duplicate_ngram"

QUALITY_REASONS: tuple[str, ...] = (TOO_FEW_WORDS, TOO_MANY_WORDS, MEAN_WORD_LENGTH, SYMBOL_WORD_RATIO, BULLET_LINES,
                                    ELLIPSIS_LINES, ALPHA_WORDS, STOP_WORDS_REASON)
REPETITION_REASONS: tuple[str, ...] = (DUPLICATE_LINES, DUPLICATE_LINE_CHARS, DUPLICATE_PARAGRAPHS,
                                       DUPLICATE_PARAGRAPH_CHARS, TOP_NGRAM, DUPLICATE_NGRAM)
REASONS: tuple[str, ...] = QUALITY_REASONS + REPETITION_REASONS

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "●", "◦", "‣", "▪", "-", "*", "–")
ELLIPSES = ("...", "…")
TOP_NGRAM_SIZES = (2, 3, 4)
DUPLICATE_NGRAM_SIZES = (5, 6, 7, 8, 9, 10)

# Characters stripped from a token before the stop-word lookup ("The," -> "the").
_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»“”‘’„…–—¡¿"
_HAS_ALNUM = re.compile(r"[^\W_]").search      # a letter or digit, any script
_HAS_ALPHA = re.compile(r"[^\W\d_]").search    # a letter, any script
_WHITESPACE = re.compile(r"\s")
_PARAGRAPH_BREAK = re.compile("\n\n+")
# The quality pass splits texts longer than this (characters) into chunks at whitespace, so one huge
# document never becomes one huge list of tokens.
_CHUNK_CHARS = 1 << 20


def _help(help_text: str) -> dict:
    return {"help": help_text}


@dataclass(frozen=True)
class FilterConfig:
    """Every threshold of the Gopher rules; defaults are Table A1 of Rae et al. (2021)."""

    min_words: int = field(default=50, metadata=_help("drop documents with fewer words (0 disables)"))
    max_words: int = field(default=100_000, metadata=_help("drop documents with more words"))
    min_mean_word_length: float = field(default=3.0, metadata=_help("drop if the mean word length is below (chars)"))
    max_mean_word_length: float = field(default=10.0, metadata=_help("drop if the mean word length is above (chars)"))
    max_symbol_word_ratio: float = field(
        default=0.1, metadata=_help("drop if '#' per word, or ellipses per word, is above"))
    min_stop_words: int = field(
        default=2, metadata=_help("drop if fewer of the stop words (the, be, to, of, and, that, have, with)"))
    max_bullet_lines_ratio: float = field(
        default=0.9, metadata=_help("drop if the fraction of lines starting with a bullet is above"))
    max_ellipsis_lines_ratio: float = field(
        default=0.3, metadata=_help("drop if the fraction of lines ending with an ellipsis is above"))
    min_alpha_words_ratio: float = field(
        default=0.8, metadata=_help("drop if the fraction of tokens with a letter is below"))
    max_duplicate_line_fraction: float = field(
        default=0.3, metadata=_help("drop if the fraction of lines that are duplicated is above"))
    max_duplicate_line_char_fraction: float = field(
        default=0.2, metadata=_help("drop if duplicated lines hold a larger fraction of the line characters"))
    max_duplicate_paragraph_fraction: float = field(
        default=0.3, metadata=_help("drop if the fraction of paragraphs that are duplicated is above"))
    max_duplicate_paragraph_char_fraction: float = field(
        default=0.2, metadata=_help("drop if duplicated paragraphs hold a larger fraction of the characters"))
    max_top_2gram_char_fraction: float = field(
        default=0.20, metadata=_help("drop if the most frequent 2-gram covers a larger fraction of the characters"))
    max_top_3gram_char_fraction: float = field(
        default=0.18, metadata=_help("drop if the most frequent 3-gram covers a larger fraction of the characters"))
    max_top_4gram_char_fraction: float = field(
        default=0.16, metadata=_help("drop if the most frequent 4-gram covers a larger fraction of the characters"))
    max_duplicate_5gram_char_fraction: float = field(
        default=0.15, metadata=_help("drop if duplicated 5-grams cover a larger fraction of the characters"))
    max_duplicate_6gram_char_fraction: float = field(
        default=0.14, metadata=_help("drop if duplicated 6-grams cover a larger fraction of the characters"))
    max_duplicate_7gram_char_fraction: float = field(
        default=0.13, metadata=_help("drop if duplicated 7-grams cover a larger fraction of the characters"))
    max_duplicate_8gram_char_fraction: float = field(
        default=0.12, metadata=_help("drop if duplicated 8-grams cover a larger fraction of the characters"))
    max_duplicate_9gram_char_fraction: float = field(
        default=0.11, metadata=_help("drop if duplicated 9-grams cover a larger fraction of the characters"))
    max_duplicate_10gram_char_fraction: float = field(
        default=0.10, metadata=_help("drop if duplicated 10-grams cover a larger fraction of the characters"))

    def validate(self) -> None:
        """Raise ValueError naming the option and the fix if any threshold is out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            option = "--" + f.name.replace("_", "-")
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"filter option {f.name} ({option}) = {value!r}: use an integer >= 0")
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
                    raise ValueError(f"filter option {f.name} ({option}) = {value!r}: use a number >= 0")
                if (f.name.endswith(("_ratio", "_fraction")) and value > 1):
                    raise ValueError(f"filter option {f.name} ({option}) = {value!r} is a fraction: use a value "
                                     "in [0, 1] (1 disables the rule)" if f.name.startswith("max_") else
                                     f"filter option {f.name} ({option}) = {value!r} is a fraction: use a value "
                                     "in [0, 1] (0 disables the rule)")
        if self.min_words > self.max_words:
            raise ValueError(f"filter options min_words={self.min_words} > max_words={self.max_words}: "
                             "set --min-words <= --max-words")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError(f"filter options min_mean_word_length={self.min_mean_word_length} > "
                             f"max_mean_word_length={self.max_mean_word_length}: set the minimum <= the maximum")


def _chunks(text: str, splitter: re.Pattern | str):
    """``text`` in pieces of about _CHUNK_CHARS characters, each cut just before a ``splitter`` match.

    No token (for a whitespace splitter) or line (for "\\n") is cut in two; a text without any separator
    is one chunk. Slices copy each character once, so this is linear.
    """
    start, n = 0, len(text)
    while start < n:
        end = start + _CHUNK_CHARS
        if end >= n:
            yield text[start:]
            return
        cut = text.find(splitter, end) if isinstance(splitter, str) else _search_from(splitter, text, end)
        if cut < 0:
            yield text[start:]
            return
        yield text[start:cut]
        start = cut


def _search_from(pattern: re.Pattern, text: str, pos: int) -> int:
    m = pattern.search(text, pos)
    return -1 if m is None else m.start()


def _lines(text: str):
    """Non-blank lines, stripped, chunk by chunk (each yielded list holds at most ~1 MiB of text)."""
    for chunk in _chunks(text, "\n"):
        yield list(filter(None, map(str.strip, chunk.split("\n"))))


_WORD, _ALPHA, _STOP, _LENGTH_SHIFT = 1, 2, 4, 3  # bits of a token's class code, then its length
_CLASS_CACHE_SIZE = 1 << 16  # tokens (~8 MB at most)


class _TokenClasses(dict):
    """token -> code: its length in characters (code >> _LENGTH_SHIFT) and the _WORD/_ALPHA/_STOP bits.

    The per-token predicates of the quality rules depend on the token alone, and text draws most of its tokens
    from a small vocabulary, so each process classifies a token once and then looks it up (in C, via map).
    Bounded: it starts over when it holds _CLASS_CACHE_SIZE tokens, and tokens longer than 64 characters
    (URLs, hashes: rarely seen twice) are classified but not kept.
    """

    def __missing__(self, token: str) -> int:
        code = len(token) << _LENGTH_SHIFT
        if _HAS_ALNUM(token):
            code |= _WORD | (_ALPHA if _HAS_ALPHA(token) else 0)
            if token.strip(_PUNCTUATION).lower() in STOP_WORDS:
                code |= _STOP
        if len(token) <= 64:
            if len(self) >= _CLASS_CACHE_SIZE:
                self.clear()
            self[token] = code
        return code


_TOKEN_CLASSES = _TokenClasses()


def quality_reason(text: str, cfg: FilterConfig) -> str | None:
    """The first Gopher quality rule ``text`` fails (see the module docstring for order), or None."""
    # Fast path for the commonest rejection: words are a subset of tokens, so fewer tokens than min_words
    # decides it (two thirds of a docstring corpus end here). split() stops after min_words pieces, so a
    # long document costs no more than a short one here.
    if cfg.min_words and len(text) <= _CHUNK_CHARS and len(text.split(None, cfg.min_words - 1)) < cfg.min_words:
        return TOO_FEW_WORDS
    # One streaming pass over tokens: counts only, at most one chunk's tokens alive, stopping at max_words.
    # Each token's class is a dict lookup run by map() in C (see _TokenClasses); numpy sums the codes.
    n_words = word_chars = n_tokens = n_alpha = n_stop = 0
    for chunk in _chunks(text, _WHITESPACE):
        tokens = chunk.split()
        code = np.fromiter(map(_TOKEN_CLASSES.__getitem__, tokens), np.int64, len(tokens))
        is_word = (code & _WORD) != 0
        n_words += int(np.count_nonzero(is_word))
        if n_words > cfg.max_words:
            return TOO_MANY_WORDS
        word_chars += int((code[is_word] >> _LENGTH_SHIFT).sum())
        n_tokens += len(tokens)
        n_alpha += int(np.count_nonzero(code & _ALPHA))
        n_stop += int(np.count_nonzero(code & _STOP))
    if n_words < cfg.min_words:
        return TOO_FEW_WORDS
    if n_words:
        mean = word_chars / n_words
        if mean < cfg.min_mean_word_length or mean > cfg.max_mean_word_length:
            return MEAN_WORD_LENGTH
    hashes, ellipses = text.count("#"), text.count("...") + text.count("…")
    if max(hashes, ellipses) > cfg.max_symbol_word_ratio * n_words:
        return SYMBOL_WORD_RATIO
    n_lines = n_bullet = n_ellipsis = 0
    for lines in _lines(text):
        n_lines += len(lines)
        n_bullet += sum(map(str.startswith, lines, repeat(BULLETS)))
        n_ellipsis += sum(map(str.endswith, lines, repeat(ELLIPSES)))
    if n_lines and n_bullet > cfg.max_bullet_lines_ratio * n_lines:
        return BULLET_LINES
    if n_lines and n_ellipsis > cfg.max_ellipsis_lines_ratio * n_lines:
        return ELLIPSIS_LINES
    if n_tokens and n_alpha < cfg.min_alpha_words_ratio * n_tokens:
        return ALPHA_WORDS
    if n_stop < cfg.min_stop_words:
        return STOP_WORDS_REASON
    return None


def _duplicated(items: list[str]) -> tuple[int, int, int]:
    """(duplicated items, their characters, all characters): every occurrence of an item seen twice or more."""
    counts = Counter(items)
    chars = sum(map(len, items))
    if len(counts) == len(items):
        return 0, 0, chars  # the common case: nothing repeats
    dup_items = dup_chars = 0
    for item, c in counts.items():
        if c > 1:
            dup_items += c
            dup_chars += c * len(item)
    return dup_items, dup_chars, chars


def _duplicated_reason(items: list[str], max_fraction: float, max_char_fraction: float, items_reason: str,
                       chars_reason: str) -> str | None:
    """The line or paragraph rule pair: too many duplicated items, else too many of their characters."""
    if not items:
        return None
    dup, dup_chars, chars = _duplicated(items)
    if dup > max_fraction * len(items):
        return items_reason
    if dup_chars > max_char_fraction * chars:
        return chars_reason
    return None


def _paragraphs(stripped_lines: list[str]) -> list[str]:
    """Runs of non-blank lines between blank ones, each joined with "\\n" (the lines carry no "\\n" of their own,
    so a blank line is an empty string and a paragraph break is two or more "\\n" in a row)."""
    return list(filter(None, _PARAGRAPH_BREAK.split("\n".join(stripped_lines).strip("\n"))))


def _covered_chars(lengths: list[int], starts, n: int) -> int:
    """Characters of the tokens covered by the n-grams starting at ``starts``, each token counted once."""
    covered = bytearray(len(lengths))
    ones = b"\x01" * n
    for i in starts:
        covered[i:i + n] = ones
    return sum(compress(lengths, covered))


def repetition_reason(text: str, cfg: FilterConfig) -> str | None:
    """The first Gopher repetition rule ``text`` fails (see the module docstring for order), or None."""
    raw_lines = list(map(str.strip, text.split("\n")))
    reason = _duplicated_reason(list(filter(None, raw_lines)), cfg.max_duplicate_line_fraction,
                                cfg.max_duplicate_line_char_fraction, DUPLICATE_LINES, DUPLICATE_LINE_CHARS)
    if reason is None:
        reason = _duplicated_reason(_paragraphs(raw_lines), cfg.max_duplicate_paragraph_fraction,
                                    cfg.max_duplicate_paragraph_char_fraction, DUPLICATE_PARAGRAPHS,
                                    DUPLICATE_PARAGRAPH_CHARS)
    if reason is not None:
        return reason
    del raw_lines

    tokens = text.split()
    # N-grams as exact integer keys, built incrementally: key_n(i) = key_{n-1}(i) * radix + id[i + n - 1], where
    # a token's id is the position of its first occurrence and radix = number of tokens. Python ints are not
    # tracked by the garbage collector (tuples are, and millions of them make collections super-linear), and
    # every step is a map() run in C rather than by the interpreter. An n-gram can only occur twice if the
    # (n-1)-gram it starts with does, so after n = 2 only the starts of repeated n-grams are followed (16% of
    # positions at n = 2 in docstrings, 8% at n = 3); every n-gram left behind occurs once and can neither be
    # the top n-gram nor duplicated.
    ids = list(map({}.setdefault, tokens, count()))
    lengths = list(map(len, tokens))
    total, radix = sum(lengths), len(tokens)
    del tokens
    if not total:
        return None
    starts, keys = range(len(ids)), ids  # n = 1: every position, keyed by its token
    for n in range(2, max(DUPLICATE_NGRAM_SIZES) + 1):
        if isinstance(starts, range):  # every position still followed: the next tokens are a slice
            starts, next_ids = range(len(ids) - n + 1), ids[n - 1:]
        else:
            starts = starts[:bisect_right(starts, len(ids) - n)]  # an n-gram must end inside the text
            next_ids = map(ids.__getitem__, map(add, starts, repeat(n - 1)))
        keys = list(map(add, map(mul, keys, repeat(radix, len(starts))), next_ids))
        counts = Counter(keys)
        top = max(counts.values(), default=0)
        if top < 2:
            break  # no n-gram repeats, so no longer one does either (and there is no top n-gram)
        if n in TOP_NGRAM_SIZES:
            # The longest (in characters) of the equally most frequent n-grams; an n-gram's characters are
            # those of its tokens, so one occurrence of each candidate tells its length.
            first, wanted = {}, {k for k, c in counts.items() if c == top}
            for i, k in compress(zip(starts, keys), map(wanted.__contains__, keys)):
                first.setdefault(k, i)
            best_chars, best = max((sum(lengths[i:i + n]), k) for k, i in first.items())
            limit = getattr(cfg, f"max_top_{n}gram_char_fraction") * total
            # top * best_chars bounds the covered characters (overlaps only lower it): skip the exact count
            # when even the bound is within the limit.
            if top * best_chars > limit and \
                    _covered_chars(lengths, compress(starts, map(best.__eq__, keys)), n) > limit:
                return TOP_NGRAM
        # Follow only the repeated n-grams' starts from here on, unless most n-grams repeat (long repetitive
        # documents), where selecting them would cost more than it saves. The n >= 5 rules need them anyway.
        if n in DUPLICATE_NGRAM_SIZES or 2 * list(counts.values()).count(1) > len(keys):
            repeated = list(map(gt, map(counts.__getitem__, keys), repeat(1)))
            starts, keys = list(compress(starts, repeated)), list(compress(keys, repeated))
        if n in DUPLICATE_NGRAM_SIZES:
            covered = _covered_chars(lengths, starts, n)
            if covered > getattr(cfg, f"max_duplicate_{n}gram_char_fraction") * total:
                return DUPLICATE_NGRAM
            # Every duplicated (n+1)-gram is made of duplicated n-grams, so coverage can only shrink as n
            # grows: once it is within every remaining limit, no longer n-gram can fail. Exact, and most
            # documents stop here at n = 5 instead of counting 6..10.
            rest = [getattr(cfg, f"max_duplicate_{m}gram_char_fraction") for m in DUPLICATE_NGRAM_SIZES if m > n]
            if not rest or covered <= min(rest) * total:
                break
    return None


def reject_reason(text: str, cfg: FilterConfig) -> str | None:
    """The first rule of ``REASONS`` (in that order) that ``text`` fails, or None to keep it."""
    return quality_reason(text, cfg) or repetition_reason(text, cfg)
