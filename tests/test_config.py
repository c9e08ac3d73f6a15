"""Run config and DeepSpeed config resolution: every error is raised before any process group exists.

    python -m pytest tests/test_config.py -q
"""
import glob
import json
import math
import os

import numpy as np
import pytest

from launch.config import (OWNED_DS_KEYS, TrainConfig, apply_overrides, config_from_dict, deepspeed_config,
                           load_config, load_ds_json, merge_ds)
from model.decoder import SIZES, DecoderConfig, count_params
from pipeline.manifest import write_manifest
from pipeline.shards import write_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "launch", "configs", "*.json")))
DS_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "ds_configs", "*.json")))
TINY = os.path.join(ROOT, "launch", "configs", "tiny.json")
ZERO3 = os.path.join(ROOT, "ds_configs", "zero3_bf16.json")


def _write(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def test_every_shipped_config_loads_and_resolves():
    names = {os.path.basename(p) for p in RUN_CONFIGS}
    assert {"tiny.json", "quickstart.json", "125m.json", "350m.json", "1b.json", "7b.json"} <= names
    assert {"zero0_bf16.json", "zero1_bf16.json", "zero2_bf16.json", "zero3_bf16.json",
            "zero3_offload_bf16.json", "zero3_bf16_monitor.json"} <= {os.path.basename(p) for p in DS_CONFIGS}
    for path in RUN_CONFIGS:
        cfg = load_config(path)
        model = cfg.decoder_config(32000)
        assert model.max_seq_len == cfg.seq_len and model.vocab_size == 32000
        # The named size is what the config asked for (params within the size's ballpark at vocab 32000).
        assert count_params(model) > 0
        for ds_path in DS_CONFIGS:
            for world in (1, 2):
                ds = deepspeed_config(cfg, ds_path, world, run_dir="/tmp/run")
                assert ds["train_batch_size"] == cfg.global_batch
                assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world \
                    == cfg.global_batch
                assert ds["gradient_clipping"] == cfg.grad_clip
    stages = {os.path.basename(p): load_ds_json(p)["zero_optimization"]["stage"] for p in DS_CONFIGS}
    assert stages["zero0_bf16.json"] == 0 and stages["zero2_bf16.json"] == 2 and stages["zero3_bf16.json"] == 3
    for path in DS_CONFIGS:
        assert load_ds_json(path)["bf16"]["enabled"] is True


def test_big_configs_resolve_at_cluster_sizes():
    # 125m/350m at 8 GPUs, 1b at 64, 7b at 256: whole accumulation steps.
    for name, world in (("125m", 8), ("350m", 8), ("1b", 64), ("7b", 256)):
        cfg = load_config(os.path.join(ROOT, "launch", "configs", f"{name}.json"))
        ds = deepspeed_config(cfg, ZERO3, world)
        assert ds["gradient_accumulation_steps"] >= 1
        assert cfg.model["size"] == name and name in SIZES


def test_batch_arithmetic_error_names_numbers_and_choices():
    cfg = load_config(TINY)  # global 8, micro 2
    with pytest.raises(ValueError) as e:
        deepspeed_config(cfg, ZERO3, 3, where=TINY)
    msg = str(e.value)
    assert "global_batch=8" in msg and "micro_batch=2" in msg and "world size 3" in msg and "multiple of 6" in msg
    assert TINY in msg
    cfg = load_config(TINY, ["global_batch=12", "micro_batch=4"])
    with pytest.raises(ValueError, match=r"micro_batch in \[1, 2, 3, 6\]"):
        cfg.accumulation(2)
    assert load_config(TINY, ["global_batch=12", "micro_batch=3"]).accumulation(2) == 2


def test_unknown_and_misspelled_keys_suggest_the_closest(tmp_path):
    raw = json.load(open(TINY))
    raw["warmup_step"] = 3
    path = _write(tmp_path / "bad.json", raw)
    with pytest.raises(ValueError) as e:
        load_config(path)
    assert path in str(e.value) and "'warmup_step'" in str(e.value) and "did you mean 'warmup_steps'" in str(e.value)
    with pytest.raises(ValueError, match="did you mean 'global_batch'"):
        load_config(TINY, ["global_bach=16"])
    with pytest.raises(ValueError, match="model.n_layer.*did you mean 'n_layers'"):
        load_config(TINY, ["model.n_layer=2"])
    with pytest.raises(ValueError, match="max_seq_len is set from seq_len"):
        load_config(TINY, ["model.max_seq_len=128"])
    with pytest.raises(ValueError, match="not a named size"):
        load_config(TINY, ["model.size=3b"])
    with pytest.raises(ValueError, match="expected key=value"):
        load_config(TINY, ["lr"])
    with pytest.raises(FileNotFoundError, match="launch/configs"):
        load_config(str(tmp_path / "missing.json"))


def test_set_overrides_parse_json_then_strings():
    cfg = load_config(TINY, ["lr=1e-3", "steps=7", "betas=[0.8, 0.9]", "model.size=125m", "model.n_layers=2",
                             "model.tie_embeddings=false", "seed=3"])
    assert cfg.lr == 1e-3 and cfg.steps == 7 and cfg.betas == [0.8, 0.9] and cfg.seed == 3
    assert cfg.model == {"size": "125m", "n_layers": 2, "tie_embeddings": False}
    model = cfg.decoder_config(1000)
    assert (model.d_model, model.n_layers, model.tie_embeddings) == (SIZES["125m"]["d_model"], 2, False)
    # Explicit vocab wins over the data's.
    assert load_config(TINY, ["model.vocab_size=640"]).decoder_config(500).vocab_size == 640
    # apply_overrides never mutates its input.
    raw = {"model": {"size": "tiny"}}
    apply_overrides(raw, ["model.n_layers=1"], "x")
    assert raw == {"model": {"size": "tiny"}}


@pytest.mark.parametrize("override, match", [
    (["micro_batch=16"], "exceeds global_batch"),
    (["min_lr=1.0"], "min_lr must be in"),
    (["betas=[0.9]"], "betas must be two numbers"),
    (["steps=0"], "steps must be >= 1"),
    (["steps=1.5"], "steps must be an integer"),
    (["lr=fast"], "lr must be a number"),
    (["eval_batches=0"], "eval_batches >= 1"),
    (["model.d_model=130"], "d_model|n_heads"),
])
def test_invalid_values_are_rejected(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(TINY, override)


@pytest.mark.parametrize("key", sorted(OWNED_DS_KEYS))
def test_ds_json_must_not_set_trainconfig_keys(tmp_path, key):
    ds = json.load(open(ZERO3))
    ds[key] = 1
    path = _write(tmp_path / "ds.json", ds)
    with pytest.raises(ValueError) as e:
        deepspeed_config(load_config(TINY), path, 1)
    assert path in str(e.value) and key in str(e.value) and OWNED_DS_KEYS[key].split()[0] in str(e.value)


def test_ds_json_checks(tmp_path):
    ds = json.load(open(ZERO3))
    ds["zero_optimization"]["stage"] = 4
    with pytest.raises(ValueError, match="stage must be 0, 1, 2 or 3"):
        load_ds_json(_write(tmp_path / "a.json", ds))
    with pytest.raises(FileNotFoundError, match="ds_configs"):
        load_ds_json(str(tmp_path / "none.json"))
    monitor = deepspeed_config(load_config(TINY), os.path.join(ROOT, "ds_configs", "zero3_bf16_monitor.json"), 1,
                               run_dir=str(tmp_path / "run"))
    assert monitor["csv_monitor"]["output_path"] == os.path.join(str(tmp_path / "run"), "monitor")


def test_lr_schedule_warmup_then_cosine():
    cfg = config_from_dict({"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "steps": 110})
    lrs = [cfg.lr_at(s) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))              # warmup rises
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))               # then decays
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4)                  # half way through the cosine
    assert cfg.lr_at(110) == pytest.approx(1e-4) and cfg.lr_at(500) == pytest.approx(1e-4)
    assert config_from_dict({"warmup_steps": 0, "steps": 10, "lr": 1.0, "min_lr": 0.0}).lr_at(0) == 1.0


