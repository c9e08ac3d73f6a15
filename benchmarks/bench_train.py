"""Training throughput of our Decoder vs transformers' LlamaForCausalLM of the same shape, and ZeRO-3 memory per rank.

    DS_ACCELERATOR=cpu python benchmarks/bench_train.py [--d-model 384 --layers 4 --steps 10]

Both models are trained by the SAME resolved DeepSpeed config (ds_configs/zero3_bf16.json plus the batch
arithmetic of launch/configs/tiny.json via launch.config.deepspeed_config), the same AdamW parameter groups
(launch.train.param_groups / build_optimizer), the same per-step LR setting and the same micro-batches, in ONE
2-process job (2 CPU ranks, gloo, one thread each). Steps alternate in ABBA order (ours, HF, HF, ours, ...) so
load from other work on the machine hits both alike; the ratio of the two tokens/s is the result (>= 1.0x means
ours is at least as fast). Each optimizer step is timed on the slowest rank (an all-reduce MAX of the step time);
the CPU seconds both ranks spent on the step (process time, all-reduce SUM) are reported too, since on a shared
machine they vary far less with other people's load than wall time does.

Memory: each rank measures how much its resident memory (RSS) grows from just before our model is built to
just after two training steps of it (parameters, fp32 master copy, gradients, Adam moments, activations and
communication buffers: whatever the process really holds), before the HF model exists; the same is measured in
a second, 1-process job. The 2-process / 1-process ratio of that growth per rank is the result (ZeRO-3's ideal
is 0.5 for the partitioned state; activations and buffers do not shrink with ranks). For reference the table
also shows the bytes of the partitioned tensors the ZeRO-3 optimizer reports, whose ratio is 1/N by
construction. The parent prints a markdown table and the load average.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from launch.processes import free_port  # noqa: E402

TINY = os.path.join(ROOT, "launch", "configs", "tiny.json")
ZERO3 = os.path.join(ROOT, "ds_configs", "zero3_bf16.json")
VOCAB = 8000


def _tensor_bytes(t) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def zero3_bytes(engine) -> dict:
    """Bytes THIS rank holds for the model, read from the ZeRO-3 optimizer's own (partitioned) tensors."""
    import torch

    opt = engine.optimizer
    params = sum(_tensor_bytes(t) for t in opt.fp16_partitioned_groups_flat)
    # Parameters under stage3_param_persistence_threshold stay whole on every rank (besides their partition).
    persistent = sum(_tensor_bytes(p.data) for p in engine.module.parameters() if getattr(p, "ds_persist", False))
    master = sum(_tensor_bytes(t) for t in opt.fp32_partitioned_groups_flat)
    grads = _tensor_bytes(opt.grad_partitions_flat_buffer)
    states = sum(_tensor_bytes(v) for state in opt.optimizer.state.values() for v in state.values()
                 if torch.is_tensor(v) and v.dim() > 0)  # skips Adam's scalar step counters
    return {"params": params + persistent, "master": master, "grads": grads, "optimizer": states,
            "total": params + persistent + master + grads + states}


def worker(args) -> None:
    import deepspeed
    import torch
    import torch.nn.functional as F

    from launch.config import deepspeed_config, load_config
    from launch.train import build_model, build_optimizer, param_groups
    from model.decoder import count_params
    from model.export import hf_config

    import psutil

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    cfg = load_config(TINY, [f"model.d_model={args.d_model}", f"model.n_layers={args.layers}",
                             f"model.n_heads={args.d_model // 64}", "model.n_kv_heads=null",
                             f"seq_len={args.seq_len}", f"global_batch={args.global_batch}",
                             f"micro_batch={args.global_batch // world}"])
    mcfg = cfg.decoder_config(VOCAB)
    ds = deepspeed_config(cfg, ZERO3, world)

    gen = torch.Generator().manual_seed(1000 + rank)
    accumulation = ds["gradient_accumulation_steps"]
    batches = [torch.randint(3, VOCAB, (cfg.micro_batch, cfg.seq_len + 1), generator=gen)
               for _ in range(accumulation)]

    def loss_of(name, engine, s):
        inputs, targets = s[:, :-1], s[:, 1:]
        if name == "ours":
            return engine(inputs, targets)
        logits = engine(input_ids=inputs).logits  # (B, T, V); the same fp32 cross-entropy as ours
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))

    def one_step(name) -> tuple[float, float]:
        engine = engines[name]
        torch.distributed.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        for group in engine.optimizer.param_groups:
            group["lr"] = cfg.lr_at(0)
        for s in batches:
            engine.backward(loss_of(name, engine, s))
            engine.step()
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        cpu = torch.tensor([time.process_time() - c0], dtype=torch.float64)
        torch.distributed.all_reduce(dt, op=torch.distributed.ReduceOp.MAX)  # the slowest rank sets the pace
        torch.distributed.all_reduce(cpu)  # CPU seconds of all ranks: insensitive to other work on the machine
        return float(dt.item()), float(cpu.item())

    rss_before = psutil.Process().memory_info().rss
    ours = build_model(mcfg, ds, cfg.seed)
    engines = {"ours": deepspeed.initialize(model=ours, optimizer=build_optimizer(
        param_groups(ours, cfg.weight_decay), cfg, ds), config=ds)[0]}
    for _ in range(2):  # optimizer state exists only after the first step
        one_step("ours")
    rss_growth = psutil.Process().memory_info().rss - rss_before
    if args.mode == "compare":
        from transformers import LlamaForCausalLM

        hf_cfg = hf_config(mcfg, eos_id=2, bos_id=1, dtype=torch.bfloat16)
        hf_cfg._attn_implementation = "sdpa"  # the same attention kernel as ours
        torch.manual_seed(cfg.seed)
        # Built under zero.Init exactly like ours (transformers' own ZeRO-3 path needs accelerate). Weight values
        # do not matter for speed; the shapes do, and are checked below.
        with deepspeed.zero.Init(config_dict_or_path=ds):
            hf = LlamaForCausalLM(hf_cfg)
        assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
        assert sum(getattr(p, "ds_numel", p.numel()) for p in hf.parameters()) == count_params(mcfg), \
            "the HF model must have exactly our parameter count"
        engines["hf"] = deepspeed.initialize(model=hf, optimizer=build_optimizer(
            param_groups(hf, cfg.weight_decay), cfg, ds), config=ds)[0]

    names = list(engines)
    for name in names:  # warm-up: first-step allocations, optimizer state creation, prefetch tracing
        for _ in range(2):
            one_step(name)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    for rep in range(args.steps):
        for name in (names if rep % 2 == 0 else names[::-1]):  # ABBA
            wall, cpu = one_step(name)
            times[name].append(wall)
            cpu_times[name].append(cpu)
    result = {"world_size": world, "params": count_params(mcfg), "model": mcfg.to_dict(),
              "tokens_per_step": cfg.global_batch * cfg.seq_len, "step_s": times, "cpu_s": cpu_times,
              "bytes": zero3_bytes(engines["ours"])}
    # Each rank's own measurement; the slowest-growing and fastest-growing rank are both reported.
    growth = torch.tensor([rss_growth], dtype=torch.float64)
    gathered = [torch.zeros_like(growth) for _ in range(world)]
    torch.distributed.all_gather(gathered, growth)
    result["rss_growth"] = [int(g.item()) for g in gathered]
    if "hf" in engines:
        result["hf_bytes"] = zero3_bytes(engines["hf"])
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    for engine in engines.values():
        engine.destroy()
    torch.distributed.destroy_process_group()


