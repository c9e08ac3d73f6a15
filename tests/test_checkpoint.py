"""launch.checkpoint against real DeepSpeed ZeRO-3 bf16 engines (2 CPU processes, gloo), driven by a minimal loop.

The loop lives in this file (run as `python tests/test_checkpoint.py RUN_DIR STEPS SAVE_EVERY KEEP` with RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT set, the way srun-started ranks see them) so these tests exercise the
checkpoint API alone; tests/test_resume.py checks the same properties end to end through launch.train.

    DS_ACCELERATOR=cpu python -m pytest tests/test_checkpoint.py
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from launch.processes import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH = 4
VOCAB = 64
STAGE_ENV = "CKPT_TEST_ZERO_STAGE"  # the worker's ZeRO stage (default 3)
PAUSE_ENV = "CKPT_TEST_PAUSE"  # "SECONDS[@STEP]": the worker pauses in its saves (tests/pause_in_save.py)


# ---------------------------------------------------------------------------------------------------- worker

def _worker(run_dir: str, steps: int, save_every: int, keep: int) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch

    from launch import checkpoint as ck

    if os.environ.get(PAUSE_ENV):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import pause_in_save

        pause_in_save.install(os.environ[PAUSE_ENV])

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, 32)
            self.hidden = torch.nn.Linear(32, 32)
            self.out = torch.nn.Linear(32, VOCAB)

        def forward(self, x, y):                       # x, y: (B, T) long
            z = self.out(torch.relu(self.hidden(self.emb(x))))  # (B, T, V)
            return torch.nn.functional.cross_entropy(z.float().view(-1, VOCAB), y.view(-1))

    stage = int(os.environ.get(STAGE_ENV, "3"))
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    cfg = {"train_batch_size": GLOBAL_BATCH, "train_micro_batch_size_per_gpu": GLOBAL_BATCH // world,
           "gradient_accumulation_steps": 1, "bf16": {"enabled": True}, "zero_optimization": {"stage": stage},
           "steps_per_print": 10**9, "zero_allow_untested_optimizer": True}
    point = ck.find_resume_point(run_dir)
    cfg.update(ck.prepare_resume(point, world, rank))
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=cfg) if stage == 3 else contextlib.nullcontext():
        model = Tiny()
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                                      config=cfg)
    consumed = 0
    if point is not None:
        consumed = ck.load(engine, point)["consumed_samples"]
    try:
        for step in range(consumed // GLOBAL_BATCH, steps):
            # Global batch `step` is a pure function of the step; rank r takes its contiguous slice.
            g = torch.Generator().manual_seed(step)
            x = torch.randint(0, VOCAB, (GLOBAL_BATCH, 8), generator=g)
            y = (x * 7 + 3) % VOCAB
            part = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
            loss = engine(x[part], y[part])
            engine.backward(loss)
            engine.step()
            consumed += GLOBAL_BATCH
            mean = loss.detach().float().clone()
            torch.distributed.all_reduce(mean)
            if rank == 0:
                with open(os.path.join(run_dir, "losses.jsonl"), "a") as f:
                    f.write(json.dumps({"step": step + 1, "loss": mean.item() / world}) + "\n")
            if (step + 1) % save_every == 0 or step + 1 == steps:
                ck.save(engine, run_dir, step + 1, {"consumed_samples": consumed, "model_config": {"vocab": VOCAB}},
                        keep_last=keep)
    finally:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- driver

def _start(run_dir, steps, save_every, keep=2, world=2, env=None):
    """Start `world` ranks of the worker the way srun would (env vars, no launcher); returns the Popens."""
    os.makedirs(run_dir, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(world):
        e = dict(os.environ, DS_ACCELERATOR="cpu", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONPATH=ROOT, OMP_NUM_THREADS="1", **(env or {}))
        log = open(os.path.join(run_dir, f"rank{rank}.log"), "a")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), run_dir, str(steps),
                                       str(save_every), str(keep)], env=e, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs, run_dir, timeout=240):
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait(timeout=max(1, deadline - time.monotonic()))
    codes = [p.returncode for p in procs]
    if codes != [0] * len(procs):
        logs = "".join(open(os.path.join(run_dir, f"rank{r}.log")).read()[-3000:] for r in range(len(procs)))
        raise AssertionError(f"ranks exited {codes}:\n{logs}")


def _run(run_dir, steps, save_every, keep=2, world=2, env=None):
    _wait(_start(run_dir, steps, save_every, keep, world, env), run_dir)


def _losses(run_dir) -> dict[int, float]:
    """step -> loss; a resumed run appends, so the last line for a step wins."""
    out = {}
    with open(os.path.join(run_dir, "losses.jsonl")) as f:
        for line in f:
            d = json.loads(line)
            out[d["step"]] = d["loss"]
    return out


def _ckpt(run_dir, *parts):
    return os.path.join(run_dir, "checkpoints", *parts)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """6 steps on 2 ranks, a checkpoint every 2 steps, keep 2: step_4 and step_6 remain."""
    run_dir = str(tmp_path_factory.mktemp("ckpt") / "base")
    _run(run_dir, steps=6, save_every=2, keep=2)
    return run_dir


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """8 uninterrupted steps on 2 ranks, no checkpoints until the end: the reference losses."""
    run_dir = str(tmp_path_factory.mktemp("ckpt") / "straight")
    _run(run_dir, steps=8, save_every=100)
    return run_dir


def _copy(base_run, tmp_path):
    dst = str(tmp_path / "run")
    shutil.copytree(base_run, dst)
    return dst


# ----------------------------------------------------------------------------------------------------- tests

@pytest.mark.slow  # shares 2-rank DeepSpeed runs (module fixtures): ~30-60 s on 2 cores
def test_layout_marker_and_retention(base_run):
    from launch import checkpoint as ck

    tags = sorted(n for n in os.listdir(_ckpt(base_run)) if n.startswith("step_"))
    assert tags == ["step_00000004", "step_00000006"], "keep_last=2 must delete step_2 and keep the newest two"
    assert open(_ckpt(base_run, "latest")).read() == "step_00000006"
    tag_dir = _ckpt(base_run, "step_00000006")
    marker = json.load(open(os.path.join(tag_dir, "COMPLETE")))
    assert marker["world_size"] == 2 and marker["zero_stage"] == 3 and marker["step"] == 6
    files = marker["files"]
    for rank in (0, 1):
        assert f"rng/rank_{rank:05d}.pt" in files
        assert any(f"zero_pp_rank_{rank}_mp_rank_00_optim_states" in f for f in files), files
        assert any(f"zero_pp_rank_{rank}_mp_rank_00_model_states" in f for f in files), files
    for rel, size in files.items():
        assert os.path.getsize(os.path.join(tag_dir, rel)) == size
    state = json.load(open(os.path.join(tag_dir, "client_state.json")))
    assert state["step"] == 6 and state["consumed_samples"] == 6 * GLOBAL_BATCH
    assert state["world_size"] == 2 and state["zero_stage"] == 3
    assert json.load(open(os.path.join(tag_dir, "model_config.json"))) == {"vocab": VOCAB}
    point = ck.find_resume_point(base_run)
    assert (point.tag, point.step, point.consumed_samples, point.world_size) == ("step_00000006", 6, 24, 2)
    assert ck.main([base_run]) == 0


@pytest.mark.slow  # shares 2-rank DeepSpeed runs (module fixtures): ~30-60 s on 2 cores
@pytest.mark.parametrize("damage", ["truncate_optim", "delete_model", "delete_rng", "delete_marker"])
def test_damaged_checkpoint_is_skipped_with_warning(base_run, tmp_path, damage):
    from launch import checkpoint as ck

    run_dir = _copy(base_run, tmp_path)
    tag_dir = _ckpt(run_dir, "step_00000006")
    if damage == "truncate_optim":
        path = os.path.join(tag_dir, "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt")
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "delete_model":
        os.remove(os.path.join(tag_dir, "zero_pp_rank_0_mp_rank_00_model_states.pt"))
    elif damage == "delete_rng":
        os.remove(os.path.join(tag_dir, "rng", "rank_00001.pt"))
    else:
        os.remove(os.path.join(tag_dir, "COMPLETE"))
    with pytest.warns(ck.CheckpointWarning, match="step_00000006") as record:
        point = ck.find_resume_point(run_dir)
    assert point.tag == "step_00000004" and point.consumed_samples == 16
    messages = " ".join(str(w.message) for w in record)
    assert "skipping checkpoint" in messages and "latest" in messages  # `latest` still names the damaged one


def test_fresh_run_and_argument_errors(tmp_path):
    from launch import checkpoint as ck

    assert ck.find_resume_point(str(tmp_path)) is None
    assert ck.prepare_resume(None, world_size=2, rank=0) == {}
    with pytest.raises(ValueError, match="keep_checkpoints"):
        ck.save(None, str(tmp_path), 1, {"consumed_samples": 0}, keep_last=0)
    with pytest.raises(ValueError, match="consumed_samples"):
        ck.save(None, str(tmp_path), 1, {}, keep_last=1)


def test_incomplete_directory_without_complete_ones(tmp_path):
    from launch import checkpoint as ck

    os.makedirs(_ckpt(str(tmp_path), "step_00000002", "rng"))
    with pytest.warns(ck.CheckpointWarning, match="no COMPLETE marker"):
        assert ck.find_resume_point(str(tmp_path)) is None


def _fake_checkpoint(run_dir: str, step: int, world: int = 2, marker: bool = True) -> str:
    """A checkpoint directory in save()'s layout with placeholder shard files (for retention/inspection logic)."""
    from launch import checkpoint as ck

    tag_dir = _ckpt(run_dir, ck.tag_for_step(step))
    os.makedirs(os.path.join(tag_dir, "rng"))
    files = {}
    for rank in range(world):
        for rel in (f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt", f"rng/rank_{rank:05d}.pt",
                    f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"):
            files[rel] = b"x" * (100 + rank)
    files["client_state.json"] = json.dumps({"step": step, "consumed_samples": step * GLOBAL_BATCH,
                                             "world_size": world, "zero_stage": 3}).encode()
    files["model_config.json"] = b"{}"
    for rel, data in files.items():
        with open(os.path.join(tag_dir, rel), "wb") as f:
            f.write(data)
    if marker:
        with open(os.path.join(tag_dir, "COMPLETE"), "w") as f:
            json.dump({"world_size": world, "files": {rel: len(data) for rel, data in files.items()}}, f)
    return tag_dir


def test_retention_skips_damaged_and_protects_the_new_tag(tmp_path):
    """Retention counts only intact checkpoints: a damaged newer one (marker present, rank file truncated) must
    not push the checkpoint just written out of keep_last; stale leftovers older than it are deleted."""
    from launch import checkpoint as ck

    run_dir = str(tmp_path)
    for step in (2, 4, 6):
        _fake_checkpoint(run_dir, step)
    damaged = _fake_checkpoint(run_dir, 8)
    os.truncate(os.path.join(damaged, "rng", "rank_00001.pt"), 10)
    _fake_checkpoint(run_dir, 3, marker=False)   # interrupted save, older than the newest complete one
    _fake_checkpoint(run_dir, 9, marker=False)   # interrupted save, newer: a later save of step 9 rewrites it
    os.makedirs(_ckpt(run_dir, "step_00000002_universal"))
    os.makedirs(_ckpt(run_dir, "step_00000006_universal"))
    os.makedirs(_ckpt(run_dir, ".trash-step_00000001-1-1"))
    with pytest.warns(ck.CheckpointWarning) as record:
        assert ck.find_resume_point(run_dir).tag == "step_00000006"
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2, messages  # step 9 and step 8 skipped (there is no `latest` to disagree)
    assert "step_00000008: file rng/rank_00001.pt has 10 bytes" in messages[0]
    assert "step_00000009: no COMPLETE marker" in messages[1]
    deleted = ck.apply_retention(run_dir, keep_last=1, protect="step_00000006")
    assert sorted(deleted) == ["step_00000002", "step_00000002_universal", "step_00000003", "step_00000004"]
    assert sorted(os.listdir(_ckpt(run_dir))) == ["step_00000006", "step_00000006_universal", "step_00000008",
                                                  "step_00000009"]
    # protect wins over keep_last: the tag just written survives even when it is not the newest complete one.
    _fake_checkpoint(run_dir, 10)
    assert sorted(ck.apply_retention(run_dir, keep_last=1, protect="step_00000006")) == ["step_00000008",
                                                                                         "step_00000009"]
    assert sorted(os.listdir(_ckpt(run_dir))) == ["step_00000006", "step_00000006_universal", "step_00000010"]
    assert sorted(ck.apply_retention(run_dir, keep_last=1, protect="step_00000010")) == [
        "step_00000006", "step_00000006_universal"]
    assert sorted(os.listdir(_ckpt(run_dir))) == ["step_00000010"]


def test_retention_deletes_only_names_it_creates(tmp_path):
    """Retention removes its own leftovers (trash, unfinished conversions, failure files, old universal
    conversions) and never a user's file or folder whose name merely starts or ends alike."""
    from launch import checkpoint as ck

    run_dir = str(tmp_path)
    for step in (2, 4, 6):
        _fake_checkpoint(run_dir, step, world=2)
    ours = ["step_00000002_universal", ".trash-step_00000001-123-456", ".tmp-universal-step_00000004-77"]
    users = ["step_00000002_backup", "my_universal", ".trash-notes", ".tmp-universal-mine", "archive"]
    for name in ours + users:
        os.makedirs(_ckpt(run_dir, name, "inside"))
    for name in [".universal-failed-step_00000004", ".universal-failed-notes.txt", "notes.txt"]:
        with open(_ckpt(run_dir, name), "w") as f:
            f.write("x")
    ck.apply_retention(run_dir, keep_last=1, protect="step_00000006")
    left = set(os.listdir(_ckpt(run_dir)))
    assert set(users) | {".universal-failed-notes.txt", "notes.txt"} <= left, "a user's file was deleted"
    assert not (set(ours) | {".universal-failed-step_00000004", "step_00000002", "step_00000004"}) & left
    assert "step_00000006" in left


def test_failed_universal_conversion_stops_waiting_ranks(tmp_path, monkeypatch):
    """Rank 0's failed conversion leaves a failure file: the other ranks raise at once instead of waiting for
    the timeout; a failure file from an earlier job is ignored (they wait, here until a 1 s timeout)."""
    from launch import checkpoint as ck

    run_dir = str(tmp_path)
    _fake_checkpoint(run_dir, 4, world=2)   # placeholder shard files: DeepSpeed's converter cannot read them
    point = ck.find_resume_point(run_dir)
    with pytest.raises(Exception):
        ck.prepare_resume(point, world_size=3, rank=0)
    failed = _ckpt(run_dir, ck.FAILED_PREFIX + "step_00000004")
    assert os.path.isfile(failed) and not os.path.exists(_ckpt(run_dir, "step_00000004_universal"))
    # Were the failure file ignored, the wait would end in a TimeoutError instead of this RuntimeError.
    monkeypatch.setenv(ck.UNIVERSAL_WAIT_ENV, "30")
    with pytest.raises(RuntimeError, match="rank 0 failed to convert"):
        ck.prepare_resume(point, world_size=3, rank=1)
    old = time.time() - 3600
    os.utime(failed, (old, old))
    monkeypatch.setenv(ck.UNIVERSAL_WAIT_ENV, "1")
    with pytest.raises(TimeoutError, match="did not finish converting"):
        ck.prepare_resume(point, world_size=3, rank=1)
    _fake_checkpoint(run_dir, 6, world=2)
    assert ck.FAILED_PREFIX + "step_00000004" in os.listdir(_ckpt(run_dir))
    ck.apply_retention(run_dir, keep_last=2, protect="step_00000006")
    assert ck.FAILED_PREFIX + "step_00000004" not in os.listdir(_ckpt(run_dir)), "retention cleans failure files"


@pytest.mark.slow  # shares 2-rank DeepSpeed runs (module fixtures): ~30-60 s on 2 cores
def test_kill_during_save_then_bit_exact_resume(base_run, straight_run, tmp_path):
    """kill -9 every rank while step_8 is half written: latest stays at step_6, the partial directory is skipped,
    and the rerun continues from step 6 with exactly the losses of an uninterrupted run."""
    from launch import checkpoint as ck

    run_dir = _copy(base_run, tmp_path)
    os.makedirs(_ckpt(run_dir, "step_00000005"))  # a stale leftover, older than the newest complete checkpoint
    procs = _start(run_dir, steps=8, save_every=2, env={PAUSE_ENV: "120"})
    partial = _ckpt(run_dir, "step_00000008")
    deadline = time.monotonic() + 180
    # Both ranks' shards and RNG files are on disk when they reach the pause before the barrier and marker.
    while not all(os.path.exists(os.path.join(partial, "rng", f"rank_{r:05d}.pt")) for r in (0, 1)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "ranks never reached the save"
        time.sleep(0.2)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()
    assert not os.path.exists(os.path.join(partial, "COMPLETE"))
    assert any(n.endswith("optim_states.pt") for n in os.listdir(partial)), "the kill should hit a half-written save"
    assert open(_ckpt(run_dir, "latest")).read() == "step_00000006"
    with pytest.warns(ck.CheckpointWarning, match="step_00000008.*no COMPLETE marker"):
        assert ck.find_resume_point(run_dir).tag == "step_00000006"

    _run(run_dir, steps=8, save_every=2)
    assert _losses(run_dir) == _losses(straight_run), "resumed losses must equal the uninterrupted run bit for bit"
    tags = sorted(n for n in os.listdir(_ckpt(run_dir)) if n.startswith("step_"))
    assert tags == ["step_00000006", "step_00000008"], "retention: last 2 kept, stale step_5 and old step_4 gone"
    assert open(_ckpt(run_dir, "latest")).read() == "step_00000008"
    assert ck.find_resume_point(run_dir).consumed_samples == 8 * GLOBAL_BATCH


@pytest.mark.slow  # shares 2-rank DeepSpeed runs (module fixtures): ~30-60 s on 2 cores
def test_world_size_change_2_to_1(base_run, straight_run, tmp_path):
    """A 2-rank ZeRO-3 checkpoint resumes on 1 rank through DeepSpeed's universal format: same global batch, so
    the loss continues where the 2-rank run would have been (bf16 reduction order differs: close, not equal)."""
    from launch import checkpoint as ck

    run_dir = _copy(base_run, tmp_path)
    _run(run_dir, steps=8, save_every=2, world=1)
    assert os.path.isfile(_ckpt(run_dir, "step_00000006_universal", "COMPLETE"))
    ours, ref = _losses(run_dir), _losses(straight_run)
    for step in (7, 8):
        assert abs(ours[step] - ref[step]) < 0.02 * ref[step], (step, ours[step], ref[step])
    point = ck.find_resume_point(run_dir)
    assert (point.tag, point.world_size, point.consumed_samples) == ("step_00000008", 1, 8 * GLOBAL_BATCH)
    assert ck.prepare_resume(point, world_size=1, rank=0) == {}



@pytest.mark.slow  # shares 2-rank DeepSpeed runs (module fixtures): ~30-60 s on 2 cores
def test_world_size_change_1_to_2(straight_run, tmp_path):
    """1 rank -> 2 ranks: rank 0 converts while rank 1 waits for the conversion's marker file (no process group
    is needed for that); both then load the universal checkpoint and the loss continues near the 2-rank run's."""
    from launch import checkpoint as ck

    run_dir = str(tmp_path / "grow")
    _run(run_dir, steps=4, save_every=2, world=1)
    _run(run_dir, steps=6, save_every=2, world=2)
    assert os.path.isfile(_ckpt(run_dir, "step_00000004_universal", "COMPLETE"))
    ours, ref = _losses(run_dir), _losses(straight_run)
    for step in (5, 6):
        assert abs(ours[step] - ref[step]) < 0.02 * ref[step], (step, ours[step], ref[step])
    point = ck.find_resume_point(run_dir)
    assert (point.tag, point.world_size, point.consumed_samples) == ("step_00000006", 2, 6 * GLOBAL_BATCH)


@pytest.mark.slow  # two short DeepSpeed runs per stage: ~40 s each on 2 cores
@pytest.mark.parametrize("stage", [0, 2])
def test_world_size_change_other_zero_stages(tmp_path, stage):
    """2 ranks -> 1 rank under ZeRO-2 (partitioned optimizer state: universal conversion, which needs DeepSpeed's
    default universal_checkpoint_info injected) and ZeRO-0 (nothing partitioned: loaded as it is)."""
    from launch import checkpoint as ck

    run_dir = str(tmp_path / f"zero{stage}")
    env = {STAGE_ENV: str(stage)}
    _run(run_dir, steps=2, save_every=2, env=env)
    point = ck.find_resume_point(run_dir)
    assert (point.world_size, point.zero_stage) == (2, stage)
    _run(run_dir, steps=4, save_every=2, world=1, env=env)
    assert os.path.isdir(_ckpt(run_dir, "step_00000002_universal")) == (stage > 0)
    losses = _losses(run_dir)
    assert sorted(losses) == [1, 2, 3, 4] and losses[4] < losses[1], losses
    assert ck.find_resume_point(run_dir).world_size == 1

if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
