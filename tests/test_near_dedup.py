"""Tests of near-duplicate removal: the connected-components steps (pure and as Beam stages), the NearDedup
stage on Beam's FnApiRunner, and the outcome against datatrove's MinHash pipeline (its 4 stages).

    python -m pytest tests/test_near_dedup.py -q
"""
from __future__ import annotations

import json
import os
import random
import string
import tempfile
from collections import defaultdict
import pytest

from references import require  # noqa: E402
beam = require("apache_beam")
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from pipeline.components import (ConnectedComponents, components, large_star, salted_large_star,  # noqa: E402
                                 small_star)
from pipeline.dedup import rank  # noqa: E402
from pipeline.documents import Document, dedup_key, document_key  # noqa: E402
from pipeline.minhash import NearDedupConfig, band_keys, signature  # noqa: E402
from pipeline.input_groups import InputGroups  # noqa: E402
from pipeline.near_dedup import NearDedup  # noqa: E402
from pipeline.packing import document_keys  # noqa: E402
from pipeline.prepare import pipeline_options  # noqa: E402

CFG = NearDedupConfig()


def reference_labels(edges) -> dict:
    """{node: smallest node of its component} for every node that is not the smallest: by union-find."""
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in list(parent) if find(x) != x}


def run_pipeline(build):
    """Build with ``build(p)`` and run on the FnApiRunner, as pipeline.prepare runs locally."""
    options, runner = pipeline_options([])
    with beam.Pipeline(runner=runner, options=options) as p:
        build(p)


# ------------------------------------------------------------------------------------------------------
# The steps, without Beam

def test_large_star_links_larger_neighbours_to_the_smallest():
    assert sorted(large_star(5, [7, 3, 9, 6])) == [(6, 3), (7, 3), (9, 3)]
    assert sorted(large_star(2, [7, 4])) == [(4, 2), (7, 2)]  # u is the smallest: its star stays
    assert list(large_star(9, [1, 2])) == []  # no larger neighbour: the edges are handled at 1 and 2


def test_small_star_links_the_node_and_smaller_neighbours_to_the_smallest():
    assert sorted(small_star(9, [4, 2, 7])) == [(4, 2), (7, 2), (9, 2)]
    assert list(small_star(9, [2, 2])) == [(9, 2)]
    assert list(small_star(3, [])) == []


@pytest.mark.parametrize("graph", ["chain", "shuffled_chain", "star", "two_stars_joined", "random"])
def test_components_match_union_find(graph):
    rng = random.Random(7)
    if graph == "chain":
        edges = [(i, i + 1) for i in range(500)]
    elif graph == "shuffled_chain":
        order = list(range(501))
        rng.shuffle(order)
        edges = [(order[i], order[i + 1]) for i in range(500)]
    elif graph == "star":
        edges = [(500, i) for i in range(500)]  # centre is the largest node
    elif graph == "two_stars_joined":
        edges = [(100, i) for i in range(101, 200)] + [(300, i) for i in range(301, 400)] + [(399, 150)]
    else:
        edges = [(rng.randrange(400), rng.randrange(400)) for _ in range(300)]
    labels, rounds = components(edges, max_rounds=30)
    assert labels == reference_labels(edges)
    assert components(edges, max_rounds=30, salts=2) == (labels, rounds)
    assert rounds >= 1


def test_chain_rounds_grow_logarithmically():
    """A chain of n nodes converges in O(log n) rounds, not n."""
    rounds = [components([(i, i + 1) for i in range(n)], 50)[1] for n in (16, 256, 4096)]
    assert rounds == sorted(rounds) and rounds[-1] <= 16, rounds


def test_components_fail_when_rounds_run_out():
    with pytest.raises(RuntimeError, match="--minhash-max-rounds"):
        components([(i, i + 1) for i in range(1000)], max_rounds=2)


# ------------------------------------------------------------------------------------------------------
# The Beam stages on the FnApiRunner

