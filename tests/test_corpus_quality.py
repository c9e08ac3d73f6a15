"""Every corpus-quality stage on at once through `pipeline.prepare`: WET and JSONL input with URLs, the URL
blocklist, language ID, the Gopher, C4 and FineWeb rules, exact and near dedup, PII redaction.

    python -m pytest tests/test_corpus_quality.py -q
"""
from __future__ import annotations

import gzip
import io
import json
import os
import random

import pytest

from references import require  # noqa: E402
require("apache_beam")
require("warcio")

from conftest import gopher_text, kept_text, write_jsonl_file  # noqa: E402
from pipeline.counters import EDITS, REASONS  # noqa: E402
from pipeline.manifest import load_manifest  # noqa: E402
from pipeline.prepare import prepare  # noqa: E402

GERMAN = ("Der Fluss fließt langsam durch das alte Dorf, und am Abend sitzen die Leute vor ihren Häusern. "
          "Die Kinder spielen im Garten, während die Eltern über das Wetter und die Ernte sprechen. ") * 5
PII = " Write to jane.doe@mail.example.org or reach the server at 8.8.8.8 today."


def edited(text: str, rng: random.Random, words: int = 4) -> str:
    """``text`` with ``words`` of its ~120 words replaced: each changes the ~5 5-gram shingles that hold it."""
    tokens = text.split(" ")
    for i in rng.sample(range(len(tokens)), words):
        tokens[i] = rng.choice(["lantern", "thunder", "copper", "meadow", "violet", "pebble"])
    return " ".join(tokens)


def chain(seed_text: str) -> tuple[str, str, str]:
    """A, B, C with B an edit of A and C an edit of B such that A and B, and B and C, share an LSH band while A and
    C share none: only transitive clustering puts A and C together. Searched over edit seeds (the first fits)."""
    from pipeline.minhash import NearDedupConfig, band_keys, signature

    cfg = NearDedupConfig()
    keys = lambda t: set(band_keys(signature(t, cfg), cfg))  # noqa: E731
    a = seed_text
    for seed in range(1000):
        rng = random.Random(seed)
        b = edited(a, rng)
        c = edited(b, rng)
        if keys(a) & keys(b) and keys(b) & keys(c) and not keys(a) & keys(c):
            return a, b, c
    raise AssertionError("no chain found: the LSH settings changed")


