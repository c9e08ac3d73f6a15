"""Tests of the pipeline's Beam stages (pipeline.read, filter_stage, dedup, tokenizer_stage, write, rejected,
manifest_stage) and their pure helpers: helpers without a runner, composite transforms on Beam's FnApiRunner.

    python -m pytest tests/test_transforms.py -q
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from references import require  # noqa: E402
beam = require("apache_beam")
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from pipeline import filters  # noqa: E402
from pipeline.counters import COUNTER_NAMESPACE  # noqa: E402
from pipeline.dedup import ExactDedup  # noqa: E402
from pipeline.documents import Document, Rejection, dedup_key, document_key  # noqa: E402
from pipeline.filter_stage import ParseRecords, QualityFilter, _ParseFn, _QualityFn  # noqa: E402
from pipeline.filters import FilterConfig  # noqa: E402
from pipeline.layout import RUNS_DIR, shard_path  # noqa: E402
from pipeline.manifest_stage import build_manifest  # noqa: E402
from pipeline.packing import (batch_limit, document_keys, pack_documents, pack_token_batch,  # noqa: E402
                              packed_size, token_batch_index, unpack_documents, unpack_token_batch)
from pipeline.read import JSON_LINE, READ_ERROR, TEXT_FILE, VALUE, ReadFiles, input_format, iter_lines  # noqa: E402
from pipeline.rejected import WriteRejected, _FormatRejectedFn, encode_lines, rejected_line  # noqa: E402
from pipeline.shards import ShardReader  # noqa: E402
from pipeline.split import assign_part, assign_shard, hash_unit  # noqa: E402
from pipeline.tokenizer import Tokenizer, train_tokenizer_bytes  # noqa: E402
from pipeline.tokenizer_stage import BottomKByHashFn, TokenizeAndAssign, tokenizer_info  # noqa: E402
from pipeline.write import WriteShards, in_key_order, remove_runs  # noqa: E402

# ------------------------------------------------------------------------------------------------------
# Pure helpers


@pytest.mark.parametrize("path,expected", [
    ("a.jsonl", "jsonl"), ("a.JSONL.GZ", "jsonl"), ("dir/b.json.zst", "jsonl"), ("c.ndjson.bz2", "jsonl"),
    ("d.parquet", "parquet"), ("d.parquet.gz", "parquet"), ("e.txt", "text"), ("e.txt.gz", "text"),
    ("image.png", "text"), ("noext", "text"),
])
def test_input_format_by_extension(path, expected):
    assert input_format(path) == expected


def test_input_format_forced():
    assert input_format("a.txt", "jsonl") == "jsonl"


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_iter_lines_matches_split_at_any_chunk_size(chunk):
    rng = random.Random(chunk)
    lines = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))).replace(b"\n", b"") for _ in range(50)]
    lines.append(b"x" * 1000)  # longer than every small chunk
    data = b"\n".join(lines)  # no trailing newline: the last line must still come out
    assert list(iter_lines(io.BytesIO(data), chunk)) == lines
    assert list(iter_lines(io.BytesIO(data + b"\n"), chunk)) == lines  # no empty line after a trailing newline


# Values computed once and pinned: a shard's contents are a function of these numbers, so a change to the
# hash (its salt format, encoding, byte order or bits) moves documents between shards of every existing run, and
# no test comparing a run with itself would notice.
HASH_UNITS = [
    ("id:a", "split", 0.7982280556131918),
    ("id:a", "train-shard", 0.9879750095065954),
    ("id:a", "val-shard", 0.997674208276307),
    ("sha256:00ff", "split", 0.11971173757492819),
    ("id:Ünï", "tokenizer-sample", 0.2874147404489177),
    ("", "split", 0.378086107689905),
]
SHARDS = [  # key, then assign_shard(key, 0.1, 8, 2), (key, 0.5, 1000, 3), (key, 0.0, 8, 0)
    ("id:a", ("train", 7), ("train", 987), ("train", 7)),
    ("id:b", ("train", 0), ("val", 1), ("train", 0)),
    ("id:doc-17", ("train", 3), ("val", 2), ("train", 3)),
    ("sha256:" + "ab" * 32, ("train", 2), ("val", 2), ("train", 2)),
    ("id:Ünï", ("val", 0), ("val", 0), ("train", 4)),
    ("id:\udc80", ("train", 6), ("train", 761), ("train", 6)),  # a lone surrogate, as a JSON id may hold
]


@pytest.mark.parametrize("key, salt, expected", HASH_UNITS)
def test_hash_unit_is_pinned(key, salt, expected):
    assert hash_unit(key, salt) == expected


@pytest.mark.parametrize("key, small, large, no_val", SHARDS)
def test_assign_shard_is_pinned(key, small, large, no_val):
    assert assign_shard(key, 0.1, 8, 2) == small
    assert assign_shard(key, 0.5, 1000, 3) == large
    assert assign_shard(key, 0.0, 8, 0) == no_val


def test_assign_shard_fractions_and_ranges():
    keys = [f"id:{i}" for i in range(4000)]
    assigned = [assign_shard(k, 0.1, 8, 2) for k in keys]
    val = sum(1 for split, _ in assigned if split == "val")
    assert 300 < val < 500  # ~10%
    train_idx = {i for split, i in assigned if split == "train"}
    val_idx = {i for split, i in assigned if split == "val"}
    assert train_idx == set(range(8)) and val_idx == {0, 1}
    assert all(assign_shard(k, 0.0, 8, 0)[0] == "train" for k in keys)


def test_shard_path():
    assert shard_path("train", 3, 8) == "train/shard-00003-of-00008"


def test_bottom_k_sample_does_not_depend_on_partitioning():
    rng = random.Random(0)
    items = [(rng.random(), "x" * rng.randrange(1, 50)) for _ in range(500)]
    fn = BottomKByHashFn(budget_chars=2000)

    def combine(parts):
        accs = []
        for part in parts:
            acc = fn.create_accumulator()
            for item in part:
                acc = fn.add_input(acc, item)
            accs.append(acc)
        return fn.extract_output(fn.merge_accumulators(accs))

    whole = combine([items])
    assert whole == combine([items[i::3] for i in range(3)]) == combine([items[:7], items[7:]])
    assert whole == sorted(items)[: len(whole)]  # the smallest hashes
    assert sum(len(x) for _, x in whole[:-1]) < 2000 <= sum(len(x) for _, x in whole) + 50


def test_build_manifest_checks_read_equals_kept_plus_rejected():
    info = {"kind": "sentencepiece", "path": "tokenizer.model", "vocab_size": 400, "eos_id": 2, "sha256": "0" * 64,
            "trained": True, "sample_chars": 10}
    shards = [{"split": "val", "path": "val/shard-00000-of-00001", "documents": 1, "tokens": 5,
               "sha256_bin": "a", "sha256_idx": "b"},
              {"split": "train", "path": "train/shard-00000-of-00001", "documents": 3, "tokens": 9,
               "sha256_bin": "c", "sha256_idx": "d"}]
    m = build_manifest(6, {"empty": 2}, shards, info, {"k": 1})
    assert m["documents"]["kept"] == 4 and m["documents"]["rejected"]["empty"] == 2
    assert m["documents"]["rejected"]["exact_duplicate"] == 0  # every known reason is listed
    assert m["tokens"] == {"train": 9, "val": 5}
    assert [s["split"] for s in m["shards"]] == ["train", "val"]
    with pytest.raises(RuntimeError, match="lost or duplicated"):
        build_manifest(7, {"empty": 2}, shards, info, {})


def test_packed_documents_round_trip_smaller():
    docs = [Document(id="a", text="Ünïcode text, tabs\tand\nnew lines. " * 40, source="f.jsonl:1"),
            Document(id="f.txt", text="x", source="f.txt", derived_id=True),
            Document(id="w", text="y", source="c.warc.wet.gz", url="https://a.example/", language="en")]
    keys = [("k1", ("id:a", "f.jsonl:1")), ("k2", ("sha256:0f", "f.txt")), ("k3", ("id:w", "c.warc.wet.gz"))]
    packed = pack_documents(keys, docs)
    assert unpack_documents(packed) == list(zip(keys, docs))
    assert document_keys(packed) == keys
    assert len(packed[1]) < len(docs[0].text.encode("utf-8")) / 4  # repetitive text: zstd shrinks it
    assert unpack_documents(pack_documents([], [])) == []


def test_packed_fields_are_compressed_too():
    """Short documents from long paths: the keys, ranks and sources of a batch, compressed with it, take a
    fraction of their raw size (they would otherwise outweigh the compressed texts)."""
    docs = [Document(id=f"doc-{i}", text=f"short text number {i}.", source=f"/data/crawl/2026-10/part-00017.jsonl:{i}")
            for i in range(2000)]
    keys = [(hashlib.sha256(d.text.encode()).hexdigest(), ("id:" + d.id, d.source)) for d in docs]
    raw_fields = sum(len(k) + len(r[0]) + len(r[1]) + len(d.id) + len(d.source) for (k, r), d in zip(keys, docs))
    packed = pack_documents(keys, docs)
    assert len(packed[0]) < raw_fields / 3
    assert packed_size(packed) == len(packed[0]) + len(packed[1])


def test_packed_token_batches_round_trip():
    items = [(("id:a", "k1"), np.arange(500, dtype=np.uint16).tobytes()), (("sha256:b", "k2"), b""),
             (("id:c", "k3"), np.array([7, 7, 2], np.uint16).tobytes())]
    packed = pack_token_batch(items)
    assert unpack_token_batch(packed) == items
    assert token_batch_index(packed) == ([k for k, _ in items], [1000, 0, 6])


def test_in_key_order_gives_every_documents_tokens_sorted_by_key(tmp_path, monkeypatch):
    """The shard writer's order, through the temporary file, equals sorting all (key, tokens) pairs in memory
    (the order every worker count agrees on), with batches in any order and documents of any length."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # let TMPDIR take effect for this test
    rng = random.Random(11)
    batches, everything = [], []
    for _ in range(7):
        items = [((f"id:{rng.getrandbits(40):x}", f"k{rng.getrandbits(30)}"),
                  np.array([rng.randrange(8000) for _ in range(rng.randrange(1, 300))], np.uint16).tobytes())
                 for _ in range(rng.randrange(0, 60))]
        everything += items
        batches.append(pack_token_batch(items))
    expected = sorted(everything)
    assert list(in_key_order(batches)) == expected
    assert list(in_key_order(batches[::-1])) == expected
    assert list(in_key_order([])) == []
    assert os.listdir(tmp_path) == []  # the temporary file is gone
    duplicate = pack_token_batch(everything[:1])
    with pytest.raises(RuntimeError, match="share the sort key"):
        list(in_key_order([duplicate, duplicate]))


