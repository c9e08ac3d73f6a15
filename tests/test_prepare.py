"""End-to-end tests of `python -m pipeline.prepare` through run(argv) on Beam's local FnApiRunner.

    python -m pytest tests/test_prepare.py -q
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil

import pytest

from references import require  # noqa: E402
require("apache_beam")

from conftest import PREPARE_OPTIONS, gopher_text, kept_text, write_jsonl_file  # noqa: E402
from pipeline.counters import REASONS  # noqa: E402
from pipeline.manifest import load_manifest  # noqa: E402
from pipeline.prepare import check_output, main, prepare, run  # noqa: E402
from pipeline.shards import ShardReader, sha256_file  # noqa: E402
from pipeline.split import assign_shard  # noqa: E402
from pipeline.tokenizer import Tokenizer  # noqa: E402


def shard_files(out: str) -> dict[str, bytes]:
    """Every output file that must be byte-identical across runs: shards and the tokenizer."""
    files = {"tokenizer.model": open(os.path.join(out, "tokenizer.model"), "rb").read()}
    for split in ("train", "val"):
        for name in sorted(os.listdir(os.path.join(out, split))) if os.path.isdir(os.path.join(out, split)) else ():
            files[f"{split}/{name}"] = open(os.path.join(out, split, name), "rb").read()
    return files


def rejected_records(out: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(os.path.join(out, "rejected"))):
        assert name.endswith(".jsonl.gz"), name
        with gzip.open(os.path.join(out, "rejected", name), "rt", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    return rows


def check_shards_hold(out: str, manifest: dict, kept: dict[str, str], val_fraction: float, train_shards: int,
                      val_shards: int) -> None:
    """Each shard holds exactly encode_document(text) of its kept documents, sorted by document key."""
    tok = Tokenizer(os.path.join(out, "tokenizer.model"))
    assert len(manifest["shards"]) == train_shards + val_shards
    total = 0
    for shard in manifest["shards"]:
        reader = ShardReader(os.path.join(out, shard["path"]))
        split, index = shard["split"], int(shard["path"].split("-")[1])
        keys = sorted(k for k in kept if assign_shard(k, val_fraction, train_shards, val_shards) == (split, index))
        assert len(reader) == shard["documents"] == len(keys), shard["path"]
        for i, key in enumerate(keys):
            assert reader[i].tolist() == tok.encode_document(kept[key]).tolist(), (shard["path"], key)
        assert reader.num_tokens == shard["tokens"]
        total += len(reader)
    assert total == len(kept)


def test_end_to_end(prepared):
    out, m, kept = prepared["out"], prepared["manifest"], prepared["kept"]
    assert load_manifest(out, verify=True) == m  # checksums of every shard match the files
    docs = m["documents"]
    assert docs["read"] == prepared["read"]
    assert docs["kept"] == len(kept)
    assert docs["read"] == docs["kept"] + sum(docs["rejected"].values())
    assert {r: n for r, n in docs["rejected"].items() if n} == {
        "exact_duplicate": 1, "too_few_words": 1, "malformed_record": 1, "invalid_utf8": 1}
    assert m["tokenizer"]["sha256"] == sha256_file(os.path.join(out, "tokenizer.model"))
    assert m["tokenizer"]["vocab_size"] == 400 and m["tokenizer"]["eos_id"] == 2
    assert m["tokens"]["train"] > 0 and m["tokens"]["val"] > 0
    assert m["config"]["vocab_size"] == 400 and m["config"]["filters"]["min_words"] == 50
    check_shards_hold(out, m, kept, 0.15, 3, 1)

    rejected = rejected_records(out)
    assert sorted(r["reason"] for r in rejected) == sorted(r for r, n in docs["rejected"].items() for _ in range(n))
    assert {r["id"] for r in rejected if r["reason"] == "exact_duplicate"} == {"zz-copy-of-3"}
    assert all(set(r) == {"id", "source", "reason", "text"} for r in rejected)  # no url, no stage details
    assert [f"rejected/{n}" for n in sorted(os.listdir(os.path.join(out, "rejected")))] == m["rejected_files"]


def test_two_workers_give_byte_identical_outputs(prepared, tmp_path):
    """multi_processing with 2 worker processes (every DoFn is pickled), each shard written in many small parts,
    == the in-process run with one part per shard, byte for byte; every write group stays under its bound."""
    strip = lambda m: {k: v for k, v in m.items() if k != "config"}  # noqa: E731 -- config records the flags
    out2 = str(tmp_path / "out2")
    outcome = prepare(["--input", prepared["inputs"], "--output", out2, *PREPARE_OPTIONS,
                       "--max-group-mb", "0.01", "--direct_num_workers", "2",
                       "--direct_running_mode", "multi_processing"])
    assert shard_files(out2) == shard_files(prepared["out"])
    assert strip(outcome.manifest) == strip(prepared["manifest"])
    assert outcome.manifest["config"]["beam_args"][-2:] == ["--direct_running_mode", "multi_processing"]
    assert outcome.group_counts["write"] > 2 * outcome.group_counts["merge"]  # several parts per shard
    assert 0 < outcome.largest_groups["write"] <= outcome.max_group_bytes == int(0.01 * (1 << 20))
    assert not os.path.exists(os.path.join(out2, "_runs"))  # the run files are gone once the manifest is written


def test_a_worker_killed_mid_stage_leaves_no_partial_file_and_the_shards_are_the_same(prepared, tmp_path):
    """SIGKILL one of two local worker processes while the write stage is writing run files. Beam's local runner
    either carries on or fails the run (without a manifest); either way the finished run (or its rerun with
    --overwrite, which clears what the failed one left) has no run file or temporary file left, and its shards are
    the undisturbed run's, byte for byte."""
    import subprocess
    import sys
    import time

    psutil = require("psutil")
    out = tmp_path / "out"
    argv = ["--input", prepared["inputs"], "--output", str(out), *PREPARE_OPTIONS,
            "--tokenizer", os.path.join(prepared["out"], "tokenizer.model"), "--max-group-mb", "0.002",
            "--direct_num_workers", "2", "--no-progress"]
    reference = run([*argv[:3], str(tmp_path / "reference"), *argv[4:-3]])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.prepare", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    killed, deadline = None, time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if killed is None and (out / "_runs").is_dir() and any((out / "_runs").iterdir()):
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                       if "sdk_worker_main" in " ".join(c.cmdline())]
            if workers:
                workers[0].kill()
                killed = workers[0].pid
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        pytest.fail("the run did not end within 240 s of a worker being killed")
    log = proc.stdout.read().decode("utf-8", "replace")
    assert killed is not None, "no worker was running while run files were written:\n" + log[-3000:]
    if proc.returncode != 0:
        assert not (out / "manifest.json").exists(), "a failed run must not look finished"
        run([*argv, "--overwrite"])
    assert not (out / "_runs").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert load_manifest(str(out), verify=True)["shards"] == reference["shards"]


