"""Crash-safe sharded checkpoints around the DeepSpeed engine: save, completion marker, retention, resume.

Every rank calls `save` after an optimizer step; at start-up every rank calls `find_resume_point` (pure file
inspection), `prepare_resume` (DeepSpeed config additions, before `deepspeed.initialize`) and then `load`.
launch/train.py is the caller; to look at a run's checkpoints by hand:

    python -m launch.checkpoint RUN_DIR          # prints the checkpoint training would resume from

Layout (RUN_DIR/checkpoints/, a file system every rank sees, e.g. the cluster's shared FS):

    latest                      newest COMPLETE tag: a hint for people and tools; the marker is the truth
    step_00000100/              tag = "step_%08d" % step
        zero_pp_rank_R_mp_rank_00_model_states.pt, bf16_zero_pp_rank_R_mp_rank_00_optim_states.pt, ...
                                DeepSpeed's own sharded files (one set per data-parallel rank R)
        rng/rank_00000.pt       python, numpy, torch (and cuda) RNG states of each rank
        model_config.json       DecoderConfig.to_dict()
        client_state.json       step, consumed_samples, world_size, zero_stage, hashes, configs (the trainer's)
        COMPLETE                written last: JSON listing every file of the checkpoint with its size in bytes
    step_00000100_universal/    DeepSpeed universal checkpoint, made by prepare_resume on a world-size change
    .universal-failed-<tag>     left by rank 0 when that conversion fails, so the waiting ranks stop at once

Crash safety: the marker and `latest` are written to a temporary name, fsynced and renamed into place, after
every rank has written and fsynced its files and passed a barrier. A kill -9 at any moment therefore leaves
either no marker (the directory is skipped and later deleted) or a marker whose files are all on disk.
Retention renames a doomed directory away before deleting it, so a half-deleted checkpoint never looks
complete. `find_resume_point` re-checks every listed file's presence and size, so a checkpoint damaged later
(a truncated or missing rank file) is skipped with a warning and the previous one is used.
"""
import json
import os
import random
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from launch.processes import EXIT_USAGE
from pipeline.files import TEMP_MARKER, atomic_open, fsync_path, write_atomic

CHECKPOINTS_DIR = "checkpoints"
TAG_FORMAT = "step_%08d"
TAG_RE = re.compile(r"^step_(\d{8})$")
MARKER = "COMPLETE"
LATEST = "latest"
MODEL_CONFIG = "model_config.json"
CLIENT_STATE = "client_state.json"
RNG_DIR = "rng"
UNIVERSAL_SUFFIX = "_universal"
# Names this module creates besides the tags, each written from its prefix and matched whole: retention deletes
# exactly these, never a user's file or folder that merely starts alike ("step_00000100_backup/", ".trash-notes").
TRASH_PREFIX = ".trash-"  # TRASH_PREFIX + <tag or universal tag> + "-<pid>-<ns>": a directory being deleted
CONVERTING_PREFIX = ".tmp-universal-"  # CONVERTING_PREFIX + <tag> + "-<pid>": a universal conversion in progress
# Rank 0 writes checkpoints/.universal-failed-<tag> when a conversion fails; waiting ranks honour files newer than
# their own start minus _FAILED_SLACK_S (seconds) and ignore older ones left by a previous job.
FAILED_PREFIX = ".universal-failed-"
_FAILED_SLACK_S = 120.0
_TAG = r"step_\d{8}"
_UNIVERSAL_RE = re.compile(rf"^{_TAG}{re.escape(UNIVERSAL_SUFFIX)}$")
_TRASH_RE = re.compile(rf"^{re.escape(TRASH_PREFIX)}{_TAG}({re.escape(UNIVERSAL_SUFFIX)})?-\d+-\d+$")
_CONVERTING_RE = re.compile(rf"^{re.escape(CONVERTING_PREFIX)}{_TAG}-\d+$")
_FAILED_RE = re.compile(rf"^{re.escape(FAILED_PREFIX)}{_TAG}$")
# DeepSpeed's save_checkpoint copies its recovery scripts (zero_to_fp32.py, ...) next to the tags.
_DEEPSPEED_SCRIPT_RE = re.compile(r"^zero_to_\w+\.py$")
# DeepSpeed names each data-parallel rank's shard "...zero_pp_rank_<R>_mp_rank_<MP>_<kind>_states.pt".
_ZERO_RANK_RE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_")
_RNG_RE = re.compile(r"^rng/rank_(\d+)\.pt$")
# Seconds the other ranks wait for rank 0's universal conversion (it grows with the optimizer state; a large model
# on a shared filesystem needs minutes).
UNIVERSAL_WAIT_ENV = "CHECKPOINT_UNIVERSAL_TIMEOUT_S"
_DEFAULT_UNIVERSAL_TIMEOUT_S = 3600.0