def test_merge_ds_for_resume_additions():
    base = {"zero_optimization": {"stage": 3}, "checkpoint": {"tag_validation": "Warn"}}
    merged = merge_ds(base, {"checkpoint": {"load_universal": True}})
    assert merged == {"zero_optimization": {"stage": 3}, "checkpoint": {"tag_validation": "Warn",
                                                                         "load_universal": True}}
    assert base["checkpoint"] == {"tag_validation": "Warn"}


def test_decoder_config_validation_runs_at_load():
    cfg = TrainConfig()
    cfg.model = {"size": "tiny", "n_kv_heads": 3}
    with pytest.raises(ValueError):
        cfg.validate()
    assert isinstance(load_config(TINY).decoder_config(8000), DecoderConfig)


# ------------------------------------------------------------------------------ errors at start-up (main)

@pytest.fixture
def small_data(tmp_path):
    data = tmp_path / "data"
    shards = []
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        path = f"{split}/shard-00000-of-00001"
        stats = write_shard(str(data / path), [list(rng.integers(3, 300, 50)) + [2] for _ in range(20)], 300)
        shards.append(dict(split=split, path=path, **stats))
    write_manifest(str(data), {"documents": {"read": 40, "kept": 40, "rejected": {}},
                               "tokens": {"train": shards[0]["tokens"], "val": shards[1]["tokens"]},
                               "tokenizer": {"path": "tokenizer.model", "vocab_size": 300, "eos_id": 2,
                                             "sha256": "0" * 64},
                               "shards": shards, "config": {}})
    return str(data)


