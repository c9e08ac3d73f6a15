"""Training configuration: the TrainConfig dataclass (JSON + `--set` overrides) and the DeepSpeed config it resolves.

Two files configure a run, with no overlap:

- the run config (``launch/configs/NAME.json``): model size, sequence length, global batch, micro-batch, the LR
  schedule, optimizer hyperparameters, steps, eval/checkpoint cadence, seed -- everything this file's
  :class:`TrainConfig` holds;
- the DeepSpeed config (``ds_configs/*.json``): DeepSpeed-only knobs (ZeRO stage and buckets, bf16, offload,
  monitors, comms). Batch sizes, accumulation, clipping, optimizer and scheduler are computed from the run
  config and injected by :func:`deepspeed_config`; setting them in the DeepSpeed JSON is an error.

Everything here is checked before any process group starts, so a bad config fails fast on every rank with a
message that names the file, the key and the fix. Check a config by hand (world size 8)::

    python -m launch.config launch/configs/125m.json ds_configs/zero3_bf16.json --world-size 8 --set micro_batch=4
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
from dataclasses import dataclass, field

from launch.blend import sources_from_config
from launch.data import samples_per_rank
from launch.processes import EXIT_USAGE
from model.decoder import SIZES, DecoderConfig

# DeepSpeed keys the run config owns: the fix for each names the TrainConfig key to set instead.
OWNED_DS_KEYS = {
    "train_batch_size": "global_batch",
    "train_micro_batch_size_per_gpu": "micro_batch",
    "gradient_accumulation_steps": "global_batch and micro_batch (accumulation = global / (micro * world size))",
    "gradient_clipping": "grad_clip",
    "optimizer": "lr, betas, eps, weight_decay (the trainer builds AdamW itself)",
    "scheduler": "lr, min_lr, warmup_steps, steps (warmup + cosine, computed from the step)",
}
# Model fields that the run config sets itself rather than through `model`.
_DERIVED_MODEL_FIELDS = {"max_seq_len": "seq_len"}
_MONITORS = ("tensorboard", "csv_monitor", "wandb", "comet")


@dataclass
class TrainConfig:
    """One training run. Steps count optimizer steps; batches count sequences of seq_len tokens."""

    # {"size": one of model.decoder.SIZES, plus any DecoderConfig field to override, e.g. "n_layers": 4}.
    # vocab_size defaults to the data's tokenizer vocabulary; max_seq_len is always seq_len.
    model: dict = field(default_factory=lambda: {"size": "tiny"})
    seq_len: int = 256               # tokens per training sequence
    global_batch: int = 32           # sequences per optimizer step, over all ranks
    micro_batch: int = 4             # sequences per forward/backward on one rank
    lr: float = 3e-4                 # peak learning rate, reached after warmup
    min_lr: float = 3e-5             # cosine decays to this at `steps`
    warmup_steps: int = 100          # linear warmup from lr/warmup_steps to lr
    weight_decay: float = 0.1        # decoupled (AdamW); never on norms, embeddings or 1-D params
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0           # global gradient-norm clip; 0 disables
    steps: int = 1000                # optimizer steps in the run
    eval_every: int = 100            # validation every N steps; 0 disables
    eval_batches: int = 4            # validation uses the first N global batches of the val split
    checkpoint_every: int = 500      # checkpoint every N steps (and always at the end); 0 = only at the end
    keep_checkpoints: int = 3        # complete checkpoints kept on disk
    log_every: int = 1               # print a step line every N steps (metrics.jsonl gets every step)
    seed: int = 1234                 # model init, data order (with the step) and per-rank RNG streams
    # Training data, when --data is not given: [{"path": DIR, "weight": share, "name": label}, ...]; several
    # entries are a weighted blend (launch.blend). Weights are shares of samples, of any scale.
    data: list = field(default_factory=list)
    max_source_epochs: float = 10.0  # warn when a blended source would be read more times than this
    # The LM head + cross-entropy in chunks of this many tokens (model/loss.py), so the (tokens x vocab) fp32
    # logits never exist whole; 0 = unchunked. 1024 tokens keep one chunk's fp32 logits at 1024 * V * 4 bytes
    # (131 MB at V=32k, 0.5 GB at Llama 3's 128k) while each chunk's matmul (1024 x d_model x V) stays large
    # enough to run at full speed; the loss and gradients equal the unchunked ones up to summation order.
    loss_chunk_tokens: int = 1024
    z_loss: float = 0.0              # z-loss coefficient: + z_loss * mean(logsumexp(logits)^2); 0 = off, OLMo 1e-4
    compile: bool = False            # torch.compile each block (launch/compiled.py); eager with a warning if unusable

    # ------------------------------------------------------------------------------------------- validation

    def validate(self, where: str = "the run config") -> None:
        """Raise ValueError naming the key and the fix for every value that cannot work."""
        types = {f.name: f.type for f in dataclasses.fields(self)}
        for name, kind in types.items():
            value = getattr(self, name)
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{where}: {name} must be an integer, got {value!r}")
            if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{where}: {name} must be a number, got {value!r}")
            if kind == "float":
                setattr(self, name, float(value))
        positive = ("seq_len", "global_batch", "micro_batch", "steps", "log_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{where}: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "eval_batches", "seed", "loss_chunk_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{where}: {name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"{where}: compile must be true or false, got {self.compile!r}")
        if self.eval_every and self.eval_batches < 1:
            raise ValueError(f"{where}: eval_every={self.eval_every} needs eval_batches >= 1 (or set eval_every=0)")
        if not self.lr > 0:
            raise ValueError(f"{where}: lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"{where}: min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if not 0 <= self.z_loss < math.inf:
            raise ValueError(f"{where}: z_loss must be a number >= 0 (0 = off; OLMo uses 1e-4), got {self.z_loss}")
        if self.weight_decay < 0 or self.grad_clip < 0 or not self.eps > 0:
            raise ValueError(f"{where}: weight_decay and grad_clip must be >= 0 and eps > 0")
        if (not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"{where}: betas must be two numbers in [0, 1), e.g. [0.9, 0.95]; got {self.betas!r}")
        self.betas = [float(b) for b in self.betas]
        sources_from_config(self.data, where)  # raises naming the entry
        if not self.max_source_epochs > 0:
            raise ValueError(f"{where}: max_source_epochs must be > 0, got {self.max_source_epochs}")
        if self.micro_batch > self.global_batch:
            raise ValueError(f"{where}: micro_batch={self.micro_batch} exceeds global_batch={self.global_batch}")
        self._validate_model(where)

    def _validate_model(self, where: str) -> None:
        if not isinstance(self.model, dict):
            raise ValueError(f"{where}: model must be an object like {{\"size\": \"tiny\"}}, got {self.model!r}")
        size = self.model.get("size")
        if size not in SIZES:
            raise ValueError(f"{where}: model.size={size!r} is not a named size; choose one of {sorted(SIZES)}")
        fields = {f.name for f in dataclasses.fields(DecoderConfig)}
        for key in self.model:
            if key in _DERIVED_MODEL_FIELDS:
                raise ValueError(f"{where}: model.{key} is set from {_DERIVED_MODEL_FIELDS[key]}; "
                                 f"set {_DERIVED_MODEL_FIELDS[key]} instead")
            if key != "size" and key not in fields:
                raise ValueError(f"{where}: unknown key model.{key}{_suggest(key, sorted(fields | {'size'}))}")
        # Build once with a stand-in vocabulary and EOS id so DecoderConfig's own checks run now, not after start-up.
        eos = self.model.get("eos_id")
        stand_in_vocab = max(256, eos + 1 if isinstance(eos, int) else 0)
        self.decoder_config(self.model.get("vocab_size") or stand_in_vocab, data_eos_id=0).validate()

    # --------------------------------------------------------------------------------------------- derived

    def decoder_config(self, data_vocab_size: int, data_eos_id: int | None = None) -> DecoderConfig:
        """The model: the named size, then the overrides; vocab_size defaults to the data's vocabulary, and with
        document_mask eos_id defaults to the data's EOS id (it stays null otherwise, so the model config of a
        run without document masking does not depend on the tokenizer's EOS)."""
        kwargs = {k: v for k, v in SIZES[self.model["size"]].items() if k not in ("vocab_size", "max_seq_len")}
        kwargs.update({k: v for k, v in self.model.items() if k != "size"})
        if kwargs.get("vocab_size") is None:
            kwargs["vocab_size"] = data_vocab_size
        if kwargs.get("document_mask") is True and kwargs.get("eos_id") is None:
            if data_eos_id is None:
                raise ValueError("model.document_mask needs the EOS id of the data's tokenizer; set model.eos_id")
            kwargs["eos_id"] = data_eos_id
        kwargs["max_seq_len"] = self.seq_len
        cfg = DecoderConfig(**kwargs)
        cfg.validate()
        return cfg

    def accumulation(self, world_size: int, where: str = "the run config") -> int:
        """Micro-batches per rank per optimizer step; ValueError listing valid choices when it is not whole."""
        return samples_per_rank(self.global_batch, self.micro_batch, world_size, where) // self.micro_batch

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr at `steps`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ loading run configs