def test_beam_components_match_union_find():
    rng = random.Random(8)
    order = list(range(300))
    rng.shuffle(order)
    edges = [(order[i], order[i + 1]) for i in range(120)]  # a chain of 121 nodes in shuffled order
    edges += [(rng.randrange(150, 300), rng.randrange(150, 300)) for _ in range(150)]
    edges += [(e[1], e[0]) for e in edges[:10]]  # the same edges twice, both ways
    expected = sorted(reference_labels(edges).items())
    for salts in (1, 5):
        run_pipeline(lambda p: assert_that(p | beam.Create(edges) | ConnectedComponents(12, salts),
                                           equal_to(expected)))


def test_beam_components_fail_when_rounds_run_out():
    with pytest.raises(Exception, match="--minhash-max-rounds"):
        run_pipeline(lambda p: p | beam.Create([(i, i + 1) for i in range(200)]) | ConnectedComponents(1))


def letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    return [letters(rng, rng.randint(3, 9)) for _ in range(size)]


def edit(ws: list[str], count: int, rng: random.Random, lo: int = 0, hi: int | None = None) -> list[str]:
    """``ws`` with ``count`` words at positions in [lo, hi) replaced by new letter-only words."""
    out = list(ws)
    for i in rng.sample(range(lo, len(ws) if hi is None else hi), count):
        out[i] = "q" + letters(rng, 8)
    return out


def candidates(a: str, b: str, group: str = "") -> bool:
    return bool(set(band_keys(signature(a, CFG), CFG, group)) & set(band_keys(signature(b, CFG), CFG, group)))


def chain_texts(rng: random.Random, vocab: list[str]) -> tuple[str, str, str]:
    """A ~ B ~ C with A and C not candidates: B edits A's first half, C edits B's second half."""
    for _ in range(100):
        a = [rng.choice(vocab) for _ in range(240)]
        b = edit(a, 4, rng, 0, 120)
        c = edit(b, 4, rng, 120, 240)
        a, b, c = " ".join(a), " ".join(b), " ".join(c)
        if candidates(a, b) and candidates(b, c) and not candidates(a, c):
            return a, b, c
    raise AssertionError("no chain fixture found")