def wet_file(path, pages) -> str:
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    writer.write_record(writer.create_warcinfo_record(os.path.basename(str(path)), {"software": "tests"}))
    for uri, text in pages:
        payload = text.encode("utf-8")
        writer.write_record(writer.create_warc_record(
            uri, "conversion", payload=io.BytesIO(payload), length=len(payload),
            warc_headers_dict={"Content-Type": "text/plain"}))
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two inputs (a WET file and a JSONL file) with a blocked site, a German page, an exact copy, a chain of
    near duplicates A~B~C (A and C differ in two words) and a page with an e-mail and a public IP address."""
    root = tmp_path_factory.mktemp("quality")
    a, b, c = chain(gopher_text(7001))
    pages = [(f"https://site{i}.example.com/p", gopher_text(7100 + i)) for i in range(12)]
    pages += [("https://ads.blocked.example/x", gopher_text(7200)),
              ("https://de.example.com/", GERMAN),
              ("https://chain.example.com/a", a), ("https://chain.example.com/b", b),
              ("https://mail.example.com/", gopher_text(7300) + PII)]
    os.makedirs(root / "in")
    wet = wet_file(root / "in" / "CC-MAIN-0.warc.wet.gz", pages)
    records = [{"id": f"j{i}", "text": gopher_text(7400 + i), "url": f"https://blog.example.net/{i}"} for i in range(12)]
    records += [{"id": "z-copy", "text": gopher_text(7100), "url": "https://copy.example.net/"},
                {"id": "z-chain-c", "text": c, "url": "https://www.blocked.example/c"}]
    jsonl = write_jsonl_file(root / "in" / "blog.jsonl.gz", records)
    blocklist = root / "blocklist.txt"
    blocklist.write_text("# test list\nblocked.example\n", encoding="utf-8")
    return {"root": root, "wet": wet, "jsonl": jsonl, "blocklist": str(blocklist), "a": a, "b": b, "c": c}


def argv(corpus, out, *extra):
    return ["--input", corpus["wet"], "--input", corpus["jsonl"], "--output", str(out), "--vocab-size", "400",
            "--train-shards", "2", "--val-shards", "1", "--val-fraction", "0.2", "--tokenizer-sample-mb", "1",
            "--rejected-files", "1", "--languages", "en", "--url-blocklist", corpus["blocklist"], "--redact-pii",
            "--no-progress", *extra]


def rejected(out) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(os.path.join(out, "rejected"))):
        with gzip.open(os.path.join(out, "rejected", name), "rt", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    return rows


def output_bytes(out) -> dict[str, bytes]:
    files = {}
    for split in ("train", "val"):
        for name in sorted(os.listdir(os.path.join(out, split))):
            files[f"{split}/{name}"] = open(os.path.join(out, split, name), "rb").read()
    files["tokenizer.model"] = open(os.path.join(out, "tokenizer.model"), "rb").read()
    return files


@pytest.fixture(scope="module")
def one_worker(corpus):
    out = corpus["root"] / "out1"
    return str(out), prepare(argv(corpus, out)).manifest


def test_every_stage_counts_and_explains_its_rejections(corpus, one_worker):
    out, m = one_worker
    docs = m["documents"]
    assert load_manifest(out, verify=True) == m
    assert set(docs["rejected"]) == set(REASONS)  # zeros included
    assert set(m["edits"]) == set(EDITS)
    assert docs["read"] == 17 + 14 == docs["kept"] + sum(docs["rejected"].values())
    assert {r: n for r, n in docs["rejected"].items() if n} == {
        "url_blocked": 2, "language": 1, "exact_duplicate": 1, "near_duplicate": 1}
    assert m["edits"]["pii_email"] == 1 and m["edits"]["pii_ip"] == 1
    assert m["edits"]["c4_lines_too_few_words"] > 0  # the blank lines between paragraphs
    assert m["languages"]["en"]["documents"] == docs["kept"]
    assert m["languages"]["en"]["tokens"] == m["tokens"]["train"] + m["tokens"]["val"]
    assert m["config"]["language"]["model"]["sha256"] and m["config"]["near_dedup"]["bands"] == 14

    rows = {r["id"]: r for r in rejected(out)}
    assert rows["https://ads.blocked.example/x"]["reason"] == "url_blocked"
    assert rows["z-chain-c"]["url"] == "https://www.blocked.example/c"  # blocked before it could join the chain
    german = rows["https://de.example.com/"]
    assert german["reason"] == "language" and german["language"] == "de" and german["language_score"] > 0.9
    near = rows["https://chain.example.com/b"]
    assert near["reason"] == "near_duplicate" and near["duplicate_of"] == "id:https://chain.example.com/a"
    assert near["source"] == f"{corpus['wet']}:17"  # the WARC record number: warcinfo is 1


def test_near_dedup_clusters_a_chain_transitively(corpus, tmp_path):
    """A~B and B~C, while A and C are not candidates (chain()): one cluster, A stays. C comes from the other input
    and from a blocked site: without the blocklist it reaches near-dedup."""
    out = tmp_path / "out"
    m = prepare([a for a in argv(corpus, out) if a not in ("--url-blocklist", corpus["blocklist"])]).manifest
    assert m["documents"]["rejected"]["near_duplicate"] == 2
    dup_of = {r["id"]: r.get("duplicate_of") for r in rejected(str(out)) if r["reason"] == "near_duplicate"}
    assert dup_of == {"https://chain.example.com/b": "id:https://chain.example.com/a",
                      "z-chain-c": "id:https://chain.example.com/a"}


def test_near_dedup_by_input_keeps_each_inputs_own_copy(corpus, tmp_path):
    out = tmp_path / "out"
    args = [a for a in argv(corpus, out) if a not in ("--url-blocklist", corpus["blocklist"])]
    m = prepare(args + ["--near-dedup-by", "input"]).manifest
    # B goes (A is in the same WET file); C is in the JSONL input, a group of its own, and stays.
    assert m["documents"]["rejected"]["near_duplicate"] == 1
    assert m["config"]["near_dedup_by"] == "input"


def test_two_workers_write_byte_identical_shards(corpus, one_worker, tmp_path):
    out1, m1 = one_worker
    out2 = tmp_path / "out2"
    m2 = prepare(argv(corpus, out2, "--max-group-mb", "0.01", "--direct_num_workers", "2",
                      "--direct_running_mode", "multi_processing")).manifest
    assert output_bytes(str(out2)) == output_bytes(out1)
    strip = lambda m: {k: v for k, v in m.items() if k != "config"}  # noqa: E731 -- config records the flags
    assert strip(m2) == strip(m1)
    texts = {}
    from pipeline.shards import ShardReader
    from pipeline.tokenizer import Tokenizer

    tok = Tokenizer(os.path.join(out1, "tokenizer.model"))
    for shard in m1["shards"]:
        reader = ShardReader(os.path.join(out1, shard["path"]))
        for i in range(len(reader)):
            texts[len(texts)] = tok.decode(reader[i].tolist())
    redacted = [t for t in texts.values() if "email@example.com" in t]
    assert len(redacted) == 1 and "192.0.2.1" in redacted[0] and "jane.doe" not in redacted[0]
    assert any(t.startswith(kept_text(corpus["a"])[:60]) for t in texts.values())


def test_each_stage_switches_off(corpus, tmp_path):
    """--no-language-id, --no-near-dedup, --rules gopher and no --url-blocklist / --redact-pii: the blocked pages,
    the near duplicates and the e-mail address reach the shards; the German page goes for Gopher's English stop
    words only."""
    out = tmp_path / "out"
    args = ["--input", corpus["wet"], "--input", corpus["jsonl"], "--output", str(out), "--vocab-size", "400",
            "--train-shards", "1", "--val-fraction", "0", "--tokenizer-sample-mb", "1", "--no-progress",
            "--no-language-id", "--no-near-dedup", "--rules", "gopher"]
    m = prepare(args).manifest
    assert {r: n for r, n in m["documents"]["rejected"].items() if n} == {"exact_duplicate": 1, "stop_words": 1}
    assert m["languages"] == {} and set(m["edits"].values()) == {0}
    assert m["config"]["language"] is None and m["config"]["near_dedup"] is None and m["config"]["c4"] is None
    with pytest.raises(ValueError, match="--no-language-id"):
        prepare(args + ["--languages", "en", "--overwrite"])
