"""C4's cleaning rules (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", section 2.2), as TFDS's
c4_utils.clean_page and datatrove's C4QualityFilter define them.

A pure function of a document's text: :func:`c4_clean` walks the document's lines once and either returns the
edited text (the lines that passed, stripped, joined by "\\n") with how many lines each line rule removed, or a
rejection reason. Lines are ``str.splitlines()`` lines, each stripped of surrounding whitespace; per line, in
this FIXED order (the order of TFDS and datatrove, which decides which rule a line is counted under):

    kind   name                         the line ...
    edit   c4_lines_too_long_word       has a word (whitespace-separated token) over max_word_length (1,000) chars
    (cut)  c4_citations                 loses its citation marks "[1]", "[edit]", "[citation needed]"
                                        (remove_citations; counted per mark, the line stays)
    edit   c4_lines_no_terminal_punct   does not end in . ? ! " ' or ends in "..." (terminal_punct: OFF by
                                        default, as FineWeb runs C4; TFDS C4 has it on)
    edit   c4_lines_too_few_words       has fewer than min_words_per_line (3) words (counted before the cut)
    DROP   c4_lorem_ipsum               contains "lorem ipsum" (any case)
    edit   c4_lines_javascript          contains "javascript" (any case)
    DROP   c4_curly_bracket             contains "{"
    edit   c4_lines_policy              contains a cookie/terms-of-use phrase (POLICY_PHRASES, any case)
    then, over the kept lines:
    DROP   c4_too_few_sentences         they hold fewer than min_sentences (5) sentences (count_sentences)
    DROP   c4_empty                     none is left (only reachable with min_sentences = 0)

An edit removes the line from the document and is counted under its name (EDITS); a DROP rejects the whole
document under its reason (REASONS). So, exactly as in C4, the two document rules only look at lines that survived the line rules before them: a
"{" on a line that is removed for having too few words (or no terminal punctuation) does not drop the
document, and a "{" on a line mentioning javascript is removed with that line.

Every rule is a C4Config field, i.e. a command-line option ``--c4-<field>``. Deliberate differences from
datatrove's C4QualityFilter (tests/test_c4_fineweb.py checks every other decision against it):
- sentences are counted by :func:`count_sentences`, a deterministic rule-based splitter of our own: TFDS uses
  NLTK's punkt model and datatrove uses spaCy's sentencizer, both of which need a package (and for punkt a
  download at run time) that a data worker should not. Ours agrees with spaCy's on ordinary prose; see its
  docstring for where they differ. Only documents near the 5-sentence limit can be decided differently.
- a document left with no line is rejected (c4_empty); datatrove keeps it as an empty document.
- 0 disables min_words_per_line, max_word_length and min_sentences (datatrove uses -1; its 0 for
  max_word_length would remove every line).
- TFDS counts a line's words after cutting its citation marks; datatrove (and we) before. TFDS's end marks
  lack "'" (datatrove's and ours have it).
- edit counts are those of the documents C4 keeps: a document C4 drops is counted once, under its reason
  (datatrove's statistics also count the lines it removed before it reached the dropping line).

Try it:

    python -c "from pipeline.c4_rules import *; print(c4_clean(open('README.md').read(), C4Config()))"
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, fields
from typing import NamedTuple

LOREM_IPSUM = "c4_lorem_ipsum"
CURLY_BRACKET = "c4_curly_bracket"
TOO_FEW_SENTENCES = "c4_too_few_sentences"
EMPTY = "c4_empty"
REASONS: tuple[str, ...] = (LOREM_IPSUM, CURLY_BRACKET, TOO_FEW_SENTENCES, EMPTY)

LINES_TOO_LONG_WORD = "c4_lines_too_long_word"
CITATIONS = "c4_citations"
LINES_NO_TERMINAL_PUNCT = "c4_lines_no_terminal_punct"
LINES_TOO_FEW_WORDS = "c4_lines_too_few_words"
LINES_JAVASCRIPT = "c4_lines_javascript"
LINES_POLICY = "c4_lines_policy"
# The order of the counts in C4Verdict.edits.
EDITS: tuple[str, ...] = (LINES_TOO_LONG_WORD, CITATIONS, LINES_NO_TERMINAL_PUNCT, LINES_TOO_FEW_WORDS,
                          LINES_JAVASCRIPT, LINES_POLICY)
_TOO_LONG, _CITATION, _NO_PUNCT, _FEW_WORDS, _JAVASCRIPT, _POLICY = range(len(EDITS))

# As datatrove has them; TFDS c4_utils has the same ellipsis, phrases and citation marks, and no "'" in its end marks.
END_MARKS = (".", "?", "!", '"', "'")
ELLIPSIS = "..."
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_CITATION_MARK = re.compile(r"\[\d*]|\[edit]|\[citation needed]")

# Sentence-final marks: Unicode's Sentence_Terminal characters as datatrove lists them (its TERMINAL_PUNCTUATION,
# which FineWeb's line rule also uses; tests/test_c4_fineweb.py compares the two sets), as code point ranges.
_TERMINAL_RANGES = (
    (0x0021,), (0x002E,), (0x003F,), (0x0589,), (0x061D, 0x061F), (0x06D4,), (0x0700, 0x0702), (0x07F9,),
    (0x0837,), (0x0839,), (0x083D, 0x083E), (0x0964, 0x0965), (0x104A, 0x104B), (0x1362,), (0x1367, 0x1368),
    (0x166E,), (0x1735, 0x1736), (0x17D4, 0x17D6), (0x17D9, 0x17DA), (0x1803,), (0x1809,), (0x1944, 0x1945),
    (0x1AA8, 0x1AAB), (0x1B5A, 0x1B5B), (0x1B5E, 0x1B5F), (0x1B7D, 0x1B7E), (0x1C3B, 0x1C3C), (0x1C7E, 0x1C7F),
    (0x203C, 0x203D), (0x2047, 0x2049), (0x2E2E,), (0x2E3C,), (0x2E53, 0x2E54), (0x3002,), (0xA4FF,),
    (0xA60E, 0xA60F), (0xA6F3,), (0xA6F7,), (0xA876, 0xA877), (0xA8CE, 0xA8CF), (0xA92F,), (0xA9C8, 0xA9C9),
    (0xAA5D, 0xAA5F), (0xAAF0, 0xAAF1), (0xABEB,), (0xFE52,), (0xFE56, 0xFE57), (0xFF01,), (0xFF0E,), (0xFF1F,),
    (0xFF61,), (0x10A56, 0x10A57), (0x10F55, 0x10F59), (0x10F86, 0x10F89), (0x11047, 0x11048),
    (0x110BE, 0x110C1), (0x11141, 0x11143), (0x111C5, 0x111C6), (0x111CD,), (0x111DE, 0x111DF),
    (0x11238, 0x11239), (0x1123B, 0x1123C), (0x112A9,), (0x1144B, 0x1144C), (0x115C2, 0x115C3),
    (0x115C9, 0x115D7), (0x11641, 0x11642), (0x1173C, 0x1173E), (0x11944,), (0x11946,), (0x11A42, 0x11A43),
    (0x11A9B, 0x11A9C), (0x11C41, 0x11C42), (0x11EF7, 0x11EF8), (0x11F43, 0x11F44), (0x16A6E, 0x16A6F),
    (0x16AF5,), (0x16B37, 0x16B38), (0x16B44,), (0x16E98,), (0x1BC9F,), (0x1DA88,),
)
TERMINAL_PUNCTUATION: tuple[str, ...] = tuple(chr(c) for r in _TERMINAL_RANGES for c in range(r[0], r[-1] + 1))

# Sentence splitting (count_sentences). Marks that may follow a sentence's final mark ('end."', 'end.)', 'etc.),').
_CLOSERS = "\"')]}»”’›`*,;:"
_OPENERS = "\"'([{«“‘‹"
# Words that end in "." without ending a sentence: titles, months, US states and company suffixes, as spaCy's
# English tokenizer keeps them whole ("Mr." stays one token, so its sentencizer does not split after it).
_ABBREVIATIONS = frozenset((
    "Mr Mrs Ms Dr St Jr Prof Rev Gen Gov Sen Rep Mt Messrs Capt Col Lt Sgt Hon vs Inc Ltd Co Corp Bros "
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec "
    "Ala Ariz Ark Calif Colo Conn Del Fla Ga Ill Ind Kan Ky La Md Mass Mich Minn Miss Mo Neb Nev Okla Ore Pa "
    "Tenn Va Wash Wis").split())
# Letters with inner dots: "e.g", "U.S", "a.k.a", "Ph.D" (spaCy keeps these whole; "sys.path." it splits).
_DOTTED = re.compile(r"(?:[^\W\d_]{1,2}\.)+[^\W\d_]{1,2}").fullmatch
_INNER_PERIOD = re.compile(r"(?<=[^\W\d_])\.(?=[^\W\d_])")


def count_sentences(line: str) -> int:
    """How many sentences ``line`` holds: 1 for the first token, plus 1 for each token that is not all punctuation
    and follows a sentence end. A token ends a sentence when, without trailing closing quotes/brackets, it ends in a
    TERMINAL_PUNCTUATION mark, unless it ends in an ellipsis ("..", "…") or is an abbreviation: a single letter
    ("J."), letters with inner dots ("e.g.", "U.S.", "Ph.D.") or one of _ABBREVIATIONS ("Mr.", "Jan.").

    A period between a lower-case and an upper-case letter inside a token ("subprocess.Popen") also ends one.

    This is spaCy's sentencizer rule (a sentence ends after a sentence-final punctuation token and the next one
    starts at the following token that is not punctuation) over whitespace tokens cut as spaCy's English tokenizer
    mostly cuts them. It disagrees where that tokenizer cuts differently: it splits "!" and "?" off inside tokens
    ("a != b" is 2 sentences there), and its exception list keeps a few abbreviations whole that ours does not
    ("a.k.a." is one sentence end here, none there).
    """
    n, pending = 0, False
    for token in line.split():
        if not n:
            n = 1
        elif pending and not _is_punctuation(token):
            n += 1
            pending = False
        if "." in token:  # "end.Next": a period between a lower- and an upper-case letter ends a sentence
            n += sum(token[i - 1].islower() and token[i + 1].isupper() for i in _inner_periods(token))
        if _ends_sentence(token):
            pending = True
    return n


def _is_punctuation(token: str) -> bool:
    """Whether every character of ``token`` is Unicode punctuation (category P*; "^" and "+" are symbols)."""
    return all(unicodedata.category(c)[0] == "P" for c in token)


def _inner_periods(token: str):
    """Positions of the periods of ``token`` that have a letter on both sides."""
    return (m.start() for m in _INNER_PERIOD.finditer(token))


def _ends_sentence(token: str) -> bool:
    core = token.rstrip(_CLOSERS)
    if not core.endswith(TERMINAL_PUNCTUATION) or core.endswith(("..", "…")):
        return False
    if core[-1] != ".":
        return True
    word = core[:-1].lstrip(_OPENERS)
    return not ((len(word) == 1 and word.isalpha()) or word in _ABBREVIATIONS or _DOTTED(word))


def _help(help_text: str) -> dict:
    return {"help": help_text}


@dataclass(frozen=True)
class C4Config:
    """Every C4 rule. Defaults are the C4 paper's and datatrove's (3 words a line, 5 sentences, 1,000-character
    words; TFDS's c4_utils constants are 5 words a line and 3 sentences), except terminal_punct: off, as FineWeb
    runs C4 (the paper and TFDS have it on)."""

    terminal_punct: bool = field(default=False, metadata=_help(
        "remove lines that do not end in . ? ! \" ' (or end in ...); TFDS C4: on, FineWeb: off"))
    min_words_per_line: int = field(default=3, metadata=_help("remove lines with fewer words (0 disables)"))
    max_word_length: int = field(default=1000, metadata=_help(
        "remove lines with a word longer than this many characters (0 disables)"))
    javascript_lines: bool = field(default=True, metadata=_help("remove lines that mention javascript"))
    policy_lines: bool = field(default=True, metadata=_help(
        "remove lines with a cookie or terms-of-use phrase (terms of use, privacy policy, uses cookies, ...)"))
    remove_citations: bool = field(default=True, metadata=_help(
        "cut citation marks [1], [edit], [citation needed] from lines"))
    lorem_ipsum: bool = field(default=True, metadata=_help("drop documents with a line containing 'lorem ipsum'"))
    curly_bracket: bool = field(default=True, metadata=_help("drop documents with a kept line containing '{'"))
    min_sentences: int = field(default=5, metadata=_help(
        "drop documents whose kept lines hold fewer sentences (0 disables)"))

    def validate(self) -> None:
        """Raise ValueError naming the option and the fix if a field has the wrong type or range."""
        for f in fields(self):
            value, option = getattr(self, f.name), "--c4-" + f.name.replace("_", "-")
            if f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ValueError(f"C4 option {f.name} ({option}) = {value!r}: use true or false")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"C4 option {f.name} ({option}) = {value!r}: use an integer >= 0 (0 disables it)")


class C4Verdict(NamedTuple):
    """What C4 made of one document: the edited text and the edit counts (in EDITS order), or a reason."""

    text: str                 # the kept lines joined by "\n"; "" when rejected
    reason: str | None        # one of REASONS, or None when the document is kept
    edits: tuple[int, ...]    # per EDITS name; all zero when rejected


NO_EDITS = (0,) * len(EDITS)


def c4_clean(text: str, cfg: C4Config) -> C4Verdict:
    """Apply C4's line edits and document rules to ``text`` (see the module docstring for the order)."""
    counts = [0] * len(EDITS)
    kept: list[str] = []
    sentences = 0
    max_len, min_words = cfg.max_word_length, cfg.min_words_per_line
    for line in text.splitlines():
        line = line.strip()
        if max_len and len(line) > max_len and any(len(w) > max_len for w in line.split()):
            counts[_TOO_LONG] += 1
            continue
        n_words = len(line.split()) if min_words else 0  # before the citations are cut, as datatrove counts
        if cfg.remove_citations and "[" in line:
            line, cut = _CITATION_MARK.subn("", line)
            counts[_CITATION] += cut
        if cfg.terminal_punct and (not line.endswith(END_MARKS) or line.endswith(ELLIPSIS)):
            counts[_NO_PUNCT] += 1
            continue
        if n_words < min_words:
            counts[_FEW_WORDS] += 1
            continue
        lower = line.lower()
        if cfg.lorem_ipsum and "lorem ipsum" in lower:
            return C4Verdict("", LOREM_IPSUM, NO_EDITS)
        if cfg.javascript_lines and "javascript" in lower:
            counts[_JAVASCRIPT] += 1
            continue
        if cfg.curly_bracket and "{" in line:
            return C4Verdict("", CURLY_BRACKET, NO_EDITS)
        if cfg.policy_lines and any(p in lower for p in POLICY_PHRASES):
            counts[_POLICY] += 1
            continue
        if cfg.min_sentences and sentences < cfg.min_sentences:
            sentences += count_sentences(line)
        kept.append(line)
    if sentences < cfg.min_sentences:
        return C4Verdict("", TOO_FEW_SENTENCES, NO_EDITS)
    edited = "\n".join(kept).strip()
    if not edited:
        return C4Verdict("", EMPTY, NO_EDITS)
    return C4Verdict(edited, None, tuple(counts))
