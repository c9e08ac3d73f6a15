"""Training throughput per model option (tokens/s, MFU, peak memory); and our Decoder vs transformers' Llama.

Per option (eager, compile, document mask, ...), the model exactly as launch.train builds it (launch.train.
build_engine: compile probe, ZeRO init, DeepSpeed engine, compiled blocks) on random packed token sequences::

    # CPU, the tiny config (a few minutes, mostly compiling):
    DS_ACCELERATOR=cpu python benchmarks/bench_train.py --options eager,compile
    # one GPU, bf16 ZeRO-3: the 125m and 1b configs with each option (one micro-batch per optimizer step)
    python benchmarks/bench_train.py --options eager,compile,document_mask,document_mask+compile \
        --config launch/configs/125m.json --steps 20
    python benchmarks/bench_train.py --options eager,compile,document_mask,document_mask+compile \
        --config launch/configs/1b.json --steps 10 --set micro_batch=8

Each option is a list of run-config overrides (OPTIONS; `+` combines them, and `--set` adds to all), so options
another change adds (`model.document_mask`) need no code here: an option the run config does not know yet is
reported as skipped with the config's own error. Every option runs in its own job of --world processes
(default 1) on the device that DeepSpeed's accelerator picks (DS_ACCELERATOR=cpu forces the CPU); --warmup
steps (default 3: compilation happens there) are not timed, then --steps optimizer steps are. Reported:
median step time (slowest rank), tokens/s (all ranks), MFU = tokens/s * model.decoder.flops_per_token /
(peak bf16 FLOP/s * devices) where launch/metrics.py knows the GPU's peak (the same FLOPs count for every option,
so document masking's skipped attention work shows as lower MFU, not as fewer FLOPs), and peak memory (GPU:
max allocated; CPU: peak RSS of the process, compilation included). The packed sequences hold documents of
geometric length (mean seq_len / 4) ended by EOS (id 2), so a document mask has boundaries to respect.

Ours vs transformers (the original mode, without --options)::

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


# Run-config overrides of each option; "a+b" combines two.
OPTIONS = {
    "eager": [],
    "compile": ["compile=true"],
    "document_mask": ["model.document_mask=true"],
}
EOS = 2


def option_sets(name: str) -> list[str]:
    sets = []
    for part in name.split("+"):
        if part not in OPTIONS:
            raise ValueError(f"--options: unknown option {part!r}; choose from {sorted(OPTIONS)} (join with +)")
        sets += OPTIONS[part]
    return sets


def packed_batch(gen, micro_batch: int, seq_len: int, vocab: int):
    """(micro_batch, seq_len + 1) random ids in [3, vocab) with EOS ending documents of geometric length
    (mean seq_len / 4), as packed training sequences look."""
    import torch

    ids = torch.randint(3, vocab, (micro_batch, seq_len + 1), generator=gen)
    ends = torch.rand(micro_batch, seq_len + 1, generator=gen) < 4.0 / seq_len
    return ids.masked_fill(ends, EOS)


def options_worker(args) -> None:
    """One option, one job: time --steps optimizer steps after --warmup, print RESULT json on rank 0."""
    import resource

    import deepspeed
    import torch
    from deepspeed.accelerator import get_accelerator

    from launch.config import deepspeed_config, load_config
    from launch.metrics import device_peak_flops, mfu
    from launch.train import build_engine
    from model.decoder import count_params, flops_per_token

    accel = get_accelerator()
    backend = "gloo" if accel.device_name() == "cpu" else accel.communication_backend_name()
    if accel.device_name() == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    sets = json.loads(args.sets)
    cfg = load_config(args.config, sets)
    cfg = load_config(args.config, [*sets, f"global_batch={cfg.micro_batch * world * args.accumulation}"])
    model_cfg = cfg.decoder_config(args.vocab)
    ds = deepspeed_config(cfg, args.ds_config, world)
    engine, compiled = build_engine(cfg, model_cfg, ds, rank)
    device = engine.device
    gen = torch.Generator().manual_seed(1000 + rank)
    batches = [packed_batch(gen, cfg.micro_batch, cfg.seq_len, model_cfg.vocab_size).to(device)
               for _ in range(args.accumulation)]

    def step() -> float:
        torch.distributed.barrier()
        accel.synchronize()
        t0 = time.perf_counter()
        for group in engine.optimizer.param_groups:
            group["lr"] = cfg.lr_at(cfg.warmup_steps)
        for b in batches:
            engine.backward(engine(b[:, :-1], b[:, 1:]))
            engine.step()
        accel.synchronize()
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(dt, op=torch.distributed.ReduceOp.MAX)  # the slowest rank sets the pace
        return float(dt.item())

    warm = [step() for _ in range(args.warmup)]
    if accel.device_name() == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(args.steps)]
    tokens = cfg.global_batch * cfg.seq_len
    rate = tokens / statistics.median(times)
    peak = device_peak_flops(device)
    if accel.device_name() == "cuda":
        mem = torch.cuda.max_memory_allocated()
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    if rank == 0:
        print("RESULT " + json.dumps({
            "world_size": world, "device": accel.device_name() if accel.device_name() == "cpu"
            else torch.cuda.get_device_name(device), "params": count_params(model_cfg), "model": model_cfg.to_dict(),
            "compiled": compiled is not None and compiled.active, "compile_requested": cfg.compile,
            "tokens_per_step": tokens, "warmup_s": warm, "step_s": times, "tokens_per_s": rate,
            "mfu": None if peak is None else mfu(rate, flops_per_token(model_cfg, cfg.seq_len), peak, world),
            "peak_memory_bytes": mem, "zero_stage": ds.get("zero_optimization", {}).get("stage", 0)}), flush=True)
    engine.destroy()
    torch.distributed.destroy_process_group()


def _run_option(args, name: str) -> dict:
    """One option's job; {"skipped": reason} when the run config rejects the option (not merged yet)."""
    from launch.config import load_config

    sets = [*option_sets(name), *args.set]
    try:
        load_config(args.config, sets)
    except ValueError as e:  # an option this checkout does not have: report it, run the others
        return {"skipped": str(e)}
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    if env.get("DS_ACCELERATOR") == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.world)))
    port = str(free_port())
    argv = [sys.executable, os.path.abspath(__file__), "--worker", "options", "--sets", json.dumps(sets),
            "--config", args.config, "--ds-config", args.ds_config, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--accumulation", str(args.accumulation), "--vocab", str(args.vocab)]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(args.world),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(args.world)]
    outputs = [p.communicate()[0] for p in procs]
    for p, out in zip(procs, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"option {name} failed ({p.returncode}):\n{out[-4000:]}")
    warnings = sorted({line.strip() for line in outputs[0].splitlines() if "CompileWarning" in line})
    line = next(x for x in outputs[0].splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]), warnings=warnings)


