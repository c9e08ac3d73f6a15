"""launch.train on a weighted blend of prepared directories: checks before start-up, per-source accounting and
validation, bit-exact resume after kill -9, and a 2 -> 1 rank resume on the same sample order.

    DS_ACCELERATOR=cpu python -m pytest tests/test_blend_training.py -q
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time

import numpy as np
import pytest
from references import require

from ranks import start_train, wait_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.json")
ZERO3 = os.path.join(ROOT, "ds_configs", "zero3_bf16.json")
STEPS = 8
SETS = [f"steps={STEPS}", "eval_every=4", "eval_batches=1", "checkpoint_every=4", "keep_checkpoints=2",
        "log_every=4"]
WEIGHTS = {"web": 0.5, "code": 0.3, "books": 0.2}
# Each source its own vocabulary slice, so a sample shows where it came from.
WORDS = {"web": "the of and to in river mountain garden lantern harbor winter copper".split(),
         "code": "def return import class self value index list dict none true false".split(),
         "books": "chapter king castle forest knight dragon journey letter sister night".split()}


def _write_dir(out: str, sp_model: str, texts: list[str], val: bool = True) -> str:
    """A prepared data directory (no Beam): shards of encode(text) + [eos] with a shared SentencePiece model."""
    import sentencepiece as spm

    from pipeline.manifest import write_manifest
    from pipeline.shards import sha256_file, write_shard

    os.makedirs(out, exist_ok=True)
    shutil.copy(sp_model, os.path.join(out, "tokenizer.model"))
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    splits = {"train": texts[:-8], "val": texts[-8:]} if val else {"train": texts}
    shards, tokens = [], {"train": 0, "val": 0}
    for split, docs in splits.items():
        rel = f"{split}/shard-00000-of-00001"
        stats = write_shard(os.path.join(out, rel), [sp.encode(t) + [sp.eos_id()] for t in docs], sp.get_piece_size())
        tokens[split] = stats["tokens"]
        shards.append({"split": split, "path": rel, **{k: stats[k] for k in ("documents", "tokens", "sha256_bin",
                                                                          "sha256_idx")}})
    write_manifest(out, {"documents": {"read": len(texts), "kept": len(texts), "rejected": {}}, "tokens": tokens,
                         "tokenizer": {"path": "tokenizer.model", "vocab_size": sp.get_piece_size(),
                                       "eos_id": sp.eos_id(), "sha256": sha256_file(sp_model)},
                         "shards": shards, "config": {"made_by": "tests/test_blend_training.py"}})
    return out


def _texts(name: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[name]) for _ in range(rng.randint(30, 120))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """Three directories (web 120 documents, code 60, books 20: books repeats) sharing one tokenizer."""
    from pipeline.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("blend")
    texts = {name: _texts(name, n, i) for i, (name, n) in enumerate((("web", 120), ("code", 60), ("books", 20)))}
    model = str(root / "tokenizer.model")
    train_tokenizer([t for ts in texts.values() for t in ts], model, 400)
    return {name: _write_dir(str(root / name), model, ts) for name, ts in texts.items()}


def _data_args(sources: dict[str, str]) -> list[str]:
    return [a for name, w in WEIGHTS.items() for a in ("--data", f"{w}:{sources[name]}")]


def _plan(argv):
    from launch.train import parse_args, plan_run

    return plan_run(parse_args(argv))


def test_bad_blends_fail_before_start_up_naming_the_source(single_process_env, sources, tmp_path, capsys):
    import torch

    base = ["--config", TINY, "--ds-config", ZERO3, "--out", str(tmp_path / "run")]
    web, code = sources["web"], sources["code"]
    for data, pattern in (
        (["--data", f"0:{web}", "--data", code], "weight must be a positive number"),
        ([f"--data=-1:{web}", "--data", code], "weight must be a positive number"),
        (["--data", f"abc:{web}", "--data", code], "'abc' is not a number"),
        (["--data", f"0.5:{tmp_path / 'missing'}", "--data", code], "'missing'.*manifest"),
        (["--data", web, "--data", web], "both named 'web'"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=pattern):
            _plan(data + base)
    # Another tokenizer.
    from pipeline.tokenizer import train_tokenizer

    other_model = str(tmp_path / "other.model")
    train_tokenizer(_texts("books", 30, 9), other_model, 300)
    other = _write_dir(str(tmp_path / "other"), other_model, _texts("books", 20, 9))
    with pytest.raises(ValueError, match="'other'.*another tokenizer.*--tokenizer"):
        _plan(["--data", web, "--data", other] + base)
    # A source without a val split while validation is on; fine with eval_every=0.
    noval = _write_dir(str(tmp_path / "noval"), os.path.join(web, "tokenizer.model"), _texts("web", 20, 5), val=False)
    with pytest.raises(ValueError, match="'noval'.*no 'val' shards.*eval_every=0"):
        _plan(["--data", web, "--data", noval] + base)
    assert _plan(["--data", web, "--data", noval, "--set", "eval_every=0"] + base).val_streams is None
    # The run config's data list, and its checks.
    config = json.load(open(TINY))
    config["data"] = [{"path": web, "weight": 3, "name": "w"}, {"path": code, "weight": 1}]
    path = tmp_path / "blend.json"
    path.write_text(json.dumps(config))
    plan = _plan(["--config", str(path), "--ds-config", ZERO3, "--out", str(tmp_path / "run")])
    assert [(s.name, s.weight) for s in plan.sources] == [("w", 3.0), ("code", 1.0)]
    assert plan.train_stream.index.weights == [0.75, 0.25]
    config["data"][1]["weight"] = "heavy"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"data\[1\].*weight must be a positive number"):
        _plan(["--config", str(path), "--ds-config", ZERO3, "--out", str(tmp_path / "run")])
    assert not torch.distributed.is_initialized() and not os.path.exists(tmp_path / "run")


def test_blend_reads_each_source_at_its_share_and_warns_on_repeats(single_process_env, sources, tmp_path, capsys):
    from launch.data import rank_batch

    plan = _plan(_data_args(sources) + ["--config", TINY, "--ds-config", ZERO3, "--out", str(tmp_path / "r"),
                                        "--set", "steps=400", "--set", "max_source_epochs=3"])
    out = capsys.readouterr().out
    assert "data blend over 400 steps: web 50.0%" in out
    assert "warning: data source 'books'" in out and "max_source_epochs=3" in out
    stream = plan.train_stream
    # Every sample of a global batch comes from its source's own stream, at the blend's positions.
    [(inputs, targets)] = rank_batch(stream, 3, 8, 8, 0, 1)
    source, within = stream.index(np.arange(24, 32))
    for row, (d, j) in enumerate(zip(source, within)):
        expected = stream.streams[d].sample(int(j))
        assert inputs[row].tolist() == expected[:-1].tolist() and targets[row].tolist() == expected[1:].tolist()
    # One global batch at 2 ranks is the same samples as at 1 rank.
    one = rank_batch(stream, 5, 8, 2, 0, 1)
    two = rank_batch(stream, 5, 8, 2, 0, 2) + rank_batch(stream, 5, 8, 2, 1, 2)
    assert [b[0].tolist() for b in one] == [b[0].tolist() for b in two]


# --------------------------------------------------------------------------------- real 2-rank ZeRO-3 runs

def _start(data_args, run_dir, world=2, sets=()):
    args = [*data_args, "--config", TINY, "--ds-config", ZERO3, "--out", run_dir]
    for s in [*SETS, *sets]:
        args += ["--set", s]
    return start_train(args, run_dir, world)


def _wait(procs, run_dir, timeout=300):
    return wait_ranks(procs, run_dir, timeout=timeout)


def _lines(run_dir) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [x for x in lines if "loss" in x], [x for x in lines if "val_loss" in x]


@pytest.mark.slow  # three 2-rank and one 1-rank DeepSpeed runs: ~2-3 min on 2 cores
def test_blend_trains_logs_per_source_and_resumes_bit_exactly(sources, tmp_path):
    require("deepspeed")
    data = _data_args(sources)
    ref = str(tmp_path / "ref")
    _wait(_start(data, ref), ref)
    steps, evals = _lines(ref)
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    for s in steps:  # tokens per source: the blend's counts, which add up to the run's tokens
        assert sum(s["tokens_by_source"].values()) == s["tokens"]
    final = steps[-1]["tokens_by_source"]
    assert final["web"] > final["code"] > final["books"] > 0
    assert [e["step"] for e in evals] == [4, 8]
    for e in evals:
        per = e["val_loss_by_source"]
        assert sorted(per) == ["books", "code", "web"]
        mean = sum(per[n] * w for n, w in WEIGHTS.items()) / sum(WEIGHTS.values())
        assert e["val_loss"] == pytest.approx(mean, rel=1e-4)  # shares quantized to 1/65536
    config = json.load(open(os.path.join(ref, "config.json")))
    assert [(d["name"], d["weight"]) for d in config["data"]] == list(WEIGHTS.items())

    # kill -9 every rank once the step-4 checkpoint is complete; the rerun continues bit for bit.
    run = str(tmp_path / "killed")
    procs = _start(data, run)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        latest = os.path.join(run, "checkpoints", "latest")
        if os.path.exists(latest) and open(latest).read().strip() == "step_00000004":
            break
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        p.kill()
        p.wait()
    _wait(_start(data, run), run)
    run_steps, run_evals = _lines(run)
    fields = ("step", "loss", "grad_norm", "tokens", "tokens_by_source")
    assert [[s[k] for k in fields] for s in run_steps] == [[s[k] for k in fields] for s in steps]
    assert run_evals == evals
    assert "resumed from" in open(f"{run}.rank0.log").read()  # both starts append to the same log

    # The step-4 checkpoint of the 2-rank run resumes on 1 rank: the same samples from step 5 on.
    one = str(tmp_path / "one-rank")
    shutil.copytree(ref, one, ignore=shutil.ignore_patterns("step_00000008"))
    with open(os.path.join(one, "checkpoints", "latest"), "w") as f:
        f.write("step_00000004")
    _wait(_start(data, one, world=1), one)
    one_steps, _ = _lines(one)
    assert [s["step"] for s in one_steps] == list(range(1, STEPS + 1))
    assert [s["tokens_by_source"] for s in one_steps] == [s["tokens_by_source"] for s in steps]
    assert one_steps[4]["loss"] == pytest.approx(steps[4]["loss"], rel=0.05)