def test_every_worker_gets_a_write_group_whatever_the_shard_count(prepared, tmp_path):
    """One train shard and two workers: the write stage still has (at least) two independent groups, counted by the
    pipeline's own metric, and the shard is the one a single group writes."""
    base = ["--input", prepared["inputs"], "--tokenizer", os.path.join(prepared["out"], "tokenizer.model"),
            *PREPARE_OPTIONS, "--train-shards", "1", "--val-fraction", "0"]
    two = prepare([*base, "--output", str(tmp_path / "two"), "--direct_num_workers", "2"])
    assert two.group_counts["write"] >= 2 and two.group_counts["merge"] == 1
    one = prepare([*base, "--output", str(tmp_path / "one"), "--min-groups", "1"])
    assert one.group_counts["write"] == 1
    assert shard_files(str(tmp_path / "two")) == shard_files(str(tmp_path / "one"))


def test_rules_none_keeps_what_gopher_rejects(prepared, tmp_path):
    m = run(["--input", prepared["inputs"], "--output", str(tmp_path / "out"), *PREPARE_OPTIONS, "--rules", "none",
             "--tokenizer", os.path.join(prepared["out"], "tokenizer.model")])
    assert m["documents"]["rejected"]["too_few_words"] == 0
    assert m["documents"]["kept"] == prepared["manifest"]["documents"]["kept"] + 1  # the short document
    assert m["config"]["filters"] is None and m["config"]["rules"] == "none"