def near_dedup(docs: list[Document], **kwargs) -> tuple[dict, dict]:
    """Run NearDedup on ``docs`` -> ({id: dedup_key} kept, {id: duplicate_of} rejected)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")

        def build(p):
            kept, rejected = p | beam.Create([(dedup_key(d.text), d) for d in docs]) | NearDedup(**kwargs)
            kept = kept | "Kept" >> beam.Map(lambda kv: ("kept", kv[1].id, kv[0]))
            rejected = rejected | "Rejected" >> beam.Map(
                lambda r: ("rejected", r.id, r.reason, dict(r.details)["duplicate_of"]))
            ((kept, rejected) | beam.Flatten() | beam.combiners.ToList()
             | beam.Map(lambda rows: open(path, "w").write(json.dumps(rows))))

        run_pipeline(build)
        with open(path) as f:
            rows = json.load(f)
    kept = {r[1]: r[2] for r in rows if r[0] == "kept"}
    rejected = {r[1]: r[3] for r in rows if r[0] == "rejected"}
    assert all(r[2] == "near_duplicate" for r in rows if r[0] == "rejected")
    assert len(kept) + len(rejected) == len(rows) == len(docs)
    return kept, rejected


def test_chain_is_removed_transitively():
    rng = random.Random(11)
    vocab = vocabulary(rng)
    a, b, c = chain_texts(rng, vocab)
    other = " ".join(rng.choice(vocab) for _ in range(240))
    docs = [Document("c", c, "f:3"), Document("a", a, "f:1"), Document("b", b, "f:2"), Document("x", other, "f:4"),
            Document("tiny", "too short", "f:5")]
    kept, rejected = near_dedup(docs, cfg=CFG, buckets=3)
    assert rejected == {"b": "id:a", "c": "id:a"}
    assert kept == {"a": dedup_key(a), "x": dedup_key(other), "tiny": dedup_key("too short")}


def test_kept_document_is_the_smallest_rank_whatever_the_order_and_window():
    rng = random.Random(12)
    vocab = vocabulary(rng)
    base = [rng.choice(vocab) for _ in range(200)]
    docs = [Document(f"d{i}", " ".join(edit(base, 3, rng)), f"f:{i}") for i in range(12)]
    expected_kept = min(docs, key=rank)
    for order, window_keys, buckets in ((docs, 1 << 17, 1), (docs[::-1], 3, 4)):
        kept, rejected = near_dedup(order, cfg=CFG, buckets=buckets, window_keys=window_keys)
        assert set(kept) == {expected_kept.id}
        assert rejected == {d.id: document_key(expected_kept) for d in docs if d is not expected_kept}


def test_dedup_within_groups_only():
    rng = random.Random(13)
    vocab = vocabulary(rng)
    base = [rng.choice(vocab) for _ in range(200)]
    docs = [Document(f"{crawl}-{i}", " ".join(edit(base, 2, rng)), f"{crawl}/part.jsonl:{i}")
            for crawl in ("crawl1", "crawl2") for i in range(3)]
    groups = InputGroups({"crawl1/part.jsonl": "input-0", "crawl2/part.jsonl": "input-1"})
    kept, rejected = near_dedup(docs, cfg=CFG, buckets=2, group_of=groups)
    assert set(kept) == {"crawl1-0", "crawl2-0"}
    assert rejected == {"crawl1-1": "id:crawl1-0", "crawl1-2": "id:crawl1-0",
                        "crawl2-1": "id:crawl2-0", "crawl2-2": "id:crawl2-0"}
    kept, rejected = near_dedup(docs, cfg=CFG, buckets=2)
    assert set(kept) == {"crawl1-0"} and len(rejected) == 5


def test_config_is_validated():
    with pytest.raises(ValueError, match="--minhash-rows"):
        NearDedup(NearDedupConfig(rows=0))


# ------------------------------------------------------------------------------------------------------
# Against datatrove's MinHash pipeline

def planted_corpus(seed: int = 21):
    """Letters-only documents (datatrove maps digits to 0): clusters of edits at Jaccard ~0.8-0.9 of a base,
    chains A ~ B ~ C ~ D (each an edit of the one before), and unrelated documents.
    -> (docs, {id: kind}, chains): kind "base", "dup" (a planted duplicate) or "unrelated"; each chain's ids."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    docs, kinds, chains = [], {}, []

    def add(kind, ws):
        doc_id = f"{len(docs):05d}"
        docs.append(Document(doc_id, " ".join(ws), f"corpus.jsonl:{len(docs) + 1}"))
        kinds[doc_id] = kind
        return doc_id

    for _ in range(70):  # clusters: a base and 3-5 edits of it
        base = [rng.choice(vocab) for _ in range(rng.randint(200, 400))]
        add("base", base)
        for _ in range(rng.randint(3, 5)):
            # 5-gram Jaccard ~ (n - 5k) / (n + 5k) for k scattered edits in n words: ~0.83-0.9
            k = max(1, round(len(base) * rng.uniform(0.011, 0.019)))
            add("dup", edit(base, k, rng))
    for _ in range(15):  # chains of 4, each step an edit of the previous document
        ws = [rng.choice(vocab) for _ in range(300)]
        chains.append([add("base", ws)])
        for _ in range(3):
            ws = edit(ws, 4, rng)
            chains[-1].append(add("dup", ws))
    for _ in range(250):
        add("unrelated", [rng.choice(vocab) for _ in range(rng.randint(150, 400))])
    order = list(range(len(docs)))
    rng.shuffle(order)
    return [docs[i] for i in order], kinds, chains


