"""Every `python -m` entry point answers a usage, config or data mistake with `error: <message>` on stderr and exit
status 2, never a Python traceback (as argparse does for an unknown flag)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.json")
ZERO3 = os.path.join(ROOT, "ds_configs", "zero3_bf16.json")


def _run(args, tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=ROOT)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


MISTAKES = {
    "train: misspelled config key": (
        lambda d, t: ["launch.train", "--data", d, "--config", TINY, "--ds-config", ZERO3, "--out", str(t / "run"),
                      "--set", "warmup_step=3"], "warmup_step"),
    "train: not a data directory": (
        lambda d, t: ["launch.train", "--data", str(t), "--config", TINY, "--ds-config", ZERO3, "--out",
                      str(t / "run")], "not a prepared data directory"),
    "config: batch does not divide": (
        lambda d, t: ["launch.config", TINY, ZERO3, "--world-size", "3"], "global_batch"),
    "export: no checkpoint": (
        lambda d, t: ["model.export", "--checkpoint", str(t / "nothing"), "--out", str(t / "hf")], "nothing"),
    "generate: no checkpoint": (
        lambda d, t: ["model.generate", "--checkpoint", str(t / "nothing"), "--prompt", "hi"], "nothing"),
    "checkpoint: not a run directory": (
        lambda d, t: ["launch.checkpoint", str(t / "nothing")], "not a directory"),
    "quickstart: bad --stop-at": (
        lambda d, t: ["launch.quickstart", "--out", str(t / "qs"), "--stop-at", "1.5"], "--stop-at"),
    "builtin_corpus: bad --max-mb": (
        lambda d, t: ["pipeline.builtin_corpus", "--out", str(t / "c"), "--max-mb", "0"], "--max-mb"),
    "data: not a data directory": (
        lambda d, t: ["launch.data", "--data", str(t), "--seq-len", "8"], "not a prepared data directory"),
    "metrics: no metrics file": (
        lambda d, t: ["launch.metrics", str(t / "metrics.jsonl")], "does not exist"),
    "prepare: no input": (
        lambda d, t: ["pipeline.prepare", "--output", str(t / "out")], "no input"),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from conftest import random_data_dir

    return str(random_data_dir(tmp_path_factory.mktemp("data")))


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_mistake_is_one_error_line_and_exit_2(case, data_dir, tmp_path):
    make_args, expected = MISTAKES[case]
    proc = _run(make_args(data_dir, tmp_path), tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: " in proc.stderr and expected in proc.stderr, proc.stderr[-3000:]