def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _parse_value(text: str):
    # JSON when it parses (numbers, true/false, lists, null), else the raw string (e.g. model.size=125m).
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str], where: str) -> dict:
    """Apply `key=value` strings (dotted keys reach into `model`) to a raw config dict; returns a new dict."""
    out = json.loads(json.dumps(raw))
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set lr=1e-3 or --set model.n_layers=4")
        parts = key.split(".")
        if parts[0] not in top:
            raise ValueError(f"--set {item!r}: unknown key {parts[0]!r} for {where}{_suggest(parts[0], top)}")
        target = out
        for part in parts[:-1]:
            if not isinstance(target.get(part, {}), dict):
                raise ValueError(f"--set {item!r}: {part!r} is not an object, so {key!r} cannot be set")
            target = target.setdefault(part, {})
        target[parts[-1]] = _parse_value(text)
    return out


def config_from_dict(raw: dict, where: str = "the run config") -> TrainConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a run config must be a JSON object")
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in raw:
        if key not in top:
            raise ValueError(f"{where}: unknown key {key!r}{_suggest(key, top)}")
    cfg = TrainConfig(**raw)
    cfg.validate(where)
    return cfg


def load_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a run config JSON, apply `--set key=value` overrides, validate. Errors name the file and key."""
    raw = _read_json(path, "run config", "launch/configs/*.json")
    return config_from_dict(apply_overrides(raw, overrides or [], path), path)


# ------------------------------------------------------------------------------------------- DeepSpeed config

def _read_json(path: str, what: str, choices: str):
    """A JSON file's content; a missing file or bad JSON is an error naming the file and what to pass."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found; pick one of {choices}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_ds_json(path: str) -> dict:
    ds = _read_json(path, "DeepSpeed config", "ds_configs/*.json")
    if not isinstance(ds, dict):
        raise ValueError(f"{path}: a DeepSpeed config must be a JSON object")
    for key, instead in OWNED_DS_KEYS.items():
        if key in ds:
            raise ValueError(f"{path}: {key!r} is set by the run config; remove it here and set {instead} "
                             "in the run config (or with --set)")
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    if ds.get("fp16", {}).get("enabled") and ds.get("bf16", {}).get("enabled"):
        raise ValueError(f"{path}: fp16 and bf16 are both enabled; enable one")
    if ds.get("tensorboard", {}).get("enabled"):
        try:
            import tensorboard  # noqa: F401  (DeepSpeed imports it only when the first event is written)
        except ImportError as e:
            raise ValueError(f"{path}: tensorboard.enabled needs `pip install tensorboard` "
                             "(or use csv_monitor)") from e
    return ds


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(ds: dict) -> bool:
    device = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device not in (None, "none")