def test_in_key_order_holds_one_batch_of_tokens_at_a_time():
    """The writer iterates a shard's batches twice (keys, then tokens) instead of listing them, so a runner that
    pages a big group's values (Dataflow) never has the shard's compressed tokens in memory at once: here the
    tokens of a batch exist only while that batch is being read, and a one-shot iterator is refused."""
    import gc

    live, made = [0], [0]

    class Blob(bytes):  # a compressed batch that counts how many of its kind are alive
        def __del__(self):
            live[0] -= 1

    rng = random.Random(5)
    items = [[((f"id:{rng.getrandbits(40):x}", "k"), np.arange(rng.randrange(1, 50), dtype=np.uint16).tobytes())
              for _ in range(20)] for _ in range(6)]

    class Paged:
        """A re-iterable that makes each batch anew on every pass, as a runner's paged values do."""

        def __iter__(self):
            for batch in items:
                index, blob = pack_token_batch(batch)
                blob = Blob(blob)
                live[0] += 1
                made[0] += 1
                yield index, blob
                del blob
                gc.collect()
                assert live[0] <= 1  # the consumer holds at most the batch it was last given

    expected = sorted(x for batch in items for x in batch)
    assert list(in_key_order(Paged())) == expected
    assert made[0] == 12  # two passes over the six batches
    with pytest.raises(RuntimeError, match="re-iterable"):
        list(in_key_order(iter([pack_token_batch(batch) for batch in items])))

    class Growing:
        """Gives one batch more on its second pass: those documents would have no place in the shard."""

        passes = 0

        def __iter__(self):
            self.passes += 1
            return iter([pack_token_batch(batch) for batch in items[:4 + self.passes]])

    with pytest.raises(RuntimeError, match="5 batches on their first pass and more on the second"):
        list(in_key_order(Growing()))


