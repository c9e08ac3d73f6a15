"""Checkpoint save/load seconds per 100M parameters (ZeRO-3 bf16, 2 CPU ranks), and resume time at step 10 vs
step 10,000 of the data stream (it must not grow with the step).

    DS_ACCELERATOR=cpu python benchmarks/bench_checkpoint.py [--d-model 640 --layers 10 --reps 6 --out DIR]

The script writes random-token shards, then starts 2 ranks of itself (RANK/WORLD_SIZE/MASTER_* set the way srun
would) for each phase:
  save:   the ranks build the Decoder under deepspeed.zero.Init, take one optimizer step, then repeat
          launch.checkpoint.save of the whole state (fp32 master weights + Adam moments, DeepSpeed's files, RNG,
          marker, fsyncs) into a run dir at step 10 and one at step 10,000, interleaved ABBA; they also time the
          data seek alone (launch.data.RankLoader at step 10, 10,000 and 10,000,000).
  resume: one fresh pair of processes per repetition and step (as a real restart is; DeepSpeed engines do not
          give all their memory back when destroyed, so many in one process would grow without bound): build
          the engine (untimed, as for a fresh run), then time find_resume_point + prepare_resume + load + seeking
          the data stream to the stored consumed_samples + producing the first batch. Steps alternate ABBA.
Times are the slowest rank's (barriers around each phase). The parent prints a table (medians, and minimums,
which shared-machine noise affects least) and the load average.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from launch.processes import free_port  # noqa: E402

VOCAB = 32000
SEQ_LEN = 256
GLOBAL_BATCH = 4
STEPS = (10, 10_000)


def make_data(data_dir: str, tokens: int = 2_000_000, shards: int = 4, seed: int = 0) -> None:
    """Random documents in Megatron shards + a manifest that launch.data.open_split accepts."""
    from pipeline.manifest import write_manifest
    from pipeline.shards import write_shard

    rng = np.random.default_rng(seed)
    entries = []
    for i in range(shards):
        lengths = rng.integers(50, 2000, size=tokens // shards // 1000)
        docs = [np.append(rng.integers(3, VOCAB, size=n), 2) for n in lengths]
        rel = f"train/shard-{i:05d}-of-{shards:05d}"
        stats = write_shard(os.path.join(data_dir, rel), docs, VOCAB)
        entries.append({"split": "train", "path": rel, "documents": stats["documents"], "tokens": stats["tokens"],
                        "sha256_bin": stats["sha256_bin"], "sha256_idx": stats["sha256_idx"]})
    n_docs = sum(e["documents"] for e in entries)
    write_manifest(data_dir, {
        "documents": {"read": n_docs, "kept": n_docs, "rejected": {}},
        "tokens": {"train": sum(e["tokens"] for e in entries), "val": 0},
        "tokenizer": {"path": "tokenizer.model", "vocab_size": VOCAB, "eos_id": 2, "sha256": "none"},
        "shards": entries, "config": {"benchmark": "bench_checkpoint"}})


def _barrier_time(t0: float) -> float:
    """Seconds since t0 of the slowest rank."""
    import torch

    dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    torch.distributed.all_reduce(dt, op=torch.distributed.ReduceOp.MAX)
    return float(dt.item())


def _rss_mb() -> float:
    """Resident memory of this process now (MiB)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _build(args, ds):
    import deepspeed
    import torch

    from model.decoder import Decoder, DecoderConfig

    mcfg = DecoderConfig(vocab_size=VOCAB, d_model=args.d_model, n_layers=args.layers, n_heads=args.d_model // 64,
                         max_seq_len=SEQ_LEN)
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        model = Decoder(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return deepspeed.initialize(model=model, optimizer=opt, config=ds)[0], mcfg


def worker(args) -> None:
    import deepspeed
    import torch

    from launch import checkpoint as ck
    from launch.data import RankLoader, open_split
    from model.decoder import count_params

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    micro = GLOBAL_BATCH // world
    ds = {"train_batch_size": GLOBAL_BATCH, "train_micro_batch_size_per_gpu": micro,
          "gradient_accumulation_steps": 1, "bf16": {"enabled": True}, "zero_optimization": {"stage": 3},
          "steps_per_print": 10**9, "zero_allow_untested_optimizer": True}
    stream = open_split(args.data, "train", SEQ_LEN, seed=1, model_vocab_size=VOCAB)
    run_dirs = {s: os.path.join(args.out, f"run_step{s}") for s in STEPS}
    engine, mcfg = _build(args, ds)
    res = {"params": count_params(mcfg), "world_size": world}

    if args.phase == "save":
        (_, batches), = [next(iter(RankLoader(stream, GLOBAL_BATCH, micro, rank, world, 0)))]
        for x, y in batches:  # one real step so the Adam moments exist and are saved
            engine.backward(engine(x, y))
        engine.step()
        res.update(save_s={s: [] for s in STEPS}, seek_s={s: [] for s in (*STEPS, 10_000_000)})
        client = {"model_config": mcfg.to_dict()}
        for rep in range(args.reps):
            for step in STEPS[::1 if rep % 2 == 0 else -1]:  # ABBA order: drift and cache warmth cancel out
                if rank == 0:
                    shutil.rmtree(run_dirs[step], ignore_errors=True)
                torch.distributed.barrier()
                t0 = time.perf_counter()
                ck.save(engine, run_dirs[step], step, dict(client, consumed_samples=step * GLOBAL_BATCH),
                        keep_last=1)
                res["save_s"][step].append(_barrier_time(t0))
        if rank == 0:
            tag_dir = os.path.join(run_dirs[STEPS[0]], "checkpoints", ck.tag_for_step(STEPS[0]))
            res["bytes"] = sum(json.load(open(os.path.join(tag_dir, ck.MARKER)))["files"].values())
        next(iter(RankLoader(stream, GLOBAL_BATCH, micro, rank, world, 1)))  # warm: page cache, first permutation
        for rep in range(args.reps):
            for step in res["seek_s"]:
                t0 = time.perf_counter()
                next(iter(RankLoader(stream, GLOBAL_BATCH, micro, rank, world, step)))
                res["seek_s"][step].append(_barrier_time(t0))
    else:
        torch.distributed.barrier()
        t0 = time.perf_counter()
        point = ck.find_resume_point(run_dirs[args.step])
        assert ck.prepare_resume(point, world, rank) == {}, "same world size: no conversion expected"
        state = ck.load(engine, point)
        t1 = time.perf_counter()
        start = state["consumed_samples"] // GLOBAL_BATCH
        got_step, _ = next(iter(RankLoader(stream, GLOBAL_BATCH, micro, rank, world, start)))
        t2 = time.perf_counter()
        res["load_s"] = _barrier_time(t0)
        res["parts_s"] = {"checkpoint": t1 - t0, "data": t2 - t1}  # this rank's split of the resume
        assert got_step == args.step, (got_step, args.step)
    res["rss_mb"] = _rss_mb()
    if rank == 0:
        print("RESULT " + json.dumps(res), flush=True)
    # Release ZeRO-3's hooks and buffers and let every rank get here before the process group goes away: a rank
    # that exits while the other still holds a live engine can abort in C++ teardown.
    engine.destroy()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _launch(world: int, worker_args: list[str], log_dir: str) -> dict:
    """Run `world` ranks of this script's worker; returns rank 0's RESULT dict."""
    port = free_port()
    procs, logs = [], []
    for rank in range(world):
        env = dict(os.environ, DS_ACCELERATOR="cpu", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONPATH=ROOT)
        logs.append(os.path.join(log_dir, f"rank{rank}.log"))
        with open(logs[-1], "w") as log:
            procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", *worker_args],
                                          env=env, stdout=subprocess.PIPE if rank == 0 else log, stderr=log,
                                          text=True))
    out, _ = procs[0].communicate()
    for proc in procs[1:]:
        proc.wait()
    if any(proc.returncode for proc in procs):
        tails = "".join(f"--- {path}\n" + open(path).read()[-3000:] for path in logs)
        raise SystemExit(f"ranks exited {[proc.returncode for proc in procs]} in {worker_args}\n{tails}")
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=640)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--out", default=None, help="scratch directory (default: a temporary one, removed at the end)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=["save", "resume"], default="save", help=argparse.SUPPRESS)
    p.add_argument("--step", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    scratch = args.out or tempfile.mkdtemp(prefix="bench_checkpoint-")
    data = os.path.join(scratch, "data")
    make_data(data)
    common = ["--data", data, "--out", scratch, "--d-model", str(args.d_model), "--layers", str(args.layers),
              "--reps", str(args.reps)]
    res = _launch(args.world, common + ["--phase", "save"], scratch)
    res["load_s"] = {s: [] for s in STEPS}
    res["parts_s"] = {s: [] for s in STEPS}
    resume_rss = []
    for rep in range(args.reps):
        for step in STEPS[::1 if rep % 2 == 0 else -1]:
            one = _launch(args.world, common + ["--phase", "resume", "--step", str(step)], scratch)
            res["load_s"][step].append(one["load_s"])
            res["parts_s"][step].append(one["parts_s"])
            resume_rss.append(one["rss_mb"])
    if args.out is None:
        shutil.rmtree(scratch, ignore_errors=True)

    per100m = 100e6 / res["params"]
    med = {k: {int(s): statistics.median(v) for s, v in res[k].items()} for k in ("save_s", "load_s", "seek_s")}
    # Other processes only ever add time, so on a shared machine the minimum is the steadier estimate of the cost.
    low = {k: {int(s): min(v) for s, v in res[k].items()} for k in ("save_s", "load_s")}
    print(f"model: {res['params'] / 1e6:.1f}M params, ZeRO-3 bf16, {res['world_size']} CPU ranks; "
          f"checkpoint {res['bytes'] / 1e9:.2f} GB on disk ({res['bytes'] / res['params']:.1f} bytes/param); "
          f"{args.reps} reps, median (min)")
    print("| step | save s | save s / 100M params | resume s (load + data seek) | resume s / 100M params |")
    print("|---:|---:|---:|---:|---:|")
    for s in STEPS:
        print(f"| {s:,} | {med['save_s'][s]:.2f} ({low['save_s'][s]:.2f}) | {med['save_s'][s] * per100m:.2f} "
              f"({low['save_s'][s] * per100m:.2f}) | {med['load_s'][s]:.2f} ({low['load_s'][s]:.2f}) | "
              f"{med['load_s'][s] * per100m:.2f} ({low['load_s'][s] * per100m:.2f}) |")
    print(f"resume time ratio step {STEPS[1]:,} / step {STEPS[0]}: median {med['load_s'][STEPS[1]] / med['load_s'][STEPS[0]]:.3f}"
          f", min {low['load_s'][STEPS[1]] / low['load_s'][STEPS[0]]:.3f}")
    for s in STEPS:
        parts = {k: statistics.median(p[k] for p in res["parts_s"][s]) for k in ("checkpoint", "data")}
        print(f"resume at step {s:,}, rank 0 medians: checkpoint find + load {parts['checkpoint']:.3f} s, "
              f"data seek + first batch in a fresh process {parts['data'] * 1e3:.1f} ms")
    print("data seek + first batch, warm (ms): " + ", ".join(f"step {s:,}: {v * 1e3:.2f}" for s, v in med["seek_s"].items())
          + f"; ratio 10,000,000 / 10: {med['seek_s'][10_000_000] / med['seek_s'][10]:.3f}")
    print(f"rank 0 resident memory (MiB): {res['rss_mb']:.0f} after all saves; after a resume "
          f"{min(resume_rss):.0f}..{max(resume_rss):.0f}")
    print(f"save throughput: {res['bytes'] / med['save_s'][STEPS[0]] / 1e6:.0f} MB/s; "
          f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