def deepspeed_config(cfg: TrainConfig, ds_path: str, world_size: int, run_dir: str | None = None,
                     where: str = "the run config") -> dict:
    """The resolved DeepSpeed dict: the DeepSpeed JSON plus batch sizes, accumulation and clipping from cfg.

    Monitors without an output_path write under RUN_DIR/monitor.
    """
    ds = load_ds_json(ds_path)
    accumulation = cfg.accumulation(world_size, where=where)
    ds["train_batch_size"] = cfg.global_batch
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch
    ds["gradient_accumulation_steps"] = accumulation
    ds["gradient_clipping"] = cfg.grad_clip
    ds.setdefault("steps_per_print", 10**9)  # our own step line replaces DeepSpeed's periodic print
    if offloads_optimizer(ds):
        # We pass DeepSpeedCPUAdam ourselves under offload; nothing to force.
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
    if run_dir is not None:
        for name in _MONITORS:
            section = ds.get(name)
            if isinstance(section, dict) and section.get("enabled") and not section.get("output_path"):
                section["output_path"] = os.path.join(os.path.abspath(run_dir), "monitor")
    return ds


def merge_ds(base: dict, extra: dict) -> dict:
    """Recursive dict merge (extra wins), for the resume additions of launch.checkpoint.prepare_resume."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_ds(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Validate a run config and print the resolved configs.")
    parser.add_argument("config")
    parser.add_argument("ds_config")
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=32000, help="stand-in for the data's vocabulary")
    parser.add_argument("--eos-id", type=int, default=2, help="stand-in for the data's EOS id (model.document_mask)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        ds = deepspeed_config(cfg, args.ds_config, args.world_size, where=args.config)
    except (ValueError, FileNotFoundError) as e:  # the config mistakes this command exists to find
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"train": cfg.to_dict(), "model": cfg.decoder_config(args.vocab_size, args.eos_id).to_dict(),
                      "deepspeed": ds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