def test_rejected_lines_are_utf8_even_with_surrogates():
    line = rejected_line(Rejection(id="a\udc80", source="f\udcff.txt", reason="invalid_utf8", text="x"))
    assert b'"reason":"invalid_utf8"' in line
    block = encode_lines([line, rejected_line(Rejection(id="b", source="ok", reason="empty", text=""))])
    records = [json.loads(x) for x in block.decode("utf-8").splitlines()]  # strict UTF-8: would raise
    # The escape "\\udc80" is JSON's own: the record reads back with the name as it was.
    assert [r["id"] for r in records] == ["a\udc80", "b"] and records[0]["source"] == "f\udcff.txt"


def test_parse_refuses_an_unknown_raw_record_kind():
    """A kind no read stage produces means the stages disagree: the run fails instead of filing the record as
    unreadable (which would put the wrong reason in the manifest)."""
    with pytest.raises(RuntimeError, match="unknown raw record kind 'csv'"):
        list(_ParseFn("text", "id").process(("csv", "f.csv:1", b"a,b", None, None)))


def test_invariants_that_guard_written_data_hold_under_python_O(tmp_path):
    """These checks are not asserts: ``python -O`` (which strips asserts) still refuses to write a manifest whose
    counts do not add up, a shard with two documents under one sort key, or an unknown raw record kind."""
    code = """
import sys
from pipeline.filter_stage import _ParseFn
from pipeline.manifest_stage import build_manifest
from pipeline.packing import pack_token_batch
from pipeline.write import in_key_order
from pipeline.runs import merge_runs, write_run
import io
assert False, "asserts must be off here"
"""
    checks = {
        "manifest": "build_manifest(7, {'empty': 2}, [], {'vocab_size': 400, 'eos_id': 2, 'sha256': '0', "
                    "'trained': True, 'sample_chars': 1}, {})",
        "sort key": "list(in_key_order([pack_token_batch([(('id:a', 'k'), b'ab')])] * 2))",
        "kind": "list(_ParseFn('text', 'id').process(('csv', 'f', b'', None, None)))",
        "run order": "write_run(io.BytesIO(), [(('id:b', 'k'), b''), (('id:a', 'k'), b'')])",
        "merge key": "list(merge_runs([iter([(('id:a', 'k'), b'')]), iter([(('id:a', 'k'), b'')])]))",
    }
    for name, call in checks.items():
        script = code + f"try:\n    {call}\nexcept RuntimeError as e:\n    print('refused:', e)\n"
        out = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert out.returncode == 0, (name, out.stderr[-2000:])
        assert out.stdout.startswith("refused:"), (name, out.stdout)