def test_vocab_mismatch_with_data_fails_before_process_group(single_process_env, small_data, tmp_path):
    import torch

    from launch.train import parse_args, plan_run

    with pytest.raises(ValueError) as e:
        plan_run(parse_args(["--data", small_data, "--config", TINY, "--ds-config", ZERO3, "--out",
                             str(tmp_path / "run"), "--set", "model.vocab_size=100"]))
    assert "300" in str(e.value) and "100" in str(e.value) and small_data in str(e.value)
    assert not torch.distributed.is_initialized()
    assert not os.path.exists(tmp_path / "run")


def test_world_size_mismatch_fails_before_process_group(single_process_env, small_data, tmp_path, capsys):
    """Through main: the message on stderr as "error: ...", exit status 2, no process group."""
    import torch

    from launch.train import main

    single_process_env.setenv("WORLD_SIZE", "3")
    assert main(["--data", small_data, "--config", TINY, "--ds-config", ZERO3, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "multiple of 6" in err
    assert not torch.distributed.is_initialized()


def test_missing_val_split_says_how_to_disable_eval(single_process_env, small_data, tmp_path):
    from launch.train import parse_args, plan_run

    manifest = json.load(open(os.path.join(small_data, "manifest.json")))
    manifest["shards"] = [s for s in manifest["shards"] if s["split"] == "train"]
    manifest["tokens"]["val"] = 0
    write_manifest(small_data, manifest)
    with pytest.raises(ValueError, match="eval_every=0"):
        plan_run(parse_args(["--data", small_data, "--config", TINY, "--ds-config", ZERO3, "--out",
                             str(tmp_path / "run")]))


def test_distributed_env_mapping():
    from launch.processes import distributed_env

    slurm = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "MASTER_ADDR": "node1",
             "MASTER_PORT": "29500"}
    assert distributed_env(slurm) == (3, 1, 4) and slurm["RANK"] == "3" and slurm["WORLD_SIZE"] == "4"
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed_env({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"})
    plain = {}
    assert distributed_env(plain) == (0, 0, 1)
    assert plain["MASTER_ADDR"] == "127.0.0.1" and 0 < int(plain["MASTER_PORT"]) < 65536
    launched = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1",
                "SLURM_PROCID": "7"}
    assert distributed_env(launched) == (1, 1, 2)  # a launcher's variables win over SLURM's
    assert math.isfinite(float(plain["MASTER_PORT"]))
