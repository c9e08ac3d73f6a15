"""End-to-end resume through launch.train: 2 CPU ranks, ZeRO-3 bf16, the tiny config, real DeepSpeed processes.

Ranks are started the way srun starts them (RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* in the environment, no
launcher), so the test holds every rank's pid and can kill -9 them all.

    DS_ACCELERATOR=cpu python -m pytest tests/test_resume.py

What is checked against one uninterrupted 8-step run (the reference):
  - a SIGUSR1 to one rank stops both with status 75 after a checkpoint; the rerun's losses equal the reference
    bit for bit;
  - kill -9 of every rank in the middle of writing a checkpoint: `latest` and the previous checkpoint are
    untouched, the partial directory is skipped with a warning, the rerun's losses equal the reference bit for bit;
  - a 2-rank checkpoint resumes on 1 rank (universal conversion) with the same global batch: the data stream
    continues at the stored sample count and the loss continues where the 2-rank run was (close, not equal);
  - model.export turns the 2-rank ZeRO-3 run directory into a directory transformers loads, whose loss on the
    validation batches matches the val_loss the trainer logged; model.generate samples from the run directory
    and its greedy continuation equals transformers' greedy decoding of the export.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ranks import kill_inside_save, logs, start_train, wait_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every test drives 2-rank launch.train runs (one shared reference run): minutes in all on 2 cores.
pytestmark = pytest.mark.slow
STEPS = 8
COMMON_SETS = [f"steps={STEPS}", "eval_every=4", "eval_batches=2", "keep_checkpoints=2", "log_every=4"]
WORDS = ("the of and to in is was for on that with as by at from his her an were which this be are have had "
         "not they you one all their there been has would more when will who into some could them time other "
         "river mountain quiet garden lantern harbor winter copper signal meadow orchard thunder velvet").split()


def _text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    for i in range(0, n_words, rng.randint(8, 14)):
        words[i] = words[i].capitalize()
    return " ".join(words) + f". Item {rng.randint(0, 9999)}."


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A prepared data directory: a SentencePiece BPE tokenizer with the project's Llama-2 settings, train/val
    Megatron shards (encode(text) + [eos]) and a manifest."""
    import sentencepiece as spm

    from pipeline.manifest import write_manifest
    from pipeline.shards import sha256_file, write_shard

    out = str(tmp_path_factory.mktemp("data"))
    rng = random.Random(0)
    docs = [_text(rng, rng.randint(60, 240)) for _ in range(260)]
    with open(os.path.join(out, "corpus.txt"), "w") as f:
        f.write("\n".join(docs))
    spm.SentencePieceTrainer.train(
        input=os.path.join(out, "corpus.txt"), model_prefix=os.path.join(out, "tokenizer"), model_type="bpe",
        vocab_size=384, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=1.0, minloglevel=2)
    os.remove(os.path.join(out, "tokenizer.vocab"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    splits = {"train": docs[:230], "val": docs[230:]}
    shards, tokens = [], {}
    for split, texts in splits.items():
        n = 2 if split == "train" else 1
        tokens[split] = 0
        for i in range(n):
            rel = f"{split}/shard-{i:05d}-of-{n:05d}"
            seqs = [sp.encode(t) + [sp.eos_id()] for t in texts[i::n]]
            stats = write_shard(os.path.join(out, rel), seqs, sp.get_piece_size())
            tokens[split] += stats["tokens"]
            shards.append({"split": split, "path": rel, "documents": stats["documents"], "tokens": stats["tokens"],
                           "sha256_bin": stats["sha256_bin"], "sha256_idx": stats["sha256_idx"]})
    write_manifest(out, {
        "documents": {"read": len(docs), "kept": len(docs), "rejected": {}}, "tokens": tokens,
        "tokenizer": {"path": "tokenizer.model", "vocab_size": sp.get_piece_size(), "eos_id": sp.eos_id(),
                      "sha256": sha256_file(os.path.join(out, "tokenizer.model"))},
        "shards": shards, "config": {"made_by": "tests/test_resume.py"}})
    return out


# ---------------------------------------------------------------------------------------------------- driver

def _start(data_dir, run_dir, sets=(), world=2, env=None, tag="run", pause_in_save=None):
    """`world` ranks of launch.train as srun starts them (tests/ranks.py); logs RUN_DIR.TAG.rankR.log."""
    args = ["--data", data_dir, "--config", "launch/configs/tiny.json", "--ds-config", "ds_configs/zero3_bf16.json",
            "--out", run_dir]
    for s in [*COMMON_SETS, *sets]:
        args += ["--set", s]
    return start_train(args, f"{run_dir}.{tag}", world, env, pause_in_save)


def _logs(run_dir, tag="run", world=2) -> str:
    return logs(f"{run_dir}.{tag}", world)


def _wait(procs, run_dir, expect=0, tag="run", timeout=300):
    wait_ranks(procs, f"{run_dir}.{tag}", expect, timeout)


def _train(data_dir, run_dir, sets=(), world=2, expect=0, tag="run"):
    _wait(_start(data_dir, run_dir, sets, world, tag=tag), run_dir, expect, tag)


def _metrics(run_dir) -> tuple[dict, dict]:
    """(step -> loss, step -> val_loss) from metrics.jsonl, which a resumed run truncates and continues."""
    losses, val = {}, {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            d = json.loads(line)
            if "val_loss" in d:
                assert d["step"] not in val, f"duplicate eval line for step {d['step']}"
                val[d["step"]] = d["val_loss"]
            else:
                assert d["step"] not in losses, f"duplicate line for step {d['step']}: metrics.jsonl not truncated"
                losses[d["step"]] = d["loss"]
    return losses, val


def _wait_for(predicate, procs, what, timeout=180):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert all(p.poll() is None for p in procs), f"a rank exited while waiting for {what}"
        time.sleep(0.05)


def _ckpt(run_dir, *parts):
    return os.path.join(run_dir, "checkpoints", *parts)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """8 uninterrupted steps, checkpoints at 4 and 8."""
    run_dir = str(tmp_path_factory.mktemp("resume") / "reference")
    _train(data_dir, run_dir, ["checkpoint_every=4"])
    return run_dir


# ----------------------------------------------------------------------------------------------------- tests

def test_reference_run_layout(reference):
    from launch.checkpoint import find_resume_point

    losses, val = _metrics(reference)
    assert sorted(losses) == list(range(1, STEPS + 1)) and sorted(val) == [4, 8]
    assert losses[STEPS] < losses[1], "the tiny model must learn"
    assert sorted(n for n in os.listdir(_ckpt(reference)) if n.startswith("step_")) == ["step_00000004",
                                                                                          "step_00000008"]
    point = find_resume_point(reference)
    assert (point.step, point.world_size, point.zero_stage) == (STEPS, 2, 3)
    state = point.client_state
    assert state["consumed_samples"] == STEPS * state["train_config"]["global_batch"]
    for key in ("train_config", "ds_config", "model_config", "tokenizer_sha256", "data_identity"):
        assert key in state, key
    assert json.load(open(_ckpt(reference, "step_00000008", "model_config.json"))) == state["model_config"]
    assert os.path.isfile(os.path.join(reference, "tokenizer.model"))


def test_sigusr1_stop_and_bit_exact_resume(data_dir, reference, tmp_path):
    run_dir = str(tmp_path / "sigusr1")
    procs = _start(data_dir, run_dir, ["checkpoint_every=100"])
    metrics = os.path.join(run_dir, "metrics.jsonl")
    _wait_for(lambda: os.path.exists(metrics) and open(metrics).read().count('"loss"') >= 2, procs, "step 2")
    os.kill(procs[1].pid, signal.SIGUSR1)  # one rank only: the ranks must agree to stop together
    _wait(procs, run_dir, expect=75)
    stopped = max(_metrics(run_dir)[0])
    assert 2 <= stopped < STEPS, f"stopped at step {stopped}"
    assert open(_ckpt(run_dir, "latest")).read().strip() == f"step_{stopped:08d}"

    _train(data_dir, run_dir, ["checkpoint_every=100"], tag="resume")
    assert "resumed from" in _logs(run_dir, "resume")
    losses, val = _metrics(run_dir)
    ref_losses, ref_val = _metrics(reference)
    assert losses == ref_losses, "losses after SIGUSR1 + resume must equal the uninterrupted run bit for bit"
    assert val == ref_val


def test_kill_during_save_then_bit_exact_resume(data_dir, reference, tmp_path):
    from launch import checkpoint as ck

    run_dir = str(tmp_path / "killed")
    # Checkpoints at 3 and 6; the save of step 6 pauses after every rank's files are written, before the marker.
    procs = _start(data_dir, run_dir, ["checkpoint_every=3"], pause_in_save="300@6")
    partial = _ckpt(run_dir, "step_00000006")
    kill_inside_save(procs, run_dir, 6)
    assert not os.path.exists(os.path.join(partial, "COMPLETE"))
    assert open(_ckpt(run_dir, "latest")).read().strip() == "step_00000003"
    with pytest.warns(ck.CheckpointWarning, match="step_00000006.*no COMPLETE marker"):
        assert ck.find_resume_point(run_dir).tag == "step_00000003"

    _train(data_dir, run_dir, ["checkpoint_every=3"], tag="resume")
    assert "skipping checkpoint" in _logs(run_dir, "resume") and "step_00000006" in _logs(run_dir, "resume")
    losses, val = _metrics(run_dir)
    ref_losses, ref_val = _metrics(reference)
    assert losses == ref_losses, "losses after kill -9 + resume must equal the uninterrupted run bit for bit"
    assert val == ref_val
    tags = sorted(n for n in os.listdir(_ckpt(run_dir)) if n.startswith("step_"))
    assert tags == ["step_00000006", "step_00000008"], "the partial dir is rewritten, retention keeps the last 2"
    assert open(_ckpt(run_dir, "latest")).read().strip() == "step_00000008"


def test_world_size_change_2_to_1(data_dir, reference, tmp_path):
    from launch.checkpoint import find_resume_point

    run_dir = str(tmp_path / "resized")
    shutil.copytree(reference, run_dir)
    shutil.rmtree(_ckpt(run_dir, "step_00000008"))  # resume from the step-4 checkpoint written by 2 ranks
    _train(data_dir, run_dir, world=1, tag="one_rank")
    assert os.path.isfile(_ckpt(run_dir, "step_00000004_universal", "COMPLETE"))
    losses, _ = _metrics(run_dir)
    ref_losses, _ = _metrics(reference)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step in range(5, STEPS + 1):  # same global batch and data; only the bf16 reduction order differs
        assert abs(losses[step] - ref_losses[step]) < 0.02 * ref_losses[step], (step, losses, ref_losses)
    point = find_resume_point(run_dir)
    assert (point.step, point.world_size) == (STEPS, 1)
    assert point.consumed_samples == STEPS * point.client_state["train_config"]["global_batch"]


def test_export_from_two_rank_zero3_run(data_dir, reference, tmp_path):
    """The exported Hugging Face model is the trained one: its fp32 loss on the validation batches matches the
    val_loss launch.train logged at the last step (bf16 there, so close rather than equal)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.data import open_split, rank_batch

    out = str(tmp_path / "hf")
    res = subprocess.run([sys.executable, "-m", "model.export", "--checkpoint", reference, "--out", out],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(data_dir, "tokenizer.model"))
    text = "The quiet harbor was 1234 lanterns ünïcödé"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)

    cfg = json.load(open(os.path.join(reference, "config.json")))  # the resolved TrainConfig
    val = open_split(data_dir, "val", cfg["seq_len"], cfg["seed"], model.config.vocab_size)
    losses = []
    with torch.no_grad():
        for b in range(cfg["eval_batches"]):
            for inputs, targets in rank_batch(val, b, cfg["global_batch"], cfg["global_batch"], 0, 1):
                logits = model(inputs).logits.float()
                losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item())
    hf_loss = float(np.mean(losses))
    logged = _metrics(reference)[1][STEPS]
    assert abs(hf_loss - logged) < 0.02 * logged, (hf_loss, logged)

    # Generation straight from the run directory (checkpoints/latest + the run's tokenizer.model): greedy
    # decoding with our KV cache continues the prompt exactly as transformers' greedy decoding of the export.
    prompt = "The quiet harbor"
    res = subprocess.run([sys.executable, "-m", "model.generate", "--checkpoint", reference, "--prompt", prompt,
                          "--temperature", "0", "--max-new-tokens", "12"], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ids = [sp.eos_id()] + sp.encode(prompt)  # documents are EOS-separated in training: EOS starts a prompt
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=sp.eos_id(),
                             pad_token_id=sp.eos_id())[0, len(ids):].tolist()
    new = out[:out.index(sp.eos_id()) + 1] if sp.eos_id() in out else out
    expected = sp.decode([t for t in ids[1:] + new if t != sp.eos_id()])
    printed = res.stdout.split("\n" + "-" * 40 + "\n")[0]  # the text, then a separator line (logs may precede it)
    assert printed.endswith("\n" + expected) or printed == expected, (res.stdout, expected)
    assert len(expected) > len(prompt), "greedy decoding should add text"


# The run-config model options all on at once: document-masked attention (EOS id from the data), the chunked loss
# in 3 chunks per 2 x 64-token micro-batch (the last one partial), and z-loss.
OPTION_SETS = ["model.document_mask=true", "loss_chunk_tokens=48", "z_loss=1e-4"]


def _step_lines(run_dir) -> dict:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: (r["loss"], r["z_loss"]) for r in records if "loss" in r}


def test_model_options_resume_bit_exactly_after_sigusr1_and_kill(data_dir, reference, tmp_path):
    options_reference = str(tmp_path / "options_reference")
    _train(data_dir, options_reference, ["checkpoint_every=100", *OPTION_SETS])
    ref_steps, ref_val = _step_lines(options_reference), _metrics(options_reference)[1]
    assert sorted(ref_steps) == list(range(1, STEPS + 1)) and sorted(ref_val) == [4, 8]
    assert all(0 < z < 1e-2 for _, z in ref_steps.values()), ref_steps    # z-loss logged on its own
    assert ref_steps[STEPS][0] < ref_steps[1][0], "the tiny model must learn"
    # The options change the computation: the losses differ from the plain reference's (same data, same init).
    assert [ref_steps[s][0] for s in sorted(ref_steps)] != [_metrics(reference)[0][s] for s in sorted(ref_steps)]
    with open(os.path.join(options_reference, "checkpoints", "step_00000008", "model_config.json")) as f:
        model_config = json.load(f)
    assert model_config["document_mask"] is True and model_config["eos_id"] == 2

    run_dir = str(tmp_path / "options_sigusr1")
    procs = _start(data_dir, run_dir, ["checkpoint_every=100", *OPTION_SETS])
    metrics = os.path.join(run_dir, "metrics.jsonl")
    _wait_for(lambda: os.path.exists(metrics) and open(metrics).read().count('"loss"') >= 2, procs, "step 2")
    os.kill(procs[0].pid, signal.SIGUSR1)
    _wait(procs, run_dir, expect=75)
    stopped = max(_step_lines(run_dir))
    assert 2 <= stopped < STEPS, f"stopped at step {stopped}"

    _train(data_dir, run_dir, ["checkpoint_every=100", *OPTION_SETS], tag="resume")
    assert "resumed from" in _logs(run_dir, "resume")
    assert _step_lines(run_dir) == ref_steps, "losses and z-losses after resume must equal the uninterrupted run's"
    assert _metrics(run_dir)[1] == ref_val

    # kill -9 of every rank once the step-4 checkpoint is complete, then the same command: the same losses.
    killed = str(tmp_path / "options_kill9")
    procs = _start(data_dir, killed, ["checkpoint_every=4", *OPTION_SETS])
    _wait_for(lambda: os.path.exists(_ckpt(killed, "step_00000004", "COMPLETE")), procs, "the step-4 checkpoint")
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()
    _train(data_dir, killed, ["checkpoint_every=4", *OPTION_SETS], tag="resume")
    assert "resumed from" in _logs(killed, "resume")
    assert _step_lines(killed) == ref_steps and _metrics(killed)[1] == ref_val