def datatrove_removed(docs: list[Document], tmp_path) -> set[str]:
    """Ids datatrove's 4 MinHash stages remove (FineWeb's settings), through LocalPipelineExecutor."""
    require("datatrove")
    from datatrove.data import Document as DatatroveDocument
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class SplitWords(WordTokenizer):
        """Whitespace words of the simplified text, as ours are; on the letters-only fixture datatrove's default
        English tokenizer (spaCy) splits at the same places, and this keeps the reference free of its loading."""

        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    # FineWeb's settings, 64-bit shingle hashes by sha1: datatrove's default xxhash call passes a str, which
    # xxhash >= 4 refuses (TypeError). Which hash makes the shingles does not change which documents match.
    config = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"))
    data = [DatatroveDocument(text=d.text, id=d.id) for d in docs]
    sigs, buckets, clusters = (str(tmp_path / n) for n in ("sigs", "buckets", "clusters"))
    kept_file = tmp_path / "kept.txt"

    def record_kept(data, rank: int = 0, world_size: int = 1):
        with open(kept_file, "w") as f:
            for doc in data:
                f.write(doc.id + "\n")
                yield doc

    stages = [
        ([data, MinhashDedupSignature(sigs, config=config, language=SplitWords())], 1),
        ([MinhashDedupBuckets(sigs, buckets, config=config)], config.num_buckets),
        ([MinhashDedupCluster(buckets, clusters, config=config)], 1),
        ([data, MinhashDedupFilter(clusters), record_kept], 1),
    ]
    for i, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1,
                              logging_dir=str(tmp_path / f"logs{i}")).run()
    kept = set(kept_file.read_text().split())
    return {d.id for d in docs} - kept


def test_matches_datatrove_on_planted_clusters(tmp_path):
    docs, kinds, _ = planted_corpus()
    theirs = datatrove_removed(docs, tmp_path)
    kept, rejected = near_dedup(docs, cfg=CFG, buckets=4)
    ours = set(rejected)
    assert set(kept) | ours == set(kinds) and not set(kept) & ours
    planted = {i for i, k in kinds.items() if k == "dup"}
    unrelated = {i for i, k in kinds.items() if k == "unrelated"}
    assert len(planted) >= 150 and len(unrelated) == 250
    assert abs(len(ours) - len(theirs)) <= 0.01 * len(theirs), (len(ours), len(theirs))
    assert len(ours & planted) >= 0.97 * len(planted), len(ours & planted)
    assert len(ours & unrelated) <= 0.01 * len(unrelated)
    # Every cluster keeps its smallest document key, and the ones it removes name it.
    by_id = {d.id: d for d in docs}
    for doc_id, kept_key in rejected.items():
        assert kept_key < document_key(by_id[doc_id]) and kept_key.removeprefix("id:") in kept


def test_chains_removed_transitively_in_the_planted_corpus():
    """Each chain keeps its first document; the others, even the last, 3 edits away from it, name it."""
    docs, _, chains = planted_corpus()
    kept, rejected = near_dedup(docs, cfg=CFG, buckets=2)
    by_id = {d.id: d for d in docs}
    assert len(chains) == 15
    assert sum(not candidates(by_id[c[0]].text, by_id[c[-1]].text) for c in chains) >= 3  # not all direct
    for first, *rest in chains:
        assert first in kept and all(rejected.get(m) == f"id:{first}" for m in rest), (first, rest)


