"""Train the decoder under DeepSpeed (ZeRO 0-3, bf16) on a prepared data directory; resumes automatically.

One process per device. Any of these starts it (`DS_ACCELERATOR=cpu` runs on CPU with the gloo backend)::

    # one plain process (no launcher, no mpi4py): CPU or one GPU
    DS_ACCELERATOR=cpu python -m launch.train --data data/ --config launch/configs/tiny.json \\
        --ds-config ds_configs/zero3_bf16.json --out runs/tiny
    # torchrun, 2 processes (2 CPU processes here, or 2 GPUs)
    torchrun --standalone --nproc_per_node 2 -m launch.train --data data/ --config launch/configs/tiny.json \\
        --ds-config ds_configs/zero3_bf16.json --out runs/tiny --set steps=50
    # DeepSpeed's launcher
    deepspeed --num_gpus 8 --module launch.train --data data/ --config launch/configs/125m.json \\
        --ds-config ds_configs/zero3_bf16.json --out runs/125m
    # a weighted blend of prepared directories (shares of samples; launch.blend)
    torchrun --standalone --nproc_per_node 2 -m launch.train --data 0.7:data/web --data 0.3:data/code \\
        --config launch/configs/tiny.json --ds-config ds_configs/zero3_bf16.json --out runs/blend
    # SLURM: one task per GPU; RANK/LOCAL_RANK/WORLD_SIZE come from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS,
    # MASTER_ADDR/MASTER_PORT from the caller (launch/slurm.sh)
    srun python -m launch.train ...

Continued pretraining from a Hugging Face Llama (config.json + model.safetensors)::

    python -m launch.train --data data/ --config launch/configs/125m.json --ds-config ds_configs/zero3_bf16.json \
        --out runs/cont --init-from path/to/hf_llama

The architecture then comes from HF_DIR/config.json (model/hf_import.py says what is accepted); the run config's
`model` section may only add keys that are not architecture (activation_checkpointing, ...) or repeat
config.json's values. Rank 0 checks our logits against transformers' and the data's vocabulary against HF_DIR's
tokenizer before step 0. A run directory that already holds a checkpoint resumes from it and does not read
HF_DIR at all (the model is the checkpoint's), so --init-from may be left out or name a directory that is gone.

Exit status: 0 when `steps` are done; 75 when stopped by SIGUSR1 or SIGTERM (any rank) after a checkpoint --
run the same command again to continue from it. Start-up always resumes from the newest complete checkpoint in
--out; the continuation is bit-identical to an uninterrupted run at the same world size.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from launch.blend import (BlendedStream, Source, blend_identity, check_sources, load_manifests, open_blend,
                          parse_data_arg, sources_from_config)
from launch.checkpoint import find_resume_point, load, prepare_resume, save
from launch.compiled import CompiledBlocks, probe_all_ranks
from launch.config import (TrainConfig, deepspeed_config, load_config, merge_ds, offloads_optimizer,
                           zero_stage)
from launch.data import RankLoader, rank_batch
from launch.metrics import MetricsLogger
from launch.processes import EXIT_PREEMPTED, EXIT_USAGE, distributed_env
from model import hf_import
from model.decoder import Decoder, DecoderConfig, count_params, flops_per_token, llama_ffn_hidden
from pipeline.files import atomic_open, write_atomic
from pipeline.tokenizer_file import SENTENCEPIECE, file_names


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", action="append", default=None, metavar="[WEIGHT:]DIR",
                   help="prepared data directory (manifest.json, tokenizer, shards); repeat with weights for a "
                   "blend, e.g. --data 0.7:data/web --data 0.3:data/code (default: the run config's data list)")
    p.add_argument("--config", required=True, help="run config JSON, e.g. launch/configs/tiny.json")
    p.add_argument("--ds-config", required=True, help="DeepSpeed JSON, e.g. ds_configs/zero3_bf16.json")
    p.add_argument("--out", required=True, help="run directory: configs, metrics.jsonl, checkpoints/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run config key (dotted for model fields: model.n_layers=4); repeatable")
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume even though the tokenizer or a shard differs from the checkpoint's data")
    p.add_argument("--allow-schedule-change", action="store_true",
                   help="resume even though seed, steps, warmup_steps, lr or min_lr differ from the checkpoint's "
                   "(each change is logged)")
    p.add_argument("--init-from", default=None, metavar="HF_DIR",
                   help="start step 0 from a Hugging Face Llama directory (config.json, model.safetensors); "
                   "ignored once --out holds a checkpoint, which is resumed instead")
    p.add_argument("--dist-timeout", type=float, default=1800.0,
                   help="seconds a collective may wait for a peer before the run fails (default 1800)")
    # DeepSpeed's launcher appends --local_rank=N; LOCAL_RANK in the environment says the same.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopFlag:
    """Set by SIGUSR1/SIGTERM; the loop checks it (agreed across ranks) after each optimizer step."""

    def __init__(self):
        self.requested = False
        self.signal_name = None

    def install(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name


# ------------------------------------------------------------------------------------------------ the model

def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices; none on norms, embeddings or any 1-D parameter.

    Under ZeRO-3 the local tensors are empty partitions, so shapes come from `ds_shape`.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = getattr(p, "ds_shape", p.shape)
        lowered = name.lower()
        (no_decay if len(shape) < 2 or "norm" in lowered or "embed" in lowered else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(groups: list[dict], cfg: TrainConfig, ds: dict):
    """torch AdamW (decoupled decay): runs on CPU and GPU and ZeRO 0-3 accept it. Under optimizer offload,
    DeepSpeedCPUAdam in AdamW mode (the same update, vectorized on the host; compiled on first use)."""
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if offloads_optimizer(ds):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def build_model(model_cfg: DecoderConfig, ds: dict, seed: int) -> Decoder:
    """Same seed on every rank, so every rank builds identical weights (ZeRO-3 also broadcasts rank 0's)."""
    import deepspeed

    seed_everything(seed)
    if zero_stage(ds) == 3:
        # Each module's parameters are partitioned as soon as it is constructed: no rank ever holds the model.
        with deepspeed.zero.Init(config_dict_or_path=ds):
            return Decoder(model_cfg)
    return Decoder(model_cfg)


def build_engine(cfg: TrainConfig, model_cfg: DecoderConfig, ds: dict, rank: int, init_weights: bool = False,
                 init_state: dict | None = None):
    """(DeepSpeed engine, CompiledBlocks or None): the model exactly as training runs it (benchmarks use it too).

    compile: the probe runs first, before the model exists, so its own model and compilation never share memory
    with the run's. init_weights (the same on every rank; collective under ZeRO-3): write --init-from's weights,
    `init_state` on rank 0, before DeepSpeed takes the model.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    compiling = False
    if cfg.compile:
        device = torch.device(get_accelerator().current_device_name())
        compiling = probe_all_ranks(model_cfg, device, _train_dtype(ds), rank)
    model = build_model(model_cfg, ds, cfg.seed)
    if init_weights:
        load_weights(model, init_state, ds, rank)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(
        param_groups(model, cfg.weight_decay), cfg, ds), config=ds)
    # Compilation is lazy: the forwards are only replaced here, so loading a checkpoint afterwards is unaffected
    # and a resumed run compiles the same graphs (compiled runs resume bit-exactly too).
    return engine, (CompiledBlocks(engine.module.blocks, rank) if compiling else None)


def _train_dtype(ds: dict) -> torch.dtype:
    """The dtype DeepSpeed gives the module's weights and activations."""
    if ds.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    return torch.float16 if ds.get("fp16", {}).get("enabled") else torch.float32


# ------------------------------------------------------------------- continued pretraining (--init-from)

def load_weights(model: Decoder, state: dict | None, ds: dict, rank: int) -> None:
    """Write rank 0's `state` (our keys, fp32) into a freshly built model, before deepspeed.initialize (whose
    optimizer takes its fp32 master copy from the module's weights then).

    Collective under ZeRO-3: each parameter is gathered on every rank, rank 0 writes it, and leaving
    GatheredParameters(modifier_rank=0) broadcasts rank 0's values and partitions them again. Under ZeRO 0-2 rank 0
    writes its whole copy and deepspeed.initialize broadcasts rank 0's module to the others, as it does for every
    model not built under zero.Init. `state` is read on rank 0 only (None elsewhere) and emptied as it is
    copied, so its host copy of the model is freed here rather than held for the whole run.
    """
    import deepspeed

    for name, p in model.named_parameters():
        if zero_stage(ds) == 3:
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if rank == 0:
                    with torch.no_grad():
                        p.data.copy_(state.pop(name))
        elif rank == 0:
            with torch.no_grad():
                p.data.copy_(state.pop(name))


def _same_architecture(key: str, ours, theirs, cfg: dict) -> bool:
    """Whether a run-config model value means the same model as config.json's (null = the default width)."""
    if key == "n_kv_heads":
        return (ours or cfg["n_heads"]) == (theirs or cfg["n_heads"])
    if key == "ffn_hidden":
        return (ours or llama_ffn_hidden(cfg["d_model"])) == (theirs or llama_ffn_hidden(cfg["d_model"]))
    if isinstance(theirs, float) and isinstance(ours, (int, float)) and not isinstance(ours, bool):
        return float(ours) == theirs
    return ours == theirs


def init_from_model_config(hf_dir: str, cfg: TrainConfig, point, where: str, data_eos_id: int | None = None) -> DecoderConfig:
    """The model of an --init-from run: HF_DIR/config.json's architecture (when resuming, the checkpoint's: the
    weights then come from the checkpoint and HF_DIR is not read), max_seq_len = seq_len, plus the run config's
    `model` keys that are not architecture (activation_checkpointing and any later option). `model.size` is
    ignored; an architecture key that disagrees is a ValueError naming both values."""
    if point is not None and point.client_state.get("model_config"):
        base, source = dict(point.client_state["model_config"]), f"the checkpoint {point.path}"
    else:
        base = hf_import.decoder_config(hf_dir, cfg.seq_len).to_dict()
        source = os.path.join(hf_dir, "config.json")
    base["max_seq_len"] = cfg.seq_len
    for key, value in cfg.model.items():
        if key == "size":
            continue
        if key in hf_import.HF_FIELDS:
            if not _same_architecture(key, value, base.get(key), base):
                raise ValueError(f"{where}: model.{key}={value!r} conflicts with {source} "
                                 f"({hf_import.HF_FIELDS[key]} gives {base.get(key)!r}); with --init-from the "
                                 f"architecture comes from the Hugging Face config: drop model.{key}")
        else:
            base[key] = value
    if base.get("document_mask") and base.get("eos_id") is None:  # as TrainConfig.decoder_config fills it
        base["eos_id"] = data_eos_id
    return DecoderConfig.from_dict(base)


def init_from_weights(hf_dir: str, plan: "RunPlan", data_dir: str) -> dict | None:
    """Rank 0: check the data's tokenizer against HF_DIR's, convert HF_DIR's weights and check our logits against
    transformers' (model.hf_import); returns our fp32 state dict on rank 0, None on the others.

    Collective: a failure on rank 0 is sent to every rank, which all raise the same ValueError (so no rank waits
    for a peer that has given up)."""
    state, problem = None, None
    if plan.rank == 0:
        try:
            tokenizer = os.path.join(data_dir, plan.manifest["tokenizer"]["path"])
            note = hf_import.check_tokenizer(hf_dir, tokenizer, int(plan.manifest["tokenizer"]["vocab_size"]))
            # The architecture alone (no run-config options), as transformers computes it.
            state, diff = hf_import.verify_weights(hf_dir, hf_import.decoder_config(hf_dir, plan.cfg.seq_len))
            print(f"init from {hf_dir}: logits match transformers' (max abs diff {diff:.1e}); {note}", flush=True)
        except (ValueError, FileNotFoundError) as e:  # a refused checkpoint or tokenizer: the user's to fix
            problem = str(e)
    box = [problem]
    torch.distributed.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise ValueError(box[0])
    return state


# ------------------------------------------------------------------------------------------------ run dir

def _write_json(path: str, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# Run-config keys that a resumed run must keep, unless --allow-schedule-change: the data order is a permutation
# keyed by `seed` (changing it mid-epoch repeats some samples and skips others), and the learning rate is a pure
# function of (step, lr, min_lr, warmup_steps, steps), so changing any of them bends the curve at the resume step.
SCHEDULE_KEYS = ("seed", "steps", "warmup_steps", "lr", "min_lr")


def data_hashes(sources: list[Source], manifests: list[dict]) -> dict:
    """What the checkpoint records of its data: the tokenizer, and the identity of tokenizer plus shards (of every
    source, with its name and weight, for a blend)."""
    return {"tokenizer_sha256": manifests[0]["tokenizer"]["sha256"], "data_identity": blend_identity(sources, manifests)}


def check_resume(point, cfg: TrainConfig, model_cfg: DecoderConfig, hashes: dict, allow_data_change: bool,
                 run_dir: str, allow_schedule_change: bool = False) -> list[tuple[str, object, object]]:
    """Refuse to continue a checkpoint with a different model or batch, or (unless allowed) different data or
    schedule. Returns the allowed schedule changes as (key, checkpoint's value, new value), for the log.

    Checkpoints written before the data identity existed hold `manifest_sha256` instead, a hash of the whole
    manifest file; it is ignored (only the tokenizer is compared for them), since it also covered how the data
    was prepared.
    """
    where = f"resuming {point.path}"
    stored = point.client_state
    saved_model = dict(stored.get("model_config") or {})
    if saved_model:  # fields added since the checkpoint was written (document_mask, eos_id) take their defaults
        defaults = {f.name: f.default for f in dataclasses.fields(DecoderConfig)}
        saved_model = {**{k: v for k, v in defaults.items() if v is not dataclasses.MISSING}, **saved_model}
    ours = model_cfg.to_dict()
    # Recomputation does not change the weights; everything else does.
    diff = sorted(k for k in set(saved_model) | set(ours)
                  if k != "activation_checkpointing" and saved_model.get(k) != ours.get(k))
    if saved_model and diff:
        raise ValueError(f"{where}: the model differs from the checkpoint's in {diff} "
                         f"(checkpoint {[saved_model.get(k) for k in diff]}, now {[ours.get(k) for k in diff]}); "
                         f"use the original config, or a new --out instead of {run_dir}")
    if point.consumed_samples != point.step * cfg.global_batch:
        raise ValueError(f"{where}: {point.consumed_samples} samples were consumed in {point.step} steps, which does "
                         f"not match global_batch={cfg.global_batch}; resume with the checkpoint's global_batch="
                         f"{point.consumed_samples // max(point.step, 1)}")
    for key, value in hashes.items():
        if stored.get(key) not in (None, value) and not allow_data_change:
            what = "tokenizer" if key == "tokenizer_sha256" else "tokenizer or shards (their checksums)"
            raise ValueError(f"{where}: the {what} of the data directory ({key} {value[:12]}...) differ from the "
                             f"checkpoint's ({stored[key][:12]}...); the run would continue on different data. Pass "
                             "--allow-data-change to do so deliberately, or point --data at the original directory")
    saved_train = stored.get("train_config") or {}
    ours_train = cfg.to_dict()
    changed = [(k, saved_train[k], ours_train[k]) for k in SCHEDULE_KEYS
               if k in saved_train and saved_train[k] != ours_train[k]]
    if changed and not allow_schedule_change:
        listed = ", ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, old, new in changed)
        raise ValueError(f"{where}: the schedule differs from the checkpoint's ({listed}); a changed seed re-keys the "
                         "data order mid-epoch and the others bend the learning-rate curve. Resume with the "
                         "checkpoint's values (drop those --set overrides), or pass --allow-schedule-change to "
                         "continue with the new ones deliberately")
    return changed


def prepare_run_dir(run_dir: str, sources: list[Source], manifest: dict, cfg: TrainConfig, model_cfg: DecoderConfig,
                    ds: dict, init_from: str | None = None) -> None:
    """Rank 0: resolved configs and the tokenizer, so export/generation need only the run directory.

    config.json records the data the run trained on (every source's path, weight and name); the tokenizer, which
    all sources share, is copied from the first.
    """
    os.makedirs(run_dir, exist_ok=True)
    resolved = cfg.to_dict()
    resolved["model"] = dict(resolved["model"], vocab_size=model_cfg.vocab_size)
    if init_from is not None:  # the architecture came from HF_DIR: write it out, so this file alone rebuilds it
        resolved["model"] = {"size": cfg.model["size"],
                             **{k: v for k, v in model_cfg.to_dict().items() if k != "max_seq_len"}}
    resolved["data"] = [dataclasses.asdict(s) for s in sources]
    _write_json(os.path.join(run_dir, "config.json"), resolved)
    _write_json(os.path.join(run_dir, "ds_config.json"), ds)
    data_dir = sources[0].path
    kind = manifest["tokenizer"].get("kind", SENTENCEPIECE)
    for name in file_names(kind):  # tokenizer.model, or tokenizer.json + tokenizer_config.json
        src = os.path.join(data_dir, name)
        if os.path.isfile(src):
            with open(src, "rb") as f_in, atomic_open(os.path.join(run_dir, name)) as f_out:
                shutil.copyfileobj(f_in, f_out)
        else:
            print(f"warning: {src} not found; export and generation will need --tokenizer", flush=True)


# ----------------------------------------------------------------------------------------------- the loop

def evaluate(engine, stream, cfg: TrainConfig, rank: int, world_size: int, device) -> float:
    """Mean loss over the first eval_batches global batches of `stream` (each rank its slice, then all-reduced)."""
    engine.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with torch.no_grad():
        for b in range(cfg.eval_batches):
            for inputs, targets in rank_batch(stream, b, cfg.global_batch, cfg.micro_batch, rank, world_size):
                total += engine(inputs.to(device), targets.to(device),
                                loss_chunk_tokens=cfg.loss_chunk_tokens).ce.double()   # CE only, no z-loss
                count += 1
    torch.distributed.all_reduce(total)
    engine.train()
    return total.item() / (count * world_size)


def validate(engine, val_streams: list, cfg: TrainConfig, rank: int, world_size: int, device):
    """(val_loss, {source name: val_loss} or None): each source's val split evaluated alike; for a blend the
    overall value is the mean weighted by the blend's shares."""
    if len(val_streams) == 1:
        return evaluate(engine, val_streams[0][1], cfg, rank, world_size, device), None
    per_source = {name: evaluate(engine, stream, cfg, rank, world_size, device) for name, stream, _ in val_streams}
    total = sum(w for _, _, w in val_streams)
    return sum(per_source[name] * w for name, _, w in val_streams) / total, per_source


def _grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    return float(norm.item() if torch.is_tensor(norm) else norm)


def train(args, cfg: TrainConfig, model_cfg: DecoderConfig, ds: dict, point, hashes: dict, rank: int,
          world_size: int, train_stream, val_streams: list | None,
          init_from: str | None = None, init_state: dict | None = None) -> int:
    """init_from: the run's Hugging Face starting point (recorded in every checkpoint); init_state: its weights
    (rank 0; None elsewhere), written into the model before DeepSpeed takes it; ignored when resuming."""
    from deepspeed.accelerator import get_accelerator

    engine, compiled = build_engine(cfg, model_cfg, ds, rank, init_from is not None and point is None,
                                    init_state)
    if rank == 0:
        print(f"model: {count_params(model_cfg) / 1e6:.2f}M params | world {world_size} | ZeRO-{zero_stage(ds)} | "
              f"global batch {cfg.global_batch} x {cfg.seq_len} tokens | micro {cfg.micro_batch} x "
              f"{ds['gradient_accumulation_steps']} accumulation | device {get_accelerator().device_name()}",
              flush=True)

    start_step = 0
    if point is not None:
        load(engine, point)
        start_step = point.step
        if rank == 0:
            print(f"resumed from {point.path} at step {start_step} ({point.consumed_samples} samples)", flush=True)
    else:
        # Ranks draw from their own RNG streams from here on (the model is dropout-free; this is for whatever
        # stochastic piece comes later). On resume the checkpoint restored them instead.
        seed_everything(cfg.seed * 1_000_003 + rank + 1)

    if rank == 0 and cfg.compile:
        print(f"compile: {'blocks compiled with torch.compile' if compiled else 'eager (see the warning above)'}",
              flush=True)

    metrics = MetricsLogger(args.out, rank, cfg.steps, flops_per_token(model_cfg, cfg.seq_len), world_size,
                            cfg.log_every)
    if rank == 0:
        metrics.truncate_after(start_step)  # a fresh run over an old directory, or steps past the checkpoint

    def client_state(steps_done: int) -> dict:
        state = {"consumed_samples": steps_done * cfg.global_batch, "train_config": cfg.to_dict(),
                 "ds_config": ds, "model_config": model_cfg.to_dict(), **hashes}
        if init_from is not None:
            state["init_from"] = os.path.abspath(init_from)
        return state

    stop = StopFlag()
    stop.install()
    try:
        return _loop(args, cfg, engine, ds, train_stream, val_streams, metrics, stop, client_state, start_step,
                     rank, world_size, compiled)
    finally:
        metrics.close()


def _loop(args, cfg, engine, ds, train_stream, val_streams, metrics, stop, client_state, start_step, rank,
          world_size, compiled: CompiledBlocks | None = None) -> int:
    device = engine.device
    tokens_per_step = cfg.global_batch * cfg.seq_len
    loader = RankLoader(train_stream, cfg.global_batch, cfg.micro_batch, rank, world_size, start_step)
    for step, micro_batches in loader:  # `step` is 0-based: the number of optimizer steps already done
        if step >= cfg.steps:
            break
        t0 = time.perf_counter()
        lr = cfg.lr_at(step)  # a pure function of the step: resume needs no scheduler state
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        z_sum = torch.zeros((), dtype=torch.float32, device=device)
        for inputs, targets in micro_batches:
            # model.loss.LossParts of this micro-batch: fp32 loss = mean CE + z-loss, and both parts detached
            parts = engine(inputs.to(device), targets.to(device), loss_chunk_tokens=cfg.loss_chunk_tokens,
                           z_loss=cfg.z_loss)
            engine.backward(parts.loss)  # DeepSpeed divides by the accumulation steps
            engine.step()  # an optimizer step only at the accumulation boundary
            loss_sum += parts.ce
            z_sum += parts.z_loss
        if compiled is not None:
            compiled.settled()  # the first step compiled (or fell back); later errors are real errors
        # One collective carries the losses (for logging) and any rank's stop request.
        packed = torch.stack([loss_sum / len(micro_batches), z_sum / len(micro_batches),
                              torch.tensor(float(stop.requested), device=device)]).double()
        torch.distributed.all_reduce(packed)
        mean_loss, mean_z, stopping = packed[0].item() / world_size, packed[1].item() / world_size, packed[2].item() > 0
        done = step + 1
        grad_norm = _grad_norm(engine)
        by_source = train_stream.tokens_before(done * cfg.global_batch) if isinstance(train_stream, BlendedStream) \
            else None  # a pure function of the step, like the data order
        metrics.step(done, mean_loss, lr, grad_norm, tokens_per_step, time.perf_counter() - t0,
                     tokens_by_source=by_source, z_loss=mean_z if cfg.z_loss else None)
        # DeepSpeed's monitors (csv/tensorboard/wandb in the DeepSpeed JSON) log only the LR by themselves.
        events = [("Train/Samples/train_loss", mean_loss)]
        if grad_norm is not None:
            events.append(("Train/Samples/grad_norm", grad_norm))
        if val_streams and cfg.eval_every and done % cfg.eval_every == 0:
            val_loss, per_source = validate(engine, val_streams, cfg, rank, world_size, device)
            metrics.eval(done, val_loss, per_source)
            events.append(("Train/Samples/val_loss", val_loss))
            events += [(f"Train/Samples/val_loss/{name}", value) for name, value in (per_source or {}).items()]
        if engine.monitor.enabled:
            engine.monitor.write_events([(name, value, done * cfg.global_batch) for name, value in events])
        periodic = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
        if stopping or periodic or done == cfg.steps:
            save(engine, args.out, done, client_state(done), cfg.keep_checkpoints)
        if stopping and done < cfg.steps:
            if rank == 0:
                print(f"stop requested ({stop.signal_name or 'by another rank'}): checkpoint at step {done} saved; "
                      f"exiting with {EXIT_PREEMPTED}, run the same command to continue", flush=True)
            return EXIT_PREEMPTED
    return 0


@dataclass
class RunPlan:
    """Everything launch.train decides before any process group exists (plan_run)."""

    rank: int
    local_rank: int
    world_size: int
    cfg: TrainConfig
    sources: list            # launch.blend.Source, one per data directory
    manifest: dict           # the first source's (the tokenizer all sources share)
    model_cfg: DecoderConfig
    train_stream: object     # SampleStream (one source) or BlendedStream
    val_streams: list | None  # [(source name, SampleStream, weight)] when validation is on
    ds: dict
    hashes: dict
    point: object  # launch.checkpoint.ResumePoint or None
    init_from: str | None = None  # --init-from, or the HF directory the checkpoint's run started from


def plan_run(args: argparse.Namespace) -> RunPlan:
    """Read and check the configs, the data and the checkpoint to resume from. Every mistake a user can make in
    them raises ValueError or FileNotFoundError here, on every rank, before any process group or file exists."""
    rank, local_rank, world_size = distributed_env()
    cfg = load_config(args.config, args.set)
    if args.data:
        sources = check_sources([parse_data_arg(text) for text in args.data])
    else:
        sources = check_sources(sources_from_config(cfg.data, args.config))
    manifests = load_manifests(sources)
    manifest = manifests[0]
    data_vocab, data_eos = int(manifest["tokenizer"]["vocab_size"]), int(manifest["tokenizer"]["eos_id"])
    point = find_resume_point(args.out)
    init_from = args.init_from
    if init_from is None and point is not None:
        # A run that started from a Hugging Face model resumes as one without the flag: the architecture is the
        # checkpoint's (HF_DIR is not read either way once there is a checkpoint).
        init_from = point.client_state.get("init_from")
    if init_from is None:
        model_cfg = cfg.decoder_config(data_vocab, data_eos)
    else:
        model_cfg = init_from_model_config(init_from, cfg, point, args.config, data_eos)
        if data_vocab > model_cfg.vocab_size:
            raise ValueError(f"the data in {sources[0].path} uses a vocabulary of {data_vocab} ids but the model of "
                             f"--init-from {init_from} has vocab_size={model_cfg.vocab_size}; prepare the "
                             f"data with the model's tokenizer")
    train_stream = open_blend(sources, "train", cfg.seq_len, cfg.seed, model_cfg.vocab_size)
    val_streams = None
    if cfg.eval_every:
        weights = train_stream.index.weights if isinstance(train_stream, BlendedStream) else [1.0]
        val_streams = []
        for source, weight in zip(sources, weights):
            try:
                val_streams.append((source.name, open_blend([source], "val", cfg.seq_len, cfg.seed,
                                                            model_cfg.vocab_size), weight))
            except ValueError as e:
                raise ValueError(f"{e}; or disable validation with --set eval_every=0") from e
    ds = deepspeed_config(cfg, args.ds_config, world_size, args.out, where=args.config)
    hashes = data_hashes(sources, manifests)
    if point is not None:
        changed = check_resume(point, cfg, model_cfg, hashes, args.allow_data_change, args.out,
                               args.allow_schedule_change)
        if rank == 0 and changed:
            print("resuming with a changed schedule (--allow-schedule-change): "
                  + ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changed), flush=True)
    if rank == 0 and isinstance(train_stream, BlendedStream):
        report_blend(train_stream, cfg)
    return RunPlan(rank, local_rank, world_size, cfg, sources, manifest, model_cfg, train_stream, val_streams, ds,
                   hashes, point, init_from)


def report_blend(stream: BlendedStream, cfg: TrainConfig) -> None:
    """Print each source's share and how many times the run reads it; warn past max_source_epochs."""
    epochs = stream.epochs_before(cfg.steps * cfg.global_batch)
    parts = [f"{name} {w * 100:.1f}% ({epochs[name]:.2f} epochs)" for name, w in zip(stream.names, stream.index.weights)]
    print(f"data blend over {cfg.steps} steps: " + ", ".join(parts), flush=True)
    for name, e in epochs.items():
        if e > cfg.max_source_epochs:
            print(f"warning: data source {name!r} is read {e:.1f} times in this run (max_source_epochs="
                  f"{cfg.max_source_epochs:g}): it repeats more than its weight intends; lower its weight, prepare "
                  "more of it, or raise max_source_epochs", flush=True)


def main(argv=None) -> int:
    """A usage, config or data mistake prints `error: ...` and exits 2 before training starts; a failure during
    training (a bug, a lost peer, a full disk) keeps its traceback."""
    args = parse_args(argv)
    # DeepSpeed's ZeRO calls a torch collective that torch has renamed; the warning repeats every step.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    try:
        plan = plan_run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    rank, world_size = plan.rank, plan.world_size
    ds = merge_ds(plan.ds, prepare_resume(plan.point, world_size, rank))

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if rank != 0:
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    accel = get_accelerator()
    if accel.device_name() == "cuda":
        torch.cuda.set_device(plan.local_rank)
        backend = "nccl"
    elif accel.device_name() == "cpu":
        backend = "gloo"  # the CPU accelerator may name "ccl" (oneCCL); gloo ships with every torch
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        backend = accel.communication_backend_name()
    try:
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                   timeout=datetime.timedelta(seconds=args.dist_timeout))
        init_state = None
        if plan.init_from is not None and plan.point is None:
            try:
                init_state = init_from_weights(plan.init_from, plan, plan.sources[0].path)
            except (ValueError, FileNotFoundError) as e:  # every rank gets rank 0's verdict
                print(f"error: {e}", file=sys.stderr, flush=True)
                return EXIT_USAGE
        elif args.init_from is not None and rank == 0:
            print(f"resuming {plan.point.path}: --init-from {args.init_from} is not read (the checkpoint holds the "
                  f"model)", flush=True)
        if rank == 0:
            prepare_run_dir(args.out, plan.sources, plan.manifest, plan.cfg, plan.model_cfg, ds, plan.init_from)
        torch.distributed.barrier()
        return train(args, plan.cfg, plan.model_cfg, ds, plan.point, plan.hashes, rank, world_size,
                     plan.train_stream, plan.val_streams, plan.init_from, init_state)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