# ------------------------------------------------------------------------------------------------------
# Composite transforms on the real local runner


def test_read_files_all_formats_and_a_binary_file(tmp_path, write_jsonl, make_text, beam_pipeline):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    a, b = make_text(1), make_text(2)
    write_jsonl(tmp_path / "a.jsonl.gz", [{"id": "g1", "text": a}])
    write_jsonl(tmp_path / "b.jsonl.zst", [{"id": "z1", "text": b}, {"id": "z2", "text": a}])
    (tmp_path / "c.txt").write_bytes(b.encode())
    (tmp_path / "c2.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(a.encode()))
    pq.write_table(pa.table({"text": [a, b], "id": ["p1", "p2"]}), tmp_path / "d.parquet")
    (tmp_path / "e.bin").write_bytes(bytes(range(256)) * 10)  # binary among inputs
    (tmp_path / "broken.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    paths = sorted(str(p) for p in tmp_path.iterdir())

    def summarize(rec):
        kind, source, payload, doc_id, url = rec
        name = source.rsplit("/", 1)[-1]
        return kind, name, payload if kind != READ_ERROR else "error", doc_id, url

    with beam_pipeline() as p:
        out = p | ReadFiles(paths) | beam.Map(summarize)
        assert_that(out, equal_to([
            (JSON_LINE, "a.jsonl.gz:1", f'{{"id": "g1", "text": {json.dumps(a)}}}'.encode(), None, None),
            (JSON_LINE, "b.jsonl.zst:1", f'{{"id": "z1", "text": {json.dumps(b)}}}'.encode(), None, None),
            (JSON_LINE, "b.jsonl.zst:2", f'{{"id": "z2", "text": {json.dumps(a)}}}'.encode(), None, None),
            (TEXT_FILE, "c.txt", b.encode(), None, None),
            (TEXT_FILE, "c2.txt.zst", a.encode(), None, None),
            (VALUE, "d.parquet:0", a, "p1", None),
            (VALUE, "d.parquet:1", b, "p2", None),
            (TEXT_FILE, "e.bin", bytes(range(256)) * 10, None, None),
            (READ_ERROR, "broken.jsonl.gz", "error", None, None),
        ]))


def test_parse_filter_dedup_stages(make_text, beam_pipeline):
    good, other = make_text(10), make_text(11)
    records = [
        (JSON_LINE, "f:1", ('{"id": "b", "text": %s}' % json.dumps(good)).encode(), None, None),
        (JSON_LINE, "f:2", ('{"id": "a", "text": %s}' % json.dumps(good.replace("\n\n", "\n \n"))).encode(), None,
         None),
        (JSON_LINE, "f:3", ('{"id": "c", "text": %s}' % json.dumps(other)).encode(), None, None),
        (JSON_LINE, "f:4", b"\xff\xfe not utf-8", None, None),
        (JSON_LINE, "f:5", b'{"no_text": 1}', None, None),
        (TEXT_FILE, "g.txt", b"   \n ", None, None),
        (VALUE, "h:0", "too short to keep", "s", None),
        (READ_ERROR, "x.gz", "cannot read x.gz", None, None),
    ]
    with beam_pipeline() as p:
        docs, bad, counts = p | beam.Create(records) | ParseRecords()
        assert_that(counts | beam.CombineGlobally(sum), equal_to([len(records)]), label="records")
        kept, low, _ = docs | QualityFilter(FilterConfig(), None, None)
        unique, early, dups = kept | ExactDedup()
        rejected = (bad, low, early, dups) | beam.Flatten()
        assert_that(unique | beam.Map(lambda kv: (kv[0], kv[1].id)),
                    equal_to([(dedup_key(good), "a"), (dedup_key(other), "c")]), label="unique")
        assert_that(rejected | beam.Map(lambda r: (r.source, r.reason)), equal_to([
            ("f:1", "exact_duplicate"),  # "id:b" > "id:a": the smaller document key stays
            ("f:4", "invalid_utf8"), ("f:5", "malformed_record"), ("g.txt", "empty"),
            ("h:0", "too_few_words"), ("x.gz", "unreadable_file"),
        ]), label="rejected")


@pytest.mark.parametrize("batch_chars", [1 << 20, 300])  # one batch at the end of the bundle; a batch every doc or two
def test_gopher_filter_in_batches_keeps_and_rejects_each_document_once(make_text, beam_pipeline, batch_chars):
    docs = [Document(id=f"d{i}", text=make_text(200 + i) if i % 3 else "short text " * (i + 1), source=f"f:{i}")
            for i in range(12)]
    expected = {d.id: filters.reject_reason(d.text, FilterConfig()) for d in docs}
    assert set(expected.values()) == {None, "too_few_words"}
    with beam_pipeline() as p:
        out = p | beam.Create(docs) | beam.ParDo(_QualityFn(FilterConfig(), None, None, batch_chars)).with_outputs(
            "rejected", "edits", main="kept")
        assert_that(out.kept | beam.Map(lambda d: d.id), equal_to([k for k, r in expected.items() if r is None]),
                    label="kept")
        assert_that(out.rejected | beam.Map(lambda r: (r.id, r.reason)),
                    equal_to([(k, r) for k, r in expected.items() if r is not None]), label="rejected")


@pytest.mark.parametrize("batch_bytes,parts", [(1 << 20, 1), (64, 1), (1 << 20, 4), (64, 7)])
def test_tokenize_and_write_shards(tmp_path, make_text, beam_pipeline, batch_bytes, parts):
    """Each shard holds its documents' tokens in key order, which is what the earlier writer (one group per shard,
    sorted whole) wrote: the same bytes whether a shard is written in 1 part or several, batched finely or not."""
    texts = {f"d{i:02d}": make_text(100 + i) for i in range(30)}
    model = train_tokenizer_bytes(list(texts.values()), 400)
    info = tokenizer_info(model, trained=False)
    tok = Tokenizer.from_bytes(model)
    docs = [(dedup_key(x), Document(id=i, text=x, source=f"s:{i}")) for i, x in texts.items()]
    out = str(tmp_path)
    plan = {"parts": {"train": parts, "val": 2}}
    with beam_pipeline() as p:
        tokenizer = p | "Tok" >> beam.Create([info])
        plan_pc = p | "Plan" >> beam.Create([plan])
        keyed, _ = p | beam.Create(docs) | TokenizeAndAssign(tokenizer, plan_pc, 0.2, 3, 2, batch_bytes)
        stats = keyed | WriteShards(tokenizer, plan_pc, out, 3, 2)
        assert_that(stats | beam.Map(lambda s: s["path"]), equal_to(
            [shard_path("train", i, 3) for i in range(3)] + [shard_path("val", i, 2) for i in range(2)]))
    # A run file per non-empty group of a split with several parts per shard; one part: the shard directly.
    groups = {(assign_shard(k, 0.2, 3, 2), assign_part(k, plan["parts"][assign_shard(k, 0.2, 3, 2)[0]]))
              for k in (document_key(d) for _, d in docs)}
    runs = sorted(os.listdir(tmp_path / RUNS_DIR))
    assert len(runs) == len([g for g in groups if plan["parts"][g[0][0]] > 1]) > 0
    assert remove_runs(out) == len(runs) and not (tmp_path / RUNS_DIR).exists()

    seen = {}
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            reader = ShardReader(str(tmp_path / shard_path(split, i, count)))
            expected = sorted((document_key(d), d.text) for _, d in docs
                              if assign_shard(document_key(d), 0.2, 3, 2) == (split, i))
            assert len(reader) == len(expected)
            for j, (key, text) in enumerate(expected):  # sorted by document key inside the shard
                assert reader[j].tolist() == tok.encode_document(text).tolist()
                seen[key] = split
    assert len(seen) == len(texts)
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]  # no temp files left behind


def test_open_token_batches_share_one_budget():
    """A tokenizing worker holds one open batch per write group: their sizes share OPEN_BATCHES_BYTES (16 MB)."""
    assert batch_limit(9) == 1 << 20  # the defaults (8 train + 1 val, 1 part each): 1 MB batches, 9 MB open
    assert batch_limit(65) == (16 << 20) // 65 and 65 * batch_limit(65) <= 16 << 20
    assert batch_limit(100_000) == 16 << 10  # the floor keeps batches worth compressing


def test_rejected_records_are_formatted_in_blocks_of_whole_lines(beam_pipeline):
    rejections = [Rejection(id=str(i), source=f"s:{i}", reason="empty", text="line one\nline two") for i in range(10)]
    with beam_pipeline() as p:
        blocks = (p | beam.Create(rejections) | beam.ParDo(_FormatRejectedFn(block_chars=200)).with_outputs(
            "counts", main="blocks")).blocks
        lines = blocks | beam.FlatMap(lambda b: gzip.decompress(b).splitlines()) | beam.Map(lambda x: json.loads(x)["id"])
        assert_that(lines, equal_to([str(i) for i in range(10)]), label="lines")
        assert_that(blocks | beam.combiners.Count.Globally(), _more_than_one, label="several blocks")


def _more_than_one(counts):
    assert counts[0] > 1, f"expected several blocks, got {counts[0]}"


def test_write_shards_writes_empty_shards_too(tmp_path, make_text, beam_pipeline):
    info = tokenizer_info(train_tokenizer_bytes([make_text(300)], 320), trained=False)
    one = (("train", 2, 0), pack_token_batch([(("id:a", "k"), np.array([5, 6, 2], np.uint16).tobytes())]))
    with beam_pipeline() as p:
        tokenizer = p | "Tok" >> beam.Create([info])
        plan = p | "Plan" >> beam.Create([{"parts": {"train": 1, "val": 1}}])
        stats = p | beam.Create([one]) | WriteShards(tokenizer, plan, str(tmp_path), 4, 1)
        assert_that(stats | beam.Map(lambda s: (s["path"], s["documents"], s["tokens"])), equal_to(
            [(shard_path("train", i, 4), int(i == 2), 3 * (i == 2)) for i in range(4)]
            + [(shard_path("val", 0, 1), 0, 0)]))
    for i in range(4):
        assert len(ShardReader(str(tmp_path / shard_path("train", i, 4)))) == int(i == 2)
    assert len(ShardReader(str(tmp_path / shard_path("val", 0, 1)))) == 0


@pytest.mark.parametrize("num_files", [2, 0])
def test_write_rejected_counts_and_gzip(tmp_path, beam_pipeline, num_files):
    rejections = [Rejection(id=str(i), source=f"s:{i}", reason="empty" if i % 2 else "nul_bytes", text="")
                  for i in range(10)]
    p = beam_pipeline()
    rejected = p | beam.Create(rejections)
    files, counts = rejected | WriteRejected(str(tmp_path), "quality", num_files)
    names = files | beam.Map(lambda f: f.rsplit("/", 1)[-1])
    if num_files:
        assert_that(names, equal_to(["quality-00000-of-00002.jsonl.gz", "quality-00001-of-00002.jsonl.gz"]))
    # One (reason, count) pair per reason and bundle: their sums are the counts.
    assert_that(counts | beam.CombinePerKey(sum), equal_to([("empty", 5), ("nul_bytes", 5)]), label="counts")
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]}
    assert counters == {"rejected_empty": 5, "rejected_nul_bytes": 5}  # one Beam counter per reason
    # With num_files 0 there is one file per bundle, as many as the runner made bundles, named after the stage.
    on_disk = sorted(f.name for f in (tmp_path / "rejected").iterdir())
    assert on_disk and all(re.fullmatch(r"quality-\d{5}-of-\d{5}\.jsonl\.gz", n) for n in on_disk), on_disk
    lines = []
    for path in sorted((tmp_path / "rejected").iterdir()):
        lines += [json.loads(x) for x in gzip.decompress(path.read_bytes()).splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(str(i) for i in range(10))
    assert {r["reason"] for r in lines} == {"empty", "nul_bytes"}
    _assert_valid_gzip(sorted((tmp_path / "rejected").iterdir()))


def _assert_valid_gzip(paths):
    """gzip -t on each file: stricter than Python's gzip, which reads an empty file as empty data."""
    assert paths
    if shutil.which("gzip"):
        for path in paths:
            assert subprocess.run(["gzip", "-t", str(path)]).returncode == 0, path
    for path in paths:
        assert path.read_bytes()[:2] == b"\x1f\x8b", path  # starts with a gzip member, even when empty


def test_write_rejected_with_nothing_rejected_still_writes_valid_gzip(tmp_path, beam_pipeline):
    with beam_pipeline() as p:
        _ = p | beam.Create([]).with_output_types(Rejection) | WriteRejected(str(tmp_path), "dedup", 0)
    files = sorted((tmp_path / "rejected").iterdir())
    _assert_valid_gzip(files)
    assert b"".join(gzip.decompress(f.read_bytes()) for f in files) == b""