class CheckpointWarning(UserWarning):
    """A checkpoint directory was skipped (incomplete or damaged) or `latest` disagrees with the markers."""


@dataclass
class ResumePoint:
    tag: str               # "step_%08d"
    path: str              # RUN_DIR/checkpoints/<tag>
    step: int              # optimizer steps done
    consumed_samples: int  # global samples consumed: the data stream continues here
    world_size: int        # ranks that wrote the checkpoint
    zero_stage: int
    client_state: dict = field(repr=False)  # client_state.json as written by save


def tag_for_step(step: int) -> str:
    return TAG_FORMAT % step


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS_DIR)


# ----------------------------------------------------------------------------------------------- inspection

def _warn(msg: str) -> None:
    warnings.warn(msg, CheckpointWarning, stacklevel=3)


def is_own_entry(name: str) -> bool:
    """Whether ``name``, an entry of RUN_DIR/checkpoints/, is one this module creates (everything inside such a
    directory is then its own or DeepSpeed's)."""
    return bool(name == LATEST or TAG_RE.match(name) or _UNIVERSAL_RE.match(name) or _TRASH_RE.match(name)
                or _CONVERTING_RE.match(name) or _FAILED_RE.match(name) or _DEEPSPEED_SCRIPT_RE.match(name))


def _tag_dirs(ckpt_dir: str) -> list[tuple[int, str]]:
    """(step, tag) of every directory named like a tag, newest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = []
    for name in os.listdir(ckpt_dir):
        m = TAG_RE.match(name)
        if m and os.path.isdir(os.path.join(ckpt_dir, name)):
            found.append((int(m.group(1)), name))
    return sorted(found, reverse=True)


def _check_checkpoint(tag_dir: str) -> tuple[dict, dict]:
    """Returns (marker, client_state) of a complete checkpoint; raises ValueError saying what is wrong."""
    marker_path = os.path.join(tag_dir, MARKER)
    if not os.path.isfile(marker_path):
        raise ValueError(f"no {MARKER} marker (interrupted while saving)")
    try:
        with open(marker_path) as f:
            marker = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable {MARKER} marker ({e})") from e
    files = marker.get("files")
    world_size = marker.get("world_size")
    if not isinstance(files, dict) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"malformed {MARKER} marker (needs 'files' and 'world_size')")
    for rel, size in sorted(files.items()):
        path = os.path.join(tag_dir, rel)
        if not os.path.isfile(path):
            raise ValueError(f"missing file {rel}")
        actual = os.path.getsize(path)
        if actual != size:
            raise ValueError(f"file {rel} has {actual} bytes, the marker recorded {size} (truncated or rewritten)")
    # The marker must also describe a whole world: one RNG file and (under ZeRO) one shard set per rank.
    for r in range(world_size):
        if _rng_relpath(r) not in files:
            raise ValueError(f"marker lists no {_rng_relpath(r)} for rank {r} of {world_size}")
    zero_ranks = {int(m.group(1)) for rel in files for m in [_ZERO_RANK_RE.search(os.path.basename(rel))] if m}
    if zero_ranks and zero_ranks != set(range(world_size)):
        raise ValueError(f"marker lists DeepSpeed shards of ranks {sorted(zero_ranks)}, expected 0..{world_size - 1}")
    for name in (CLIENT_STATE, MODEL_CONFIG):
        if name not in files:
            raise ValueError(f"marker lists no {name}")
    try:
        with open(os.path.join(tag_dir, CLIENT_STATE)) as f:
            client_state = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable {CLIENT_STATE} ({e})") from e
    for key in ("step", "consumed_samples", "world_size", "zero_stage"):
        if not isinstance(client_state.get(key), int):
            raise ValueError(f"{CLIENT_STATE} has no integer {key!r}")
    return marker, client_state


def find_resume_point(run_dir: str) -> ResumePoint | None:
    """The newest complete, intact checkpoint of RUN_DIR, or None when there is none (a fresh run).

    Pure file inspection: every rank may call it before any process group exists. Directories without the
    marker, or whose listed files are missing or have the wrong size, are skipped with a CheckpointWarning
    naming the directory. `latest` is only compared against the answer (a mismatch is warned about).
    """
    ckpt_dir = checkpoints_dir(run_dir)
    chosen = None
    for step, tag in _tag_dirs(ckpt_dir):
        tag_dir = os.path.join(ckpt_dir, tag)
        try:
            marker, client_state = _check_checkpoint(tag_dir)
        except ValueError as e:
            _warn(f"skipping checkpoint {tag_dir}: {e}")
            continue
        if client_state["step"] != step:
            _warn(f"skipping checkpoint {tag_dir}: {CLIENT_STATE} says step {client_state['step']}, the tag {step}")
            continue
        chosen = ResumePoint(tag=tag, path=tag_dir, step=step, consumed_samples=client_state["consumed_samples"],
                             world_size=client_state["world_size"], zero_stage=client_state["zero_stage"],
                             client_state=client_state)
        break
    latest_path = os.path.join(ckpt_dir, LATEST)
    if chosen is not None and os.path.isfile(latest_path):
        with open(latest_path) as f:
            hint = f.read().strip()
        if hint != chosen.tag:
            _warn(f"{latest_path} names {hint!r} but the newest complete checkpoint is {chosen.tag!r}; using the latter")
    return chosen


# ---------------------------------------------------------------------------------------------- file helpers

def _rng_relpath(rank: int) -> str:
    return f"{RNG_DIR}/rank_{rank:05d}.pt"


def _json_default(value):
    # numpy scalars and paths sneak into configs; anything else is a caller bug worth a clear message.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"client_state value {value!r} of type {type(value).__name__} is not JSON-serializable")


def _list_files(tag_dir: str) -> dict[str, int]:
    """Relative path -> size of every file of a checkpoint except the marker and temporaries."""
    files = {}
    for root, _, names in os.walk(tag_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), tag_dir).replace(os.sep, "/")
            if rel == MARKER or TEMP_MARKER in name:
                continue
            files[rel] = os.path.getsize(os.path.join(root, name))
    return dict(sorted(files.items()))


def _remove_dir(path: str) -> None:
    """Rename away first (atomic), then delete: a crash mid-delete never leaves a marked half-checkpoint."""
    trash = os.path.join(os.path.dirname(path), f"{TRASH_PREFIX}{os.path.basename(path)}-{os.getpid()}-{time.time_ns()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ------------------------------------------------------------------------------------------ process group

def _dist():
    return torch.distributed if torch.distributed.is_available() and torch.distributed.is_initialized() else None


def _rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def _world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def _barrier() -> None:
    d = _dist()
    if d:
        d.barrier()


def _broadcast_from_rank0(value):
    d = _dist()
    if not d:
        return value
    box = [value]
    d.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------- RNG state

def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's key array becomes a tensor so the file loads with torch.load(weights_only=True).
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuples(x):
    # random.setstate needs (int, tuple[int, ...], float | None), whatever container the file round-tripped to.
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------------------------------- save

def _zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def _model_config_dict(engine, client_state: dict) -> dict:
    if isinstance(client_state.get("model_config"), dict):
        return client_state["model_config"]
    module = engine.module
    for name in ("cfg", "config"):
        cfg = getattr(module, name, None)
        if hasattr(cfg, "to_dict"):
            return cfg.to_dict()
    raise ValueError("save() needs the model's DecoderConfig: put client_state['model_config'] = cfg.to_dict()")


def _write_rank_files(engine, ckpt_dir: str, tag: str, state: dict, rank: int) -> None:
    """This rank's part of a checkpoint, on disk and flushed: its DeepSpeed shards and RNG states (rank 0 also
    DeepSpeed's shared files). Nothing marks the checkpoint complete yet."""
    tag_dir = os.path.join(ckpt_dir, tag)
    engine.save_checkpoint(ckpt_dir, tag=tag, client_state=state, save_latest=False)
    rng_path = os.path.join(tag_dir, _rng_relpath(rank))
    os.makedirs(os.path.dirname(rng_path), exist_ok=True)
    with atomic_open(rng_path) as f:
        torch.save(_rng_state(), f)
    # Each rank flushes its own shards (and rank 0 the shared files) before the barrier that precedes the marker.
    for rel in _list_files(tag_dir):
        m = _ZERO_RANK_RE.search(os.path.basename(rel)) or _RNG_RE.match(rel)
        if (int(m.group(1)) if m else 0) == rank:
            fsync_path(os.path.join(tag_dir, rel))


