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

Two entry points give the same answers: :func:`reject_reasons` judges a batch of documents at once (what the
pipeline runs: each text is split once, the per-token counts and the n-gram rules are numpy passes over the
whole batch), :func:`reject_reason` one document. Cost is linear in a text's length (n log n for the n-gram
ranks): texts over 1 MiB characters take the one-document path, whose quality pass streams over 1 MiB chunks
split at whitespace and stops counting at max_words, so a 50 MB single-line document is rejected after
scanning, not materialized as a list of millions of tokens; the repetition rules only see documents that
passed it (<= max_words words).

Try it:

    python -c "from pipeline.filters import *; print(reject_reason(open('README.md').read(), FilterConfig()))"
    python -c "from pipeline.filters import *; print(reject_reasons(['too short', open('README.md').read()], FilterConfig()))"
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, fields
from itertools import chain, count, repeat
from typing import Iterable, Iterator

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
# Characters of text judged together by reject_reasons in the pipeline: enough documents to spread numpy's
# per-call cost, few enough that a batch's arrays take a few MB.
BATCH_CHARS = 1 << 20


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
# Tokens the cache holds before it starts over (keys of at most 64 characters, so a few MB at most). A corpus
# keeps bringing new distinct tokens (names, numbers, typos) while most of its tokens come from a small
# vocabulary: a cache that starts over still hits on nearly every token, and a larger one saves a few misses
# but no measurable time, for memory that a worker needs more.
_CLASS_CACHE_SIZE = 1 << 16


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


def _quality_verdict(text: str, counts: tuple[int, int, int, int, int], line_lists, cfg: FilterConfig) -> str | None:
    """The quality rules after too_many_words, in order, from a document's token counts and its non-blank lines.

    ``counts`` is (words, characters of words, tokens, tokens with a letter, stop words); ``line_lists`` yields
    lists of stripped non-blank lines (one list for a normal document, one per chunk for a huge one).
    """
    n_words, word_chars, n_tokens, n_alpha, n_stop = counts
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
    for lines in line_lists:
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


def _too_few_tokens(text: str, cfg: FilterConfig) -> bool:
    """The commonest rejection, decided cheaply: words are a subset of tokens, so fewer tokens than min_words
    decides too_few_words (two thirds of a docstring corpus end here). split() stops after min_words pieces, so
    a long document costs no more than a short one here."""
    return bool(cfg.min_words) and len(text.split(None, cfg.min_words - 1)) < cfg.min_words


def quality_reason(text: str, cfg: FilterConfig) -> str | None:
    """The first Gopher quality rule ``text`` fails (see the module docstring for order), or None.

    One document at a time and streamed: at most one ~1 MiB chunk's tokens are alive, and counting stops at
    max_words, so this is the path for huge documents; :func:`reject_reasons` counts normal ones in batches.
    """
    if len(text) <= _CHUNK_CHARS and _too_few_tokens(text, cfg):
        return TOO_FEW_WORDS
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
    return _quality_verdict(text, (n_words, word_chars, n_tokens, n_alpha, n_stop), _lines(text), cfg)


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


def _stripped_lines(text: str) -> tuple[list[str], list[str]]:
    """(every line stripped, blank ones as ""; the non-blank ones): what the line rules read."""
    stripped = list(map(str.strip, text.split("\n")))
    return stripped, list(filter(None, stripped))


def _line_reason(stripped_lines: list[str], nonblank: list[str], cfg: FilterConfig) -> str | None:
    """The duplicated line and paragraph rules, in order. ``stripped_lines`` holds every line (blank ones as "")."""
    return (_duplicated_reason(nonblank, cfg.max_duplicate_line_fraction, cfg.max_duplicate_line_char_fraction,
                               DUPLICATE_LINES, DUPLICATE_LINE_CHARS)
            or _duplicated_reason(_paragraphs(stripped_lines), cfg.max_duplicate_paragraph_fraction,
                                  cfg.max_duplicate_paragraph_char_fraction, DUPLICATE_PARAGRAPHS,
                                  DUPLICATE_PARAGRAPH_CHARS))


def _first_positions(tokens: list[str], offset: int = 0) -> list[int]:
    """Each token's id: ``offset`` + the position of its first occurrence in ``tokens`` (equal ids = equal tokens).
    One dict.setdefault per token, run by map() in C."""
    return list(map({}.setdefault, tokens, count(offset)))


def _prefix_sums(values: np.ndarray) -> np.ndarray:
    """(len + 1,) 0 followed by the running sums: element k is the sum of values[:k]."""
    return np.concatenate(([0], np.cumsum(values)))


