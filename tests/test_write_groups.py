"""Every grouping of the preparation pipeline is bounded by its shape: run files and their merge (pipeline.runs),
the write plan (pipeline.write.plan_parts), dedup of a text repeated thousands of times (pipeline.dedup), and the
group sizes and counts the pipeline reports itself (its distribution metrics)."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest

from references import require

beam = require("apache_beam")

from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from pipeline.counters import COUNTER_NAMESPACE, EXACT_DUPLICATE, GROUP_METRICS  # noqa: E402
from pipeline.dedup import ExactDedup  # noqa: E402
from pipeline.documents import Document, dedup_key  # noqa: E402
from pipeline.packing import pack_documents, packed_size  # noqa: E402
from pipeline.runs import merge_runs, read_run, write_run  # noqa: E402
from pipeline.write import plan_parts  # noqa: E402


def _items(rng: random.Random, n: int) -> list:
    return sorted(((f"id:{rng.getrandbits(48):012x}", f"k{rng.getrandbits(20)}"),
                   np.array([rng.randrange(60000) for _ in range(rng.randrange(0, 200))], np.uint16).tobytes())
                  for _ in range(n))


def test_run_files_round_trip_and_merge_into_one_sorted_sequence():
    rng = random.Random(3)
    runs = [_items(rng, rng.randrange(0, 80)) for _ in range(6)]
    files = []
    for items in runs:
        f = io.BytesIO()
        assert write_run(f, items) == len(items)
        files.append(f.getvalue())
    for items, data in zip(runs, files):
        assert list(read_run(io.BytesIO(data))) == items
    everything = sorted(x for items in runs for x in items)
    merged = list(merge_runs([read_run(io.BytesIO(data)) for data in files]))
    assert merged == [tokens for _, tokens in everything]
    # A key of odd characters survives (lone surrogates come from undecodable file names in derived ids).
    odd = [(("id:\udcff", "é"), b"\x01\x00")]
    f = io.BytesIO()
    write_run(f, odd)
    assert list(read_run(io.BytesIO(f.getvalue()))) == odd


def test_a_damaged_run_file_is_an_error_naming_it():
    f = io.BytesIO()
    write_run(f, _items(random.Random(1), 30))
    data = f.getvalue()
    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    cut = zstandard.ZstdCompressor().compress(raw[: len(raw) - 5])
    with pytest.raises(ValueError, match="run-7 ends in the middle of a record"):
        list(read_run(io.BytesIO(cut), "run-7"))
    with pytest.raises(ValueError, match="other is not a run file"):
        list(read_run(io.BytesIO(zstandard.ZstdCompressor().compress(b"hello world")), "other"))


def test_plan_parts_keeps_groups_under_the_bound_and_gives_every_worker_a_group():
    mb = 1 << 20
    counts = {"train": 8, "val": 1}
    # 400 MB of kept text, 2-byte tokens at one per byte (the plan's worst case): 100 MB per train shard.
    parts = plan_parts(400 * mb, 0.01, counts, 16 * mb, 2, 2)
    assert parts["train"] == 7 and parts["val"] == 1  # 99 MB / 16 MB -> 7 parts; 8 MB of val -> 1
    assert 400 * mb * 0.99 * 2 / 8 / parts["train"] <= 16 * mb
    # A tiny corpus: one part, unless the workers outnumber the train shards.
    assert plan_parts(1000, 0.01, counts, 256 * mb, 2, 2) == {"train": 1, "val": 1}
    assert plan_parts(1000, 0.01, {"train": 1, "val": 1}, 256 * mb, 16, 2) == {"train": 16, "val": 1}
    assert plan_parts(1000, 0.0, {"train": 3, "val": 0}, 256 * mb, 8, 4) == {"train": 3, "val": 0}


def _distribution(result, step: str):
    found = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["distributions"]
    values = [m.committed for m in found if m.key.metric.name == GROUP_METRICS[step]]
    assert values, f"no {GROUP_METRICS[step]} metric reported"
    return values[0]


@pytest.mark.parametrize("window_bytes", [16 << 20, 2000])  # one window per bundle; a window every few documents
def test_a_text_repeated_thousands_of_times_is_never_one_group(beam_pipeline, make_text, window_bytes):
    """2,000 copies of one text among 300 other documents, 4 buckets: exactly one copy stays (the smallest key),
    the others are exact_duplicate, and no dedup group holds more than a few of the copies (the distribution the
    pipeline records): they are dropped where they are read, whatever the window."""
    copies, others = 2000, 300
    hot = make_text(7)
    docs = [Document(id=f"copy-{i:05d}", text=hot, source=f"hot.jsonl:{i}") for i in range(copies)]
    docs += [Document(id=f"doc-{i:04d}", text=make_text(1000 + i), source=f"f.jsonl:{i}") for i in range(others)]
    random.Random(0).shuffle(docs)
    p = beam_pipeline()
    unique, early, late = p | beam.Create(docs) | ExactDedup(4, window_bytes=window_bytes)
    assert_that(unique | beam.Map(lambda kv: kv[1].id),
                equal_to(["copy-00000"] + [f"doc-{i:04d}" for i in range(others)]), label="kept")
    assert_that((early, late) | beam.Flatten() | beam.Map(lambda r: (r.id, r.reason)),
                equal_to([(f"copy-{i:05d}", EXACT_DUPLICATE) for i in range(1, copies)]), label="duplicates")
    result = p.run()
    result.wait_until_finish()
    dist = _distribution(result, "dedup")
    assert dist.count <= 4
    one_copy = packed_size(pack_documents([("k", ("id", "s"))], [docs[0]])) + 100
    everything_else = sum(packed_size(pack_documents([("k", ("id", "s"))], [d])) for d in docs if d.text != hot) + 100 * others
    assert dist.max < everything_else + 20 * one_copy  # far from 2,000 copies


def test_dedup_keeps_the_smallest_key_whatever_the_input_order_and_buckets(beam_pipeline, make_text):
    text = make_text(3)
    docs = [Document(id=i, text=text if i != "solo" else make_text(4), source=f"s:{i}")
            for i in ("m", "b", "z", "solo", "c")]
    docs.append(Document(id="b", text=text, source="s:b"))  # the same record twice: one stays
    for order, buckets, window in ((docs, 1, 1 << 20), (docs[::-1], 3, 1 << 20), (docs, 2, 1)):
        with beam_pipeline() as p:
            unique, early, late = p | beam.Create(order) | ExactDedup(buckets, window_bytes=window)
            assert_that(unique | beam.Map(lambda kv: (kv[0], kv[1].id)),
                        equal_to([(dedup_key(text), "b"), (dedup_key(make_text(4)), "solo")]), label="kept")
            assert_that((early, late) | beam.Flatten() | beam.Map(lambda r: r.id), equal_to(["b", "c", "m", "z"]),
                        label="dups")


def test_a_shard_merged_from_parts_is_byte_identical_to_the_shard_written_whole(beam_pipeline, make_text, tmp_path):
    """The earlier writer gave each shard one group and sorted it whole; a plan of one part per shard still does
    exactly that. The same documents in 1 and in 5 parts per shard (run files, then the merge) give the same
    .bin and .idx bytes."""
    from pipeline.tokenizer import train_tokenizer_bytes
    from pipeline.tokenizer_stage import TokenizeAndAssign, tokenizer_info
    from pipeline.write import WriteShards, remove_runs

    texts = {f"doc-{i:03d}": make_text(500 + i) for i in range(80)}
    info = tokenizer_info(train_tokenizer_bytes(list(texts.values()), 400), trained=False)
    docs = [(dedup_key(t), Document(id=i, text=t, source=f"s:{i}")) for i, t in texts.items()]
    written = {}
    for parts in (1, 5):
        out = tmp_path / f"parts-{parts}"
        with beam_pipeline() as p:
            tokenizer = p | "Tok" >> beam.Create([info])
            plan = p | "Plan" >> beam.Create([{"parts": {"train": parts, "val": parts}}])
            keyed, _ = p | beam.Create(docs) | TokenizeAndAssign(tokenizer, plan, 0.1, 2, 1, 256)
            _ = keyed | WriteShards(tokenizer, plan, str(out), 2, 1)
        assert (out / "_runs").is_dir() == (parts > 1)
        remove_runs(str(out))
        written[parts] = {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("shard-*"))}
    assert len(written[1]) == 6 and written[1] == written[5]