def save(engine, run_dir: str, step: int, client_state: dict, keep_last: int) -> str:
    """Write checkpoint `step_%08d` of RUN_DIR; every rank calls it. Returns the tag.

    client_state: JSON-serializable dict (it must hold 'consumed_samples'); step, world_size and zero_stage are
    filled in here. keep_last: complete checkpoints to keep (>= 1); older ones are deleted after this one is
    committed, as are incomplete directories older than it. Saving a step that already has a complete
    checkpoint (e.g. the final save right after a periodic one) keeps the existing one untouched.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last={keep_last}: keep at least 1 checkpoint (set keep_checkpoints >= 1)")
    if "consumed_samples" not in client_state:
        raise ValueError("client_state needs 'consumed_samples' (global samples consumed) so resume can seek the data")
    rank, world_size = _rank(), _world_size()
    ckpt_dir = checkpoints_dir(run_dir)
    tag = tag_for_step(step)
    tag_dir = os.path.join(ckpt_dir, tag)
    state = dict(client_state, step=int(step), world_size=world_size, zero_stage=_zero_stage(engine))
    state_json = json.dumps(state, indent=2, sort_keys=True, default=_json_default).encode()
    model_json = json.dumps(_model_config_dict(engine, client_state), indent=2, sort_keys=True).encode()

    # Rank 0 decides what to do with an existing directory of this tag and tells everyone (same FS view).
    action = "write"
    if rank == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        if os.path.isdir(tag_dir):
            try:
                _check_checkpoint(tag_dir)
                action = "exists"
            except ValueError as e:
                _warn(f"removing unusable checkpoint {tag_dir} before rewriting it: {e}")
                _remove_dir(tag_dir)
    action = _broadcast_from_rank0(action)
    if action == "exists":
        return tag

    _write_rank_files(engine, ckpt_dir, tag, state, rank)
    _barrier()

    if rank == 0:
        write_atomic(os.path.join(tag_dir, CLIENT_STATE), state_json)
        write_atomic(os.path.join(tag_dir, MODEL_CONFIG), model_json)
        for sub in {os.path.dirname(rel) for rel in _list_files(tag_dir)}:
            fsync_path(os.path.join(tag_dir, sub) if sub else tag_dir)
        marker = {"tag": tag, "step": int(step), "world_size": world_size, "zero_stage": state["zero_stage"],
                  "time": time.time(), "files": _list_files(tag_dir)}
        write_atomic(os.path.join(tag_dir, MARKER), json.dumps(marker, indent=2).encode())
        write_atomic(os.path.join(ckpt_dir, LATEST), tag.encode())
        apply_retention(run_dir, keep_last, protect=tag)
    # Nobody returns (and possibly exits) before the checkpoint is committed.
    _barrier()
    return tag


def apply_retention(run_dir: str, keep_last: int, protect: str | None = None) -> list[str]:
    """Delete complete checkpoints beyond the newest keep_last, incomplete or damaged directories older than the
    newest complete one, universal conversions of deleted tags, and leftovers of interrupted deletes/conversions.
    `protect` (the tag just written) is never deleted. Single process (rank 0). Returns the deleted names.

    "Complete" means what find_resume_point accepts (marker present and every listed file intact), so a damaged
    newer checkpoint neither counts towards keep_last nor pushes the one just written out.
    """
    ckpt_dir = checkpoints_dir(run_dir)
    complete, incomplete = [], []
    for step, tag in _tag_dirs(ckpt_dir):
        try:
            _check_checkpoint(os.path.join(ckpt_dir, tag))
            complete.append((step, tag))
        except ValueError:
            incomplete.append((step, tag))
    if not complete:
        return []
    kept = {tag for _, tag in complete[:keep_last]} | ({protect} if protect else set())
    doomed = [tag for _, tag in complete if tag not in kept]
    newest = complete[0][0]
    # Newer incomplete directories stay: a later save of that step removes and rewrites them.
    doomed += [tag for step, tag in incomplete if step < newest and tag != protect]
    for name in os.listdir(ckpt_dir):
        path = os.path.join(ckpt_dir, name)
        if os.path.islink(path):
            continue  # never ours: every name below is a directory or file this module created
        if _UNIVERSAL_RE.match(name) and name[:-len(UNIVERSAL_SUFFIX)] not in kept:
            doomed.append(name)
        elif (_TRASH_RE.match(name) or _CONVERTING_RE.match(name)) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif _FAILED_RE.match(name) and os.path.isfile(path):
            os.remove(path)
    for name in doomed:
        if os.path.isdir(os.path.join(ckpt_dir, name)):
            _remove_dir(os.path.join(ckpt_dir, name))
    return doomed


# --------------------------------------------------------------------------------------------------- resume

def _universal_tag(tag: str) -> str:
    return tag + UNIVERSAL_SUFFIX


def _needs_universal(point: ResumePoint, world_size: int) -> bool:
    """True when the checkpoint's optimizer state is partitioned over a different number of ranks. ZeRO stage 0
    (one unpartitioned mp_rank_00 file) loads as it is at any world size."""
    if point.world_size == world_size:
        return False
    return any(_ZERO_RANK_RE.search(name) for name in os.listdir(point.path))


def prepare_resume(point: ResumePoint | None, world_size: int, rank: int) -> dict:
    """DeepSpeed config additions needed to load `point` at `world_size`; merge them before deepspeed.initialize.

    Same world size, or an unpartitioned (ZeRO-0) checkpoint: {}. A ZeRO-1/2/3 checkpoint of a different world
    size: rank 0 converts it with DeepSpeed's ds_to_universal into <tag>_universal/ (in a temporary directory,
    renamed into place when done); the other ranks wait by polling for its marker file, because no process group
    needs to exist yet (timeout: $CHECKPOINT_UNIVERSAL_TIMEOUT_S, default 3600 s; a failure file from rank 0 ends
    the wait at once). Returns {"checkpoint": {"load_universal": True}}.
    """
    if point is None or not _needs_universal(point, world_size):
        return {}
    ckpt_dir = os.path.dirname(point.path)
    final = os.path.join(ckpt_dir, _universal_tag(point.tag))
    done = os.path.join(final, MARKER)
    # Rank 0 leaves this file when the conversion fails, so the waiting ranks stop at once instead of at the timeout.
    failed = os.path.join(ckpt_dir, f"{FAILED_PREFIX}{point.tag}")
    if rank == 0 and not os.path.isfile(done):
        if os.path.exists(failed):
            os.remove(failed)
        if os.path.isdir(final):  # a conversion without marker cannot be trusted
            _remove_dir(final)
        work = os.path.join(ckpt_dir, f"{CONVERTING_PREFIX}{point.tag}-{os.getpid()}")
        out = os.path.join(work, _universal_tag(point.tag))
        print(f"checkpoint: world size {point.world_size} -> {world_size}: converting {point.path} to a "
              f"universal checkpoint {final}", flush=True)
        try:
            _convert_to_universal(point.path, out)
        except BaseException as e:
            write_atomic(failed, f"{type(e).__name__}: {e}".encode())
            raise
        write_atomic(os.path.join(out, MARKER), json.dumps({"source": point.tag,
                                                              "source_world_size": point.world_size}).encode())
        os.rename(out, final)
        fsync_path(ckpt_dir)
        shutil.rmtree(work, ignore_errors=True)
    elif rank != 0:
        timeout = float(os.environ.get(UNIVERSAL_WAIT_ENV, _DEFAULT_UNIVERSAL_TIMEOUT_S))
        started = time.time()
        deadline = time.monotonic() + timeout
        while not os.path.isfile(done):
            # Only a failure of this attempt counts: rank 0 deletes an older file when it starts, and the ranks of
            # one job start within seconds of each other, so anything from before that is a previous job's.
            if os.path.isfile(failed) and os.path.getmtime(failed) > started - _FAILED_SLACK_S:
                with open(failed) as f:
                    reason = f.read().strip()
                raise RuntimeError(f"rank {rank}: rank 0 failed to convert {point.path} into {final}: {reason} "
                                   "(see rank 0's log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank}: rank 0 did not finish converting {point.path} into {final} within "
                                   f"{timeout:.0f}s (raise ${UNIVERSAL_WAIT_ENV} for big models)")
            time.sleep(0.5)
    return {"checkpoint": {"load_universal": True}}


def _convert_to_universal(src: str, out: str) -> None:
    import argparse

    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=src, output_folder=out, num_extract_workers=1, num_merge_workers=1,
                              keep_temp_folder=False, strict=True,
                              # ZeRO-1/2 checkpoints need a universal_checkpoint_info block (tensor-parallel merge
                              # patterns, which Megatron writes); with no tensor parallelism the default is right.
                              inject_missing_state=True)
    ds_to_universal.main(args)


def load(engine, point: ResumePoint) -> dict:
    """Load `point` into a freshly initialized engine (all ranks) and restore this rank's RNG states.

    Returns the client state saved with it (client_state.json). A world-size change loads <tag>_universal/, which
    prepare_resume made (ZeRO-0: the tag itself); the RNG states of a different world size do not map onto ranks
    and are left as the caller seeded them.
    """
    ckpt_dir = os.path.dirname(point.path)
    rank, world_size = _rank(), _world_size()
    universal = _needs_universal(point, world_size)
    if universal and not engine.load_universal_checkpoint():
        raise ValueError(f"{point.path} was written by {point.world_size} ranks, this run has {world_size}: call "
                         "prepare_resume() and merge its dict into the DeepSpeed config before deepspeed.initialize")
    tag = _universal_tag(point.tag) if universal else point.tag
    load_path, _ = engine.load_checkpoint(ckpt_dir, tag=tag, load_module_strict=True, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {os.path.join(ckpt_dir, tag)}")
    if point.world_size == world_size:
        rng_path = os.path.join(point.path, _rng_relpath(rank))
        _set_rng_state(torch.load(rng_path, weights_only=True))
    return dict(point.client_state)


def main(argv=None) -> int:
    """Print the resume point of a run directory (what launch.train would continue from)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.run_dir):
        print(f"error: {args.run_dir} is not a directory; pass a run directory (launch.train --out)", file=sys.stderr)
        return EXIT_USAGE
    point = find_resume_point(args.run_dir)
    if point is None:
        print(f"{args.run_dir}: no complete checkpoint (training would start from scratch)")
        return 1
    print(json.dumps({"tag": point.tag, "path": point.path, "step": point.step,
                      "consumed_samples": point.consumed_samples, "world_size": point.world_size,
                      "zero_stage": point.zero_stage}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