def _run(args, mode: str, world: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    port = str(free_port())
    argv = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--d-model", str(args.d_model),
            "--layers", str(args.layers), "--steps", str(args.steps), "--seq-len", str(args.seq_len),
            "--global-batch", str(args.global_batch)]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(world)]
    outputs = [p.communicate()[0] for p in procs]
    for p, out in zip(procs, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"{mode} worker failed ({p.returncode}):\n{out[-4000:]}")
    line = next(x for x in outputs[0].splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per model (after 2 warm-up)")
    p.add_argument("--worker", choices=["compare", "memory"], dest="mode", default=None)
    args = p.parse_args(argv)
    if args.mode:
        worker(args)
        return 0

    load_before = os.getloadavg()
    t0 = time.time()
    two = _run(args, "compare", 2)
    one = _run(args, "memory", 1)
    load_after = os.getloadavg()

    tok = two["tokens_per_step"]
    rate = {name: tok / statistics.median(ts) for name, ts in two["step_s"].items()}
    m = two["model"]
    print(f"model: d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, vocab {m['vocab_size']}, "
          f"{two['params'] / 1e6:.2f}M params; global batch {args.global_batch} x {args.seq_len} tokens; "
          f"ZeRO-3 bf16, 2 CPU ranks x 1 thread; {args.steps} timed steps each (ABBA), medians\n")
    cpu_rate = {name: tok / statistics.median(ts) for name, ts in two["cpu_s"].items()}
    print("| model | step s (median) | tokens/s | CPU s/step, both ranks (median) | tokens per CPU s | all step s |")
    print("|---|---|---|---|---|---|")
    for name, label in (("ours", "our Decoder"), ("hf", "transformers LlamaForCausalLM")):
        ts = two["step_s"][name]
        print(f"| {label} | {statistics.median(ts):.3f} | {rate[name]:.0f} | "
              f"{statistics.median(two['cpu_s'][name]):.3f} | {cpu_rate[name]:.0f} | "
              f"{', '.join(f'{t:.2f}' for t in ts)} |")
    # Each rep times the two models back to back, so the per-rep ratio cancels slow drifts in machine load.
    pairs = [h / o for o, h in zip(two["step_s"]["ours"], two["step_s"]["hf"])]
    print(f"\nthroughput ratio ours / HF: {rate['ours'] / rate['hf']:.2f}x (ratio of medians); "
          f"median of per-rep ratios {statistics.median(pairs):.2f}x "
          f"(min {min(pairs):.2f}, max {max(pairs):.2f}, {len(pairs)} reps); "
          f"per CPU second: {cpu_rate['ours'] / cpu_rate['hf']:.2f}x\n")
    print("| memory per rank, our Decoder (bytes) | 1 process | 2 processes (each rank) | ratio (largest rank) |")
    print("|---|---|---|---|")
    a, b = one["rss_growth"][0], two["rss_growth"]
    print(f"| RSS growth over build + 2 steps (measured) | {a:,} | {', '.join(f'{x:,}' for x in b)} | "
          f"{max(b) / a:.3f} |")
    for key in ("params", "master", "grads", "optimizer", "total"):
        a, b = one["bytes"][key], two["bytes"][key]
        print(f"| ZeRO-3 partitioned {key} (as reported, 1/N by design) | {a:,} | {b:,} | {b / a:.3f} |")
    print(f"\nHF model at 2 processes, total bytes per rank: {two['hf_bytes']['total']:,}")
    print(f"load average (1/5/15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
          f"after: {', '.join(f'{x:.2f}' for x in load_after)}; wall {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