def test_dataflow_job_is_built_with_every_stage_and_not_submitted(prepared, tmp_path, capsys):
    """--runner DataflowRunner --dry_run True: Beam translates the whole job and pickles every DoFn without
    submitting it; the output checks that need Cloud Storage credentials are skipped, and the command says so."""
    require("google.cloud.storage")  # apache-beam[gcp]: the Dataflow runner and gs:// paths
    argv = ["--input", prepared["inputs"], "--output", "gs://example-bucket/prepared", *PREPARE_OPTIONS,
            "--runner", "DataflowRunner", "--dry_run", "True", "--project", "example-project",
            "--region", "us-central1", "--temp_location", "gs://example-bucket/tmp"]
    outcome = prepare(argv)
    assert outcome.manifest is None and outcome.dry_run_transforms > 100
    assert main(argv) == 0
    assert "dry run: the Dataflow job was built" in capsys.readouterr().out
    with pytest.raises(ValueError, match="dry run"):
        run(argv)


def test_given_tokenizer_mixed_formats_and_overwrite(prepared, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = {f"p{i}": gopher_text(2000 + i) for i in range(6)}
    pq.write_table(pa.table({"body": [texts["p0"], texts["p1"]], "key": ["p0", "p1"]}), tmp_path / "a.parquet")
    write_jsonl_file(tmp_path / "b.jsonl.zst", [{"body": texts["p2"], "key": "p2"}, {"body": texts["p3"], "key": "p3"}])
    (tmp_path / "c.txt").write_text(texts["p4"], encoding="utf-8")
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress(texts["p5"].encode()))
    given = os.path.join(prepared["out"], "tokenizer.model")
    out = str(tmp_path / "out")
    argv = ["--input", str(tmp_path / "*.parquet"), "--input", str(tmp_path / "b.jsonl.zst"),
            "--input", str(tmp_path / "*.txt*"), "--output", out, "--tokenizer", given,
            "--text-field", "body", "--id-field", "key", "--val-fraction", "0", "--train-shards", "2"]
    m = run(argv)
    assert m["documents"] == {"read": 6, "kept": 6, "rejected": {r: 0 for r in REASONS}}
    assert m["tokenizer"]["sha256"] == sha256_file(given) == sha256_file(os.path.join(out, "tokenizer.model"))
    assert m["tokenizer"]["trained"] is False
    assert m["tokens"]["val"] == 0 and [s["split"] for s in m["shards"]] == ["train", "train"]
    # .txt documents carry no id: their key is the content hash, independent of where the file lives.
    # The kept text is what C4's line edits leave, and a derived key hashes that text.
    kept = {"id:" + k: kept_text(v) for k, v in texts.items() if k in ("p0", "p1", "p2", "p3")}
    kept.update({"sha256:" + hashlib.sha256(kept_text(texts[k]).encode()).hexdigest(): kept_text(texts[k])
                 for k in ("p4", "p5")})
    check_shards_hold(out, m, kept, 0.0, 2, 0)

    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        run(argv)
    assert main(argv) == 2  # the CLI reports the same error without a traceback
    (tmp_path / "c.txt").unlink()
    m2 = run(argv + ["--overwrite"])
    assert m2["documents"]["read"] == 5 and load_manifest(out, verify=True) == m2


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = require("datasets")
    rows = {"text": [gopher_text(3000 + i) for i in range(8)] + ["", "This document is far too short to keep."],
            "id": [f"h{i}" for i in range(10)]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    out = str(tmp_path / "out")
    m = run(["--hf-dataset", str(tmp_path / "ds"), "--hf-split", "train", "--output", out, *PREPARE_OPTIONS])
    assert m["documents"]["read"] == 10 and m["documents"]["kept"] == 8
    assert m["documents"]["rejected"]["empty"] == 1 and m["documents"]["rejected"]["too_few_words"] == 1
    check_shards_hold(out, m, {f"id:h{i}": kept_text(rows["text"][i]) for i in range(8)}, 0.15, 3, 1)
    with pytest.raises(ValueError, match="--hf-split"):
        run(["--hf-dataset", str(tmp_path / "ds"), "--hf-split", "nope", "--output", str(tmp_path / "o2")])


def test_builtin_corpus(tmp_path):
    out = str(tmp_path / "out")
    m = run(["--builtin-corpus", "--builtin-corpus-mb", "0.5", "--output", out, *PREPARE_OPTIONS])
    assert os.listdir(os.path.join(out, "_corpus"))
    assert m["documents"]["kept"] > 10 and m["tokens"]["train"] > 10_000
    assert m["documents"]["read"] == m["documents"]["kept"] + sum(m["documents"]["rejected"].values())
    load_manifest(out, verify=True)



def _with_crash_leftovers(out) -> None:
    """What an interrupted run leaves besides finished outputs: temporary names and Beam's temporary folder."""
    (out / "manifest.json.tmp-123-0a1b2c3d").write_text("{")
    (out / "tokenizer.model.tmp-5f0e9c").write_bytes(b"x")
    (out / "train" / "shard-00001-of-00003.bin.tmp-0123abcd").write_bytes(b"")
    beam_temp = out / "rejected" / ("beam-temp-quality-" + "0f" * 16)
    beam_temp.mkdir()
    (beam_temp / "4ea1c9f2-3b9d-4f1e-9a53-0d5c0e2b7a11.jsonl.gz").write_bytes(b"")
    (out / "_corpus").mkdir()
    (out / "_corpus" / "builtin-00000.jsonl.gz").write_bytes(b"")


def _tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_overwrite_clears_a_directory_of_our_outputs_only(prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prepared["out"], out)
    _with_crash_leftovers(out)
    check_output(str(out), overwrite=True)
    assert os.listdir(out) == []


@pytest.mark.parametrize("foreign, named", [
    ("training_notes.md", "training_notes.md"), ("validation/notes.txt", "validation"), ("validation/", "validation"),
    ("train_old/shard-00000-of-00003.bin", "train_old"), ("rejected_manual.txt", "rejected_manual.txt"),
    ("manifest.json.orig", "manifest.json.orig"), ("train/notes.txt", "train/notes.txt"),
    ("val/shard-00000-of-00001.bin.bak", "val/shard-00000-of-00001.bin.bak"),
    ("rejected/mine.jsonl.gz", "rejected/mine.jsonl.gz"), ("_corpus/extra.jsonl", "_corpus/extra.jsonl"),
    ("rejected/beam-temp-quality-0f/x", "rejected/beam-temp-quality-0f"),
])
def test_overwrite_refuses_names_it_did_not_write_and_deletes_nothing(prepared, tmp_path, foreign, named):
    """A name that merely starts like one of ours (training_notes.md, validation/) is not ours: --overwrite refuses
    the directory, naming it, before it deletes anything; so does a file in one of our folders that we did not
    write there."""
    out = tmp_path / "out"
    shutil.copytree(prepared["out"], out)
    _with_crash_leftovers(out)
    path = out / foreign
    path.parent.mkdir(parents=True, exist_ok=True)
    if foreign.endswith("/"):
        path.mkdir()
    else:
        path.write_text("mine")
    before = _tree(out)
    with pytest.raises(ValueError, match=re.escape(named) + ".*(move|choose a new directory)"):
        check_output(str(out), overwrite=True)
    assert _tree(out) == before


def test_overwrite_never_follows_a_link_out_of_the_directory(prepared, tmp_path):
    """A link named like one of our folders is not our folder: refused, and what it points to is untouched."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(os.path.join(prepared["out"], "train"), elsewhere)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    (out / "train").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="did not write \\(train\\)"):
        check_output(str(out), overwrite=True)
    assert sorted(os.listdir(elsewhere)) == sorted(os.listdir(os.path.join(prepared["out"], "train")))
    assert (out / "manifest.json").exists()