def options_main(args) -> int:
    names = [n.strip() for n in args.options.split(",") if n.strip()]
    for name in names:
        option_sets(name)  # unknown names fail before anything runs
    results = {name: _run_option(args, name) for name in names}
    ran = [r for r in results.values() if "skipped" not in r]
    if ran:
        first = ran[0]
        m = first["model"]
        print(f"\n{first['device']} x {first['world_size']}, ZeRO-{first['zero_stage']}, {args.ds_config}; model "
              f"d_model {m['d_model']}, {m['n_layers']} layers, {first['params'] / 1e6:.1f}M params, vocab "
              f"{m['vocab_size']}, seq_len {m['max_seq_len']}; {first['tokens_per_step']} tokens per optimizer step; "
              f"{args.warmup} warm-up + {args.steps} timed steps, medians\n")
    print("| option | compiled | step s (median) | tokens/s | MFU | peak memory GB | first step s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "skipped" in r:
            print(f"| {name} | skipped: {r['skipped']} | | | | | |")
            continue
        compiled = "yes" if r["compiled"] else ("no (fell back: see warnings)" if r["compile_requested"] else "no")
        mfu_text = "n/a (no known peak)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {name} | {compiled} | {statistics.median(r['step_s']):.4f} | {r['tokens_per_s']:,.0f} | "
              f"{mfu_text} | {r['peak_memory_bytes'] / 1e9:.2f} | {r['warmup_s'][0]:.1f} |")
        for w in r["warnings"]:
            print(f"  {name}: {w}")
    return 0


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
    p.add_argument("--worker", choices=["compare", "memory", "options"], dest="mode", default=None)
    p.add_argument("--options", default=None,
                   help=f"comma-separated options to time, e.g. eager,compile,document_mask+compile; "
                   f"known: {', '.join(OPTIONS)}")
    p.add_argument("--config", default=TINY, help="run config for --options (default launch/configs/tiny.json)")
    p.add_argument("--ds-config", default=ZERO3, help="DeepSpeed config for --options")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override (--options)")
    p.add_argument("--world", type=int, default=1, help="processes per option job (--options)")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first (--options)")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step (--options)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size for --options")
    p.add_argument("--sets", default="[]", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode == "options":
        options_worker(args)
        return 0
    if args.mode:
        worker(args)
        return 0
    if args.options:
        return options_main(args)

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
