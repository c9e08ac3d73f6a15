"""launch/quickstart.py end to end at a reduced size: Beam prepare -> 2-process ZeRO-3 bf16 training interrupted by
SIGUSR1 and resumed -> Hugging Face export -> samples -> report.md with a loss curve.

    DS_ACCELERATOR=cpu python -m pytest tests/test_quickstart.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch import quickstart
from launch.metrics import read_metrics
from pipeline.counters import EDITS, REASONS
from pipeline.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 16
# The quickstart's own corpus size (3 MB per source): fewer package descriptions pass the default rules (C4's "{"
# rule drops code-heavy ones) than would fill the dist source's val split reliably.
SMALL = ["--corpus-mb", "6", "--vocab-size", "512", "--set", f"steps={STEPS}", "--set", "eval_every=8",
         "--set", "warmup_steps=2", "--set", "checkpoint_every=100", "--set", "log_every=4", "--max-new-tokens", "16"]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "run"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "launch.quickstart", "--out", str(out), *SMALL], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    return out, proc


@pytest.mark.slow
def test_quickstart_end_to_end(quickstart_run):
    out, proc = quickstart_run
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    report = json.loads((out / "report.json").read_text())
    assert all(report["checks"].values()), report["checks"]

    # Data: one directory per source; each manifest accounts for every document and its shards verify; one
    # tokenizer for both.
    manifests = {name: load_manifest(str(out / "data" / name), verify=True) for name in quickstart.SOURCE_NAMES}
    for manifest in manifests.values():
        docs = manifest["documents"]
        assert docs["read"] == docs["kept"] + sum(docs["rejected"].values()) and docs["kept"] > 20
        assert set(docs["rejected"]) == set(REASONS) and set(manifest["edits"]) == set(EDITS)  # zeros included
        assert sum(n["documents"] for n in manifest["languages"].values()) == docs["kept"]  # every kept one labelled
        assert manifest["languages"]["en"]["documents"] > 0
        assert manifest["tokenizer"]["vocab_size"] == 512
        assert manifest["tokens"]["val"] > 0
    assert len({m["tokenizer"]["sha256"] for m in manifests.values()}) == 1

    # Training: interrupted by the signal, resumed, every step exactly once, loss fell.
    assert "SIGUSR1 to rank 0" in log and "preempted: exit 75" in log
    stopped = int(report["stopped_tag"].removeprefix("step_"))
    assert STEPS // 2 <= stopped < STEPS
    steps, evals = read_metrics(str(out / "metrics.jsonl"))
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert [e["step"] for e in evals] == [8, 16]
    assert all(sorted(e["val_loss_by_source"]) == sorted(quickstart.SOURCE_NAMES) for e in evals)
    assert sorted(steps[-1]["tokens_by_source"]) == sorted(quickstart.SOURCE_NAMES)
    assert report["loss_last"] < report["loss_first"]
    assert (out / "logs" / "train-2-rank1.log").exists(), "the resumed start ran both ranks"
    assert (out / "checkpoints" / f"step_{STEPS:08d}" / "COMPLETE").exists()

    # Export: a directory transformers loads; samples were generated from the trained weights.
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(os.listdir(out / "hf"))
    assert report["max_abs_diff"] <= 1e-4 and report["greedy_matches_transformers"]
    assert len(report["samples"]) == len(quickstart.PROMPTS)
    for prompt, sample in zip(quickstart.PROMPTS, report["samples"]):
        assert sample.startswith(prompt) and len(sample) > len(prompt)

    # Report: the sections and a real PNG image of the curve.
    text = (out / "report.md").read_text()
    for heading in ("## Data", "## Training", "## Export", "## Checks", "too_few_words", "| near_duplicate |",
                    "| url_blocked | 0 |", "| language |", "| c4_lines_too_few_words |", "| en |", "![loss curve](loss.png)",
                    "tokens/s", "validation loss of `dist`", "weighted blend"):
        assert heading in text, heading
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_rerun_refuses_to_mix_runs_then_overwrite_is_scoped(quickstart_run, tmp_path):
    out, _ = quickstart_run
    with pytest.raises(ValueError, match="--overwrite"):
        quickstart.main(["--out", str(out), *SMALL])
    # --overwrite only clears directories holding nothing but quickstart outputs.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write"):
        quickstart.main(["--out", str(out), "--overwrite", *SMALL])
    assert (out / "report.md").exists() and (out / "notes.txt").exists()
    # Without the stranger, everything a real run left (DeepSpeed's files included) is the quickstart's.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, symlinks=True)
    (copy / "notes.txt").unlink()
    quickstart.check_out_dir(str(copy), overwrite=True)
    assert list(copy.iterdir()) == []


def test_config_mistakes_fail_before_any_work(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="stepz"):
        quickstart.main(["--out", str(out), "--set", "stepz=10"])
    with pytest.raises(ValueError, match="accumulation|divisible|micro"):
        quickstart.main(["--out", str(out), "--set", "global_batch=12", "--set", "micro_batch=4"])
    with pytest.raises(ValueError, match="--stop-at"):
        quickstart.main(["--out", str(out), "--stop-at", "1.5"])
    assert not (out / "data").exists(), "nothing was prepared"


def _fake_quickstart_dir(out):
    """The files a finished quickstart leaves, with stand-in contents."""
    for rel in ("quickstart.json", "report.md", "metrics.jsonl", "loss.png", "data/stdlib/manifest.json",
                "data/stdlib/tokenizer.model", "data/dist/train/shard-00000-of-00004.bin",
                "data/dist/train/shard-00000-of-00004.idx", "data/stdlib/rejected/quality-00000-of-00001.jsonl.gz",
                "data/dist/_corpus/builtin-00000.jsonl.gz", "data/manifest.json", "data/tokenizer.model",
                "checkpoints/latest", "checkpoints/zero_to_fp32.py", "checkpoints/step_00000400/COMPLETE", "checkpoints/step_00000400/rng/rank_00000.pt",
                "hf/model.safetensors", "hf/config.json", "logs/prepare-stdlib.log", "logs/prepare.log",
                "logs/train-first-rank0.log",
                "metrics.jsonl.tmp-123-0a1b2c3d", "monitor/train/Train_Samples_lr.csv"):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


@pytest.mark.parametrize("foreign", ["data/notes.md", "data/train/extra.bin", "data/stdlib/notes.md",
                                     "data/dist/train/extra.bin", "data/web/manifest.json",
                                     "checkpoints/my_backup/model.pt", "hf/README.md", "logs/mine.txt", "notes.txt"])
def test_overwrite_refuses_any_file_it_did_not_write_and_deletes_nothing(tmp_path, foreign):
    out = tmp_path / "run"
    _fake_quickstart_dir(out)
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_text("mine")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ValueError, match="did not write"):
        quickstart.check_out_dir(str(out), overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_overwrite_removes_exactly_a_quickstart_and_follows_no_link(tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    _fake_quickstart_dir(out)
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (out / "data" / "dist" / "_corpus" / "builtin-00001.jsonl.gz").symlink_to(elsewhere / "keep.txt")
    quickstart.check_out_dir(str(out), overwrite=True)
    assert list(out.iterdir()) == [] and (elsewhere / "keep.txt").read_text() == "mine"


def test_overwrite_refuses_a_training_run_directory(tmp_path):
    """A launch.train run directory has a quickstart's names but not its marker: --overwrite leaves it alone."""
    out = tmp_path / "run"
    _fake_quickstart_dir(out)
    (out / "quickstart.json").unlink()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ValueError, match="launch.train run directory"):
        quickstart.check_out_dir(str(out), overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