def test_sign_sends_a_repeated_band_key_once_per_bundle():
    """A page repeated 400 times among 600 other documents, twice per window: its band keys reach the band
    groups once each, not once per window, and every copy is still connected to the first through the edges
    emitted on the spot."""
    from pipeline.near_dedup import _SignFn
    rng = random.Random(14)
    vocab = vocabulary(rng, 5000)
    page = " ".join(rng.choice(vocab) for _ in range(100))
    docs = []
    for cycle in range(200):  # page, page, 3 others: 14 + 3 x 14 = 56 band keys, one window
        docs += [Document(f"p{cycle:03d}{j}", page, f"f:{cycle}:{j}") for j in range(2)]
        docs += [Document(f"u{cycle:03d}{j}", " ".join(rng.choice(vocab) for _ in range(100)), "g") for j in range(3)]
    fn = _SignFn(CFG, buckets=4, group_of=None, window_keys=56)
    fn.start_bundle()
    outputs = [o for d in docs for o in fn.process((dedup_key(d.text), d))] + list(fn.finish_bundle())
    tagged = defaultdict(list)
    for o in outputs:
        tag, value = (o.tag, o.value) if isinstance(o, beam.pvalue.TaggedOutput) else ("docs", o)
        tagged[tag].append(getattr(value, "value", value))  # finish_bundle's outputs are windowed
    assert sum(len(document_keys(packed)) for _, (kind, packed) in tagged["docs"]) == 1000  # every document, in batches per bucket
    assert len(tagged["docs"]) < 1000
    page_keys = set(band_keys(signature(page, CFG), CFG))
    sent = [k for k, _ in tagged["bands"] if k in page_keys]
    assert sorted(sent) == sorted(page_keys)  # once per key, not 200 windows x 14
    assert len(tagged["bands"]) == 14 + 600 * 14
    smallest = {}
    for k, r in tagged["bands"]:
        smallest[k] = min(r, smallest.get(k, r))
    edges = tagged["edges"] + [(r, smallest[k]) for k, r in tagged["bands"]]
    copies = {rank(d) for d in docs if d.text == page}
    labels = reference_labels(edges)
    assert {labels.get(c, c) for c in copies} == {min(copies)} and set(labels) == copies - {min(copies)}


def test_hot_keys_give_the_same_outcome():
    rng = random.Random(15)
    vocab = vocabulary(rng)
    base = [rng.choice(vocab) for _ in range(200)]
    docs = [Document(f"h{i:02d}", " ".join(edit(base, 1, rng)), f"f:{i}") for i in range(30)]
    docs += [Document(f"u{i:02d}", " ".join(rng.choice(vocab) for _ in range(200)), f"g:{i}") for i in range(10)]
    for window_keys in (1 << 17, 14 * 3, 1):
        kept, rejected = near_dedup(docs[::-1], cfg=CFG, buckets=2, window_keys=window_keys)
        assert set(kept) == {"h00"} | {f"u{i:02d}" for i in range(10)}
        assert rejected == {f"h{i:02d}": "id:h00" for i in range(1, 30)}


@pytest.mark.parametrize("salts", [1, 3, 4096])
def test_salted_large_star_equals_large_star(salts):
    rng = random.Random(salts)
    edges = {(max(a, b), min(a, b)) for a, b in ((rng.randrange(60), rng.randrange(60)) for _ in range(150)) if a != b}
    plain = []
    neighbours = defaultdict(list)
    for c, p in edges:
        neighbours[c].append(p)
        neighbours[p].append(c)
    for u in sorted(neighbours):
        plain += large_star(u, neighbours[u])
    assert sorted(salted_large_star(edges, salts)) == sorted(plain)


def test_a_stars_centre_is_split_into_parts():
    """A star of 20,000 leaves: no large-star group holds more than a small share of them."""
    from pipeline.components import large_star_children
    sizes = defaultdict(int)
    for leaf in range(1, 20_001):
        for key, _ in large_star_children((leaf, 0), 64):
            sizes[key] += 1
    assert len(sizes) == 64 and max(sizes.values()) < 2 * 20_000 / 64
    labels, _ = components([(leaf, 0) for leaf in range(1, 2001)] + [(0, 5000), (5000, -1)], 10, salts=8)
    assert set(labels.values()) == {-1} and len(labels) == 2002


def test_input_groups_name_the_glob_of_each_source():
    groups = InputGroups({"crawl/a.jsonl": "input-0", "gs://bucket/x.parquet": "input-1", "notes/readme.txt": "builtin",
                          "cc/b.warc.wet.gz": "input-2"})
    assert groups(Document("a", "t", "crawl/a.jsonl:12")) == "input-0"
    assert groups(Document("a", "t", "gs://bucket/x.parquet:0")) == "input-1"
    assert groups(Document("a", "t", "notes/readme.txt")) == "builtin"
    assert groups(Document("a", "t", "cc/b.warc.wet.gz:7")) == "input-2"
    assert groups(Document("a", "t", "hf:name:train:7")) == "hf"
    with pytest.raises(RuntimeError, match="names no input file"):
        groups(Document("a", "t", "elsewhere/c.jsonl:1"))