def _segment_sums(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over each segment [bounds[k], bounds[k + 1]) (empty segments give 0)."""
    csum = _prefix_sums(values)
    return csum[bounds[1:]] - csum[bounds[:-1]]


def _covered_chars(starts: np.ndarray, n: int, csum: np.ndarray, doc_of: np.ndarray, n_docs: int) -> np.ndarray:
    """(D,) per document, the characters of the tokens covered by the n-grams starting at ``starts`` (each token
    once). ``starts``: increasing positions; ``csum``: the prefix sums of the token lengths; ``doc_of``: each
    position's document.

    The n-grams have one length, so sorted by start their ends are sorted too: each one adds what it covers
    before the next one starts. N-grams never cross a document's end, so neither do these pieces. Linear in the
    number of starts, not of tokens: after the first sizes, few positions start a repeated n-gram."""
    ends = starts + n
    ends[:-1] = np.minimum(ends[:-1], starts[1:])
    return np.bincount(doc_of[starts], weights=csum[ends] - csum[starts], minlength=n_docs)


def _ngram_reasons(ids: np.ndarray, lengths: np.ndarray, bounds: np.ndarray, cfg: FilterConfig) -> list[str | None]:
    """The n-gram rules (top 2/3/4-gram, duplicated 5..10-grams, in that order) for a batch of documents at once.

    ids: (N,) int64, each token's document offset + the position of its first occurrence in that document (so
    equal ids are equal tokens of the same document, and ids < N); lengths: (N,) token characters; bounds:
    (D + 1,) where each document's tokens start, then N. Returns D reasons or None.

    Every n-gram gets an exact integer label: label_1 = id, label_n = rank of the pair (label_{n-1} at i, id at
    i + n - 1) among all pairs (np.unique). Ranks keep the lexicographic order of the token ids, and a
    pair < N * N fits int64 for any batch under 3e9 tokens. An n-gram can only occur twice if the (n-1)-gram it
    starts with does, so after each n only the starts of repeated n-grams are followed (in natural text a
    small fraction of the positions once n > 2). Documents leave once decided: failed, or (duplicated n-gram
    coverage can only shrink as n grows) within every remaining limit.
    """
    n_docs, n_tokens = len(bounds) - 1, len(ids)
    reasons: list[str | None] = [None] * n_docs
    if not n_tokens:
        return reasons
    sizes = np.diff(bounds)
    doc_of = np.repeat(np.arange(n_docs), sizes)  # (N,) document of each position
    end_of = np.repeat(bounds[1:], sizes)         # (N,) one past the last position of that document
    csum = _prefix_sums(lengths)  # characters before each position: an n-gram at i holds csum[i + n] - csum[i]
    total = (csum[bounds[1:]] - csum[bounds[:-1]]).astype(np.float64)  # (D,) characters of all tokens
    active = total > 0
    pos, label = np.arange(n_tokens), ids
    for n in range(2, max(DUPLICATE_NGRAM_SIZES) + 1):
        keep = (pos + (n - 1) < end_of[pos]) & active[doc_of[pos]]  # the n-gram ends inside its document
        pos, label = pos[keep], label[keep]
        if not len(pos):
            break
        _, label, counts = np.unique(label * n_tokens + ids[pos + (n - 1)], return_inverse=True, return_counts=True)
        label = label.reshape(-1)
        occurrences = counts[label]  # (P,) how often the n-gram at each followed position occurs
        doc = doc_of[pos]
        if n in TOP_NGRAM_SIZES:
            top = np.zeros(n_docs, np.int64)
            np.maximum.at(top, doc, occurrences)
            candidate = (occurrences == top[doc]) & (occurrences >= 2)
            if candidate.any():
                # The top n-gram: the most frequent, then the longest in characters, then the largest label
                # (a fixed tie-break: the lexicographically largest first-occurrence ids).
                chars = csum[pos + n] - csum[pos]
                rank = np.where(candidate, chars * (int(label.max()) + 1) + label, -1)
                best = np.full(n_docs, -1, np.int64)
                np.maximum.at(best, doc, rank)
                starts = pos[candidate & (rank == best[doc])]
                limit = getattr(cfg, f"max_top_{n}gram_char_fraction") * total
                failed = active & (_covered_chars(starts, n, csum, doc_of, n_docs) > limit)
                for d in np.flatnonzero(failed).tolist():
                    reasons[d] = TOP_NGRAM
                active &= ~failed
        repeated = occurrences > 1
        pos, label = pos[repeated], label[repeated]
        if n in DUPLICATE_NGRAM_SIZES:
            covered = _covered_chars(pos, n, csum, doc_of, n_docs)
            failed = active & (covered > getattr(cfg, f"max_duplicate_{n}gram_char_fraction") * total)
            for d in np.flatnonzero(failed).tolist():
                reasons[d] = DUPLICATE_NGRAM
            rest = [getattr(cfg, f"max_duplicate_{m}gram_char_fraction") for m in DUPLICATE_NGRAM_SIZES if m > n]
            active &= ~failed & (covered > min(rest) * total if rest else False)
    return reasons


def repetition_reason(text: str, cfg: FilterConfig) -> str | None:
    """The first Gopher repetition rule ``text`` fails (see the module docstring for order), or None."""
    stripped, nonblank = _stripped_lines(text)
    reason = _line_reason(stripped, nonblank, cfg)
    if reason is not None:
        return reason
    del stripped, nonblank
    tokens = text.split()
    ids = np.fromiter(_first_positions(tokens), np.int64, len(tokens))
    lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
    return _ngram_reasons(ids, lengths, np.array([0, len(tokens)]), cfg)[0]


def reject_reason(text: str, cfg: FilterConfig) -> str | None:
    """The first rule of ``REASONS`` (in that order) that ``text`` fails, or None to keep it."""
    return quality_reason(text, cfg) or repetition_reason(text, cfg)


def reject_reasons(texts: list[str], cfg: FilterConfig) -> list[str | None]:
    """``[reject_reason(t, cfg) for t in texts]``, computed for the whole batch at once.

    Each document is split into tokens once; the per-token quality counts are numpy sums over the batch and the
    n-gram rules run over every surviving document together (_ngram_reasons), so numpy's per-call cost is paid
    per batch, not per document. Documents over _CHUNK_CHARS characters take the streamed one-document path.
    """
    reasons: list[str | None] = [None] * len(texts)
    batch: list[int] = []
    for i, text in enumerate(texts):
        if len(text) > _CHUNK_CHARS:
            reasons[i] = reject_reason(text, cfg)
        elif _too_few_tokens(text, cfg):
            reasons[i] = TOO_FEW_WORDS
        else:
            batch.append(i)
    if not batch:
        return reasons

    # Quality: one code per token (see _TokenClasses), summed per document.
    tokens = [texts[i].split() for i in batch]
    sizes = np.fromiter(map(len, tokens), np.int64, len(tokens))
    bounds = _prefix_sums(sizes)
    flat = list(chain.from_iterable(tokens))
    code = np.fromiter(map(_TOKEN_CLASSES.__getitem__, flat), np.int64, len(flat))
    del flat
    lengths = code >> _LENGTH_SHIFT
    is_word = (code & _WORD) != 0
    per_doc = zip(_segment_sums(is_word, bounds).tolist(), _segment_sums(np.where(is_word, lengths, 0), bounds).tolist(),
                  sizes.tolist(), _segment_sums((code & _ALPHA) != 0, bounds).tolist(),
                  _segment_sums((code & _STOP) != 0, bounds).tolist())

    # Quality verdicts, then the line and paragraph rules, one document at a time (C-level string methods).
    survivors: list[int] = []  # positions in ``batch`` of documents that reach the n-gram rules
    for j, (i, counts) in enumerate(zip(batch, per_doc)):
        text = texts[i]
        if counts[0] > cfg.max_words:
            reasons[i] = TOO_MANY_WORDS
            continue
        stripped, nonblank = _stripped_lines(text)
        reason = _quality_verdict(text, counts, (nonblank,), cfg) or _line_reason(stripped, nonblank, cfg)
        if reason is None:
            survivors.append(j)
        else:
            reasons[i] = reason
    if not survivors:
        return reasons

    # N-gram rules over all survivors together.
    ids: list[int] = []
    for j in survivors:
        ids += _first_positions(tokens[j], len(ids))
    keep = np.zeros(len(batch), bool)
    keep[survivors] = True
    ngram = _ngram_reasons(np.array(ids, np.int64), lengths[np.repeat(keep, sizes)], _prefix_sums(sizes[keep]), cfg)
    for j, reason in zip(survivors, ngram):
        reasons[batch[j]] = reason
    return reasons


def iter_reject_reasons(texts: Iterable[str], cfg: FilterConfig, batch_chars: int = BATCH_CHARS) -> Iterator[str | None]:
    """The reason of each text in turn, judged by reject_reasons in batches of about ``batch_chars`` characters."""
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= batch_chars:
            yield from reject_reasons(batch, cfg)
            batch, chars = [], 0
    yield from reject_reasons(batch, cfg)
