"""FineWeb's own quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.5), as datatrove's
FineWebQualityFilter defines them.

A pure function of a document's text: :func:`fineweb_reason` returns the first rule the text fails, in this
FIXED order (``REASONS``), or None to keep it. Lines are the "\\n"-separated lines that are not blank; unlike
the Gopher rules, they are NOT stripped (a line ending in ". " does not end in punctuation, and its length
counts the spaces), as datatrove judges them.

    fineweb_line_punct_ratio  fewer than min_punct_line_fraction (0.12) of the lines end in a sentence-final
                              mark (c4_rules.TERMINAL_PUNCTUATION: . ! ? and their other scripts' forms; not
                              quotes, not "…")
    fineweb_short_line_ratio  more than max_short_line_fraction (0.67) of the lines have at most
                              short_line_chars (30) characters
    fineweb_char_dup_ratio    lines that repeat an earlier line (the first occurrence not counted) hold more than
                              max_duplicate_line_char_fraction (0.1) of the document's characters ("\\n" excluded)
    fineweb_list_ratio        more than max_newlines_per_word "\\n" per word (OFF by default; datatrove: 0.3)

FineWeb runs these after Gopher and C4, on the text C4's line edits left (pipeline.filter_stage does the same).
Every threshold is a FineWebConfig field, i.e. a command-line option ``--fineweb-<field>``; where the defaults
come from is in FineWebConfig and docs/filters.md. Deliberate differences from datatrove's FineWebQualityFilter
(tests/test_c4_fineweb.py checks every other decision against it):
- fineweb_list_ratio counts words with :func:`count_words`, a regular expression close to spaCy's English
  tokenizer (which datatrove uses, and which a data worker should not need): documents near the limit can be
  decided differently.
- a document without a non-blank line is rejected as "empty" (pipeline.documents.EMPTY), datatrove's "empty".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from pipeline.c4_rules import TERMINAL_PUNCTUATION
from pipeline.documents import EMPTY

LINE_PUNCT_RATIO = "fineweb_line_punct_ratio"
SHORT_LINE_RATIO = "fineweb_short_line_ratio"
CHAR_DUP_RATIO = "fineweb_char_dup_ratio"
LIST_RATIO = "fineweb_list_ratio"
REASONS: tuple[str, ...] = (LINE_PUNCT_RATIO, SHORT_LINE_RATIO, CHAR_DUP_RATIO, LIST_RATIO)

# A word as spaCy's English tokenizer mostly cuts one: a run of letters/digits that may hold inner apostrophes,
# periods or commas ("don't", "3.5", "1,000", "U.S"), or any single other non-space character (punctuation).
_WORD = re.compile(r"\w+(?:[.,'’]\w+)*|[^\w\s]")


def count_words(text: str) -> int:
    """The number of words of ``text`` for fineweb_list_ratio (see _WORD)."""
    return sum(1 for _ in _WORD.finditer(text))


def _help(help_text: str) -> dict:
    return {"help": help_text}


@dataclass(frozen=True)
class FineWebConfig:
    """The FineWeb rules' thresholds. Defaults are FineWeb's published ones (its paper, section 3.5)."""

    min_punct_line_fraction: float = field(default=0.12, metadata=_help(
        "drop if a smaller fraction of the lines end in punctuation (0 disables)"))
    punct_exclude_zero: bool = field(default=False, metadata=_help(
        "keep documents where no line ends in punctuation (exempt them from the rule above)"))
    max_short_line_fraction: float = field(default=0.67, metadata=_help(
        "drop if a larger fraction of the lines are short (1 disables)"))
    short_line_chars: int = field(default=30, metadata=_help("a line of at most this many characters is short"))
    max_duplicate_line_char_fraction: float = field(default=0.1, metadata=_help(
        "drop if repeated lines hold a larger fraction of the characters (1 disables; datatrove's default: 0.01)"))
    max_newlines_per_word: float = field(default=0.0, metadata=_help(
        "drop if there are more newlines per word (0 disables; datatrove's default: 0.3)"))

    def validate(self) -> None:
        """Raise ValueError naming the option and the fix if a field has the wrong type or range."""
        for f in fields(self):
            value, option = getattr(self, f.name), "--fineweb-" + f.name.replace("_", "-")
            if f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ValueError(f"FineWeb option {f.name} ({option}) = {value!r}: use true or false")
            elif f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"FineWeb option {f.name} ({option}) = {value!r}: use an integer >= 0")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"FineWeb option {f.name} ({option}) = {value!r}: use a number >= 0")
            elif f.name.endswith("_fraction") and value > 1:
                raise ValueError(f"FineWeb option {f.name} ({option}) = {value!r} is a fraction: use a value in "
                                 f"[0, 1] ({0 if f.name.startswith('min_') else 1} disables the rule)")


def fineweb_reason(text: str, cfg: FineWebConfig) -> str | None:
    """The first FineWeb rule (REASONS order) that ``text`` fails, or None to keep it.

    Each share is computed as a quotient and compared with its threshold, as datatrove does, so that a document
    exactly at a threshold gets datatrove's decision."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return EMPTY
    n = len(lines)
    punct = sum(map(str.endswith, lines, [TERMINAL_PUNCTUATION] * n)) / n
    if punct < cfg.min_punct_line_fraction and not (punct == 0 and cfg.punct_exclude_zero):
        return LINE_PUNCT_RATIO
    short = cfg.short_line_chars
    if sum(len(line) <= short for line in lines) / n > cfg.max_short_line_fraction:
        return SHORT_LINE_RATIO
    seen: set[str] = set()
    repeated_chars = 0
    for line in lines:
        if line in seen:
            repeated_chars += len(line)
        else:
            seen.add(line)
    if repeated_chars / (len(text) - text.count("\n")) > cfg.max_duplicate_line_char_fraction:
        return CHAR_DUP_RATIO
    if cfg.max_newlines_per_word and text.count("\n") / count_words(text) > cfg.max_newlines_per_word:
        return LIST_RATIO
    return None
