"""The main job end to end on one machine, no GPU and no network needed, with a report at the end.

    python -m launch.quickstart --out runs/quickstart                       # README's first command runs this
    python -m launch.quickstart --out /tmp/qs --corpus-mb 1 --vocab-size 512 --set steps=16   # a quick check

Stages, each a real run of the project's own entry points:

    1. prepare   python -m pipeline.prepare --builtin-corpus (Beam, local runner), once per source (standard
                 library docstrings, package descriptions): filter, dedup, train the SentencePiece tokenizer on
                 the first (the second uses it), write Megatron shards + manifest.json into OUT/data/NAME
    2. train     launch.train on a weighted blend of the sources (validation loss per source), under DeepSpeed
                 ZeRO-3 bf16, NPROC processes (2 CPU ranks when there is no GPU),
                 started the way srun starts them (RANK/WORLD_SIZE/MASTER_* per process, no launcher)
    3. preempt   at --stop-at of the steps, SIGUSR1 to rank 0 only: all ranks agree, checkpoint, exit 75
    4. resume    the same command again: it resumes from the checkpoint and finishes the run
    5. export    model.export: ZeRO shards -> Hugging Face Llama directory OUT/hf (logits checked vs transformers)
    6. sample    model.generate with the KV cache, plus transformers' greedy decode of the export for comparison

OUT is the training run directory (config.json, metrics.jsonl, checkpoints/, tokenizer.model), so
`python -m model.generate --checkpoint OUT --prompt ...` works on it afterwards. OUT/report.md summarizes the
data (kept, rejected by reason, tokens), the loss curve (OUT/loss.png), throughput, the checks and the samples;
OUT/logs/ holds every stage's output. Exit status 0 when every check passed, 1 when one failed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import torch

from launch import checkpoint
from launch.config import load_config
from launch.metrics import read_metrics
from launch.processes import EXIT_PREEMPTED, free_port
from pipeline import layout
from pipeline.files import TEMP_MARKER, list_tree, remove_listed, write_atomic
from pipeline.manifest import load_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What an earlier quickstart left in OUT; --overwrite removes exactly these (is_own_file says what inside).
OUTPUT_DIRS = ("data", "hf", "hf.partial", "logs", "checkpoints", "monitor")  # monitor/: DeepSpeed's monitors
# Written first: --overwrite acts only on a directory that holds it, since a launch.train run directory has the
# same names (checkpoints/, config.json, metrics.jsonl) and must never be taken for a quickstart's.
MARKER = "quickstart.json"
OUTPUTS = OUTPUT_DIRS + (MARKER, "metrics.jsonl", "config.json", "ds_config.json", "tokenizer.model", "report.md",
                         "report.json", "loss.png")
HF_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja", "EXPORT_FAILED.txt")
LOG_RE = re.compile(r"prepare(-[a-z0-9]+)?\.log|train-[a-z0-9]+-rank\d+\.log")
LOSS_DROP = 0.10  # the check that training learned: the final loss is at least this fraction below the initial
PROMPTS = ["The function returns", "This module provides", "If the file does not exist,"]
# Two sources of the built-in corpus, each prepared as a data set of its own and blended in training: (name,
# built-in source, blend weight, val fraction). Package descriptions are few and long, and the default rules drop
# most (C4 drops those with code, "{"), so a larger share of them is held out to give their validation split
# enough tokens.
SOURCES = (("stdlib", "stdlib", 0.4, 0.03), ("dist", "dist", 0.6, 0.3))
SOURCE_NAMES = tuple(name for name, *_ in SOURCES)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m launch.quickstart", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, help="run directory for everything (e.g. runs/quickstart)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier quickstart in --out")
    p.add_argument("--config", default=os.path.join(ROOT, "launch/configs/quickstart.json"), help="run config")
    p.add_argument("--ds-config", default=os.path.join(ROOT, "ds_configs/zero3_bf16.json"), help="DeepSpeed config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="run config override passed to launch.train (e.g. steps=40); repeatable")
    p.add_argument("--corpus-mb", type=float, default=6.0, help="MB of the built-in corpus to prepare")
    p.add_argument("--vocab-size", type=int, default=4000, help="SentencePiece vocabulary size")
    p.add_argument("--train-shards", type=int, default=4, help="number of train shards")
    p.add_argument("--nproc", type=int, default=None,
                   help="training processes (default: 2 CPU ranks without a GPU, else min(2, GPUs))")
    p.add_argument("--stop-at", type=float, default=0.5,
                   help="fraction of the steps after which rank 0 gets SIGUSR1 (preemption); 0 = no interruption")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per generated sample")
    p.add_argument("--timeout", type=float, default=1800, help="seconds any one stage may take")
    args = p.parse_args(argv)
    if args.corpus_mb <= 0:
        raise ValueError(f"--corpus-mb {args.corpus_mb}: use a positive number of MB, e.g. 6")
    if not 0 <= args.stop_at < 1:
        raise ValueError(f"--stop-at {args.stop_at}: use a fraction in [0, 1), e.g. 0.5 (0 = no interruption)")
    if args.nproc is not None and args.nproc < 1:
        raise ValueError(f"--nproc {args.nproc}: use at least 1 process")
    return args


def is_own_file(rel: str) -> bool:
    """Whether the file ``rel`` (relative to --out, "/" separators) is one a quickstart writes: its own files, what
    pipeline.prepare writes in data/ (pipeline.layout), what the trainer writes in checkpoints/, the export's
    files in hf/ (or hf.partial/), and its logs."""
    top, _, rest = rel.partition("/")
    if not rest:  # a file of ours, or one of ours half written when a run was killed
        return top.split(TEMP_MARKER)[0] in OUTPUTS and top not in OUTPUT_DIRS
    if top == "monitor":
        return True  # what the DeepSpeed config's monitors write under RUN_DIR/monitor
    if top == "data":  # data/NAME/...: one data directory per source (data/... itself: earlier releases)
        name, _, inner = rest.partition("/")
        return layout.is_output(inner) if name in SOURCE_NAMES and inner else layout.is_output(rest)
    if top == "checkpoints":
        return checkpoint.is_own_entry(rest.split("/")[0])
    if top in ("hf", "hf.partial"):
        return rest in HF_FILES
    return top == "logs" and LOG_RE.fullmatch(rest) is not None


def is_own_folder(rel: str) -> bool:
    """Whether the folder ``rel`` (relative to --out) is one a quickstart (or a stage it runs) creates."""
    top, _, rest = rel.partition("/")
    if not rest:
        return top in OUTPUT_DIRS
    if top == "data":
        name, _, inner = rest.partition("/")
        return (not inner or layout.is_output_dir(inner)) if name in SOURCE_NAMES else layout.is_output_dir(rest)
    return top == "monitor" or (top == "checkpoints" and checkpoint.is_own_entry(rest.split("/")[0]))


def check_out_dir(out: str, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory (training would resume the old one); --overwrite removes exactly
    the files a quickstart writes, and refuses, before removing anything, when --out holds any other file."""
    if not os.path.isdir(out):
        return
    files, folders = list_tree(out)  # links are listed as files: removed, never followed
    ours = sorted({p.split("/")[0] for p in files + folders} & set(OUTPUTS))
    if not ours:
        return
    if not overwrite:
        raise ValueError(f"--out {out} already holds a quickstart ({', '.join(ours)}); pass --overwrite to replace "
                         f"it, or pick another --out")
    if MARKER not in files:
        raise ValueError(f"--out {out} holds {', '.join(ours)} but no {MARKER}, so a quickstart did not write it "
                         "(a launch.train run directory has the same names); --overwrite only replaces a "
                         "quickstart's output: pick another --out")
    foreign = sorted(p for p in files if not is_own_file(p))
    foreign += sorted(d for d in folders if not is_own_folder(d))
    if foreign:
        raise ValueError(f"--out {out} holds {', '.join(foreign[:5])}, which a quickstart did not write; "
                         "--overwrite removes only a quickstart's own files: move them, or pick another --out")
    remove_listed(out, files, folders)


def say(msg: str) -> None:
    print(f"[quickstart] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def run_logged(argv: list[str], log_path: str, timeout: float, env: dict | None = None) -> str:
    """Run a command to completion with its output in log_path; raise with the log's tail when it fails."""
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=timeout)
    with open(log_path, errors="replace") as f:
        text = f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed with status {proc.returncode}; see {log_path}:\n"
                           + text[-3000:])
    return text


# -- 1. data --------------------------------------------------------------------------------------------------


def prepare(args, data_dir: str, log_dir: str) -> dict[str, dict]:
    """{name: manifest} of each source's data directory DATA_DIR/NAME. The first trains the tokenizer; the others
    are encoded with it (a blend needs one tokenizer)."""
    manifests = {}
    for name, builtin, _, val_fraction in SOURCES:
        out = os.path.join(data_dir, name)
        # The local runner in-process: each corpus is a few MB, so worker processes would cost more than they save.
        argv = [sys.executable, "-m", "pipeline.prepare", "--builtin-corpus", "--builtin-sources", builtin,
                "--builtin-corpus-mb", str(args.corpus_mb / len(SOURCES)), "--output", out,
                "--train-shards", str(args.train_shards), "--val-shards", "1", "--val-fraction", str(val_fraction)]
        if manifests:
            first = os.path.join(data_dir, SOURCES[0][0])
            argv += ["--tokenizer", os.path.join(first, manifests[SOURCES[0][0]]["tokenizer"]["path"])]
        else:
            argv += ["--vocab-size", str(args.vocab_size), "--tokenizer-sample-mb", str(min(args.corpus_mb, 4.0))]
        text = run_logged(argv, os.path.join(log_dir, f"prepare-{name}.log"), args.timeout)
        say(f"    {name}: " + text.strip().splitlines()[-1])
        manifests[name] = load_manifest(out, verify=True)
    return manifests


# -- 2-4. training, preemption, resume ------------------------------------------------------------------------
def training_env(nproc: int, rank: int, port: int, cuda: bool) -> dict:
    """What srun/torchrun would give each rank: its ids, the rendezvous, and a share of the cores."""
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONUNBUFFERED="1")
    if not cuda:
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def last_record(metrics_path: str) -> dict:
    """The newest step line of metrics.jsonl while rank 0 may be writing it (a torn last line is skipped)."""
    last = {"step": 0}
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "loss" in record:
                    last = record
    return last


def train(args, train_argv: list[str], nproc: int, cuda: bool, part: int, stop_step: int | None,
          total_steps: int) -> tuple[int, float]:
    """One start of every rank; with stop_step, SIGUSR1 goes to rank 0 once that step is logged.

    Returns (exit status, seconds). Each rank's output goes to OUT/logs/train-<part>-rank<r>.log; progress is
    read from metrics.jsonl.
    """
    port = free_port()
    procs, logs = [], []
    t0 = time.perf_counter()
    for rank in range(nproc):
        log = open(os.path.join(args.out, "logs", f"train-{part}-rank{rank}.log"), "w")
        logs.append(log)
        procs.append(subprocess.Popen(train_argv, cwd=ROOT, env=training_env(nproc, rank, port, cuda),
                                      stdout=log, stderr=subprocess.STDOUT))
    metrics = os.path.join(args.out, "metrics.jsonl")
    signalled, shown = False, 0
    tty, progress_every = sys.stdout.isatty(), max(1, total_steps // 10)
    try:
        while any(p.poll() is None for p in procs):
            if time.perf_counter() - t0 > args.timeout:
                raise TimeoutError(f"training took over {args.timeout:.0f} s; see {args.out}/logs")
            record = last_record(metrics)
            step = record["step"]
            if step != shown and (tty or step % progress_every == 0):
                shown = step
                line = f"[quickstart] step {step}/{total_steps} | loss {record['loss']:.3f} | " \
                       f"{record['tokens_per_s'] or 0:,.0f} tok/s"
                print(("\r" if tty else "") + line, end="" if tty else "\n", flush=True)
            if stop_step is not None and not signalled and step >= stop_step:
                # Only rank 0 is told, as when one node is preempted: the others learn it at the next step's
                # all-reduce, and all of them save the same checkpoint.
                procs[0].send_signal(signal.SIGUSR1)
                signalled = True
                if tty:
                    print(flush=True)
                say(f"step {step} reached: SIGUSR1 to rank 0 (pid {procs[0].pid}), as on a preemption")
            if any(p.poll() not in (None, 0, EXIT_PREEMPTED) for p in procs):
                break  # a rank crashed: stop the others below instead of waiting for their timeout
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    if tty:
        print(flush=True)
    codes = [p.returncode for p in procs]
    if len(set(codes)) != 1 or codes[0] not in (0, EXIT_PREEMPTED):
        bad = next((r for r, c in enumerate(codes) if c not in (0, EXIT_PREEMPTED)), 0)
        with open(logs[bad].name, errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"training part {part} ended with statuses {codes} (rank order); rank {bad}'s log "
                           f"{logs[bad].name}:\n{tail}")
    return codes[0], time.perf_counter() - t0


def checkpoint_tag(out: str) -> str | None:
    latest = os.path.join(out, "checkpoints", "latest")
    return open(latest).read().strip() if os.path.exists(latest) else None


# -- 5-6. export and samples ----------------------------------------------------------------------------------
def export_and_sample(args, hf_dir: str) -> dict:
    from model.export import build_model, export, load_checkpoint
    from model.generate import generate

    t0 = time.perf_counter()
    exported = export(args.out, hf_dir)
    export_s = time.perf_counter() - t0
    say(f"exported to {hf_dir}: logits max abs diff vs transformers {exported['max_abs_diff']:.1e}")

    import sentencepiece as spm
    from transformers import AutoModelForCausalLM

    cfg, state, tokenizer = load_checkpoint(args.out)
    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    model = build_model(cfg, state)
    eos = sp.eos_id()
    # Training documents are EOS-separated with no BOS, so a prompt starts after an EOS like a new document.
    prompts = [[eos] + sp.encode(text) for text in PROMPTS]
    sampled = generate(model, prompts, args.max_new_tokens, temperature=0.8, top_k=50, top_p=0.95, eos_id=eos,
                       seed=0)
    greedy = generate(model, prompts[:1], args.max_new_tokens, temperature=0.0, eos_id=eos)[0]
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ids = torch.tensor([prompts[0]])
        hf_out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_length=ids.shape[1] + len(greedy),
                                   do_sample=False, eos_token_id=eos, pad_token_id=eos)
    hf_greedy = hf_out[0, ids.shape[1]:].tolist()

    def text(prompt_ids, new_ids):
        return sp.decode([t for t in prompt_ids[1:] + new_ids if t != eos])

    return {"export_s": export_s, "max_abs_diff": exported["max_abs_diff"],
            "samples": [text(p, s) for p, s in zip(prompts, sampled)],
            "greedy": text(prompts[0], greedy), "greedy_matches_transformers": hf_greedy == greedy}


# -- report ---------------------------------------------------------------------------------------------------
def plot_loss(steps: list[dict], evals: list[dict], resumed_at: int | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1.2, label="train loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation loss (weighted)")
        for name in SOURCE_NAMES:
            points = [(e["step"], e["val_loss_by_source"][name]) for e in evals if name in e.get("val_loss_by_source", {})]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], ".--", lw=1, label=f"validation loss: {name}")
    if resumed_at:
        ax.axvline(resumed_at, color="gray", ls="--", lw=1, label=f"preempted + resumed after step {resumed_at}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("quickstart: DeepSpeed ZeRO-3 bf16")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def window(values: list[float]) -> float:
    """Mean of the first quarter of values, at most 10 (smooths the step-to-step noise of a small batch)."""
    n = max(1, min(10, len(values) // 4))
    return sum(values[:n]) / n


def write_report(out: str, r: dict) -> str:
    manifests = r["manifests"]
    first = next(iter(manifests.values()))
    weights = {name: weight for name, _, weight, _ in SOURCES}
    rejected: dict[str, int] = {}
    edits: dict[str, int] = {}
    languages: dict[str, list[int]] = {}
    for m in manifests.values():
        for reason, n in m["documents"]["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + n
        for edit, n in m.get("edits", {}).items():
            edits[edit] = edits.get(edit, 0) + n
        for lang, c in m.get("languages", {}).items():
            total = languages.setdefault(lang, [0, 0])
            total[0], total[1] = total[0] + c["documents"], total[1] + c["tokens"]
    data_lines = []
    for name, m in manifests.items():
        docs = m["documents"]
        data_lines += [
            f"- `data/{name}` (weight {weights[name]:g}): documents read {docs['read']:,}, kept {docs['kept']:,}, "
            f"rejected {docs['read'] - docs['kept']:,}; tokens train {m['tokens']['train']:,}, val "
            f"{m['tokens']['val']:,}; {len(m['shards'])} shards, checksums verified"]
    lines = [
        "# Quickstart report", "",
        f"{r['device']}; {r['nproc']} training processes; total {r['total_s']:.0f} s.", "",
        "## Data (`python -m pipeline.prepare --builtin-corpus`, one data set per source)", "",
        *data_lines,
        f"- tokenizer: vocabulary {first['tokenizer']['vocab_size']:,} (SentencePiece BPE), trained on "
        f"`data/{SOURCES[0][0]}` and given to the others with `--tokenizer`", "",
        "Every reason and edit of the run, zeros included (docs/filters.md says what each one is):", "",
        "| rejection reason | documents |", "|---|---:|",
        *[f"| {reason} | {n:,} |" for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1])], "",
        "| edit of kept text | count |", "|---|---:|",
        *[f"| {edit} | {n:,} |" for edit, n in sorted(edits.items(), key=lambda kv: -kv[1])], "",
        "| language (kept) | documents | tokens |", "|---|---:|---:|",
        *[f"| {lang} | {d:,} | {t:,} |" for lang, (d, t) in sorted(languages.items(), key=lambda kv: -kv[1][1])], "",
        "## Training (`launch.train`, DeepSpeed ZeRO-3 bf16)", "",
        f"- model: {r['params'] / 1e6:.2f}M parameters; {r['steps']} steps x {r['tokens_per_step']:,} tokens",
        f"- train loss: {r['loss_first']:.3f} (mean of the first steps) -> {r['loss_last']:.3f} (of the last); "
        f"ln(vocab) = {math.log(first['tokenizer']['vocab_size']):.3f}",
        "- data: a weighted blend (`--data WEIGHT:DIR` per source); tokens seen per source: "
        + ", ".join(f"{name} {n:,}" for name, n in r["tokens_by_source"].items()),
        f"- validation loss (weighted mean over the sources): {r['val_losses']}",
        *[f"- validation loss of `{name}`: {values}" for name, values in r["val_by_source"].items()],
        f"- throughput: {r['tokens_per_s']:,.0f} tokens/s (median over steps, all ranks together); "
        f"training wall time {r['train_s']:.0f} s",
        f"- preemption: SIGUSR1 to rank 0 after step {r['signal_step']}; every rank saved `{r['stopped_tag']}` and "
        f"exited 75; the second start resumed from it and finished at `{r['final_tag']}`" if r["signal_step"] else
        f"- no interruption (--stop-at 0); final checkpoint `{r['final_tag']}`",
        "", "![loss curve](loss.png)", "",
        "## Export (`model.export`) and samples (`model.generate`, KV cache)", "",
        f"- Hugging Face Llama directory `hf/`: logits max abs diff vs transformers {r['max_abs_diff']:.1e} "
        f"(limit 1e-4); export took {r['export_s']:.0f} s",
        f"- greedy, ours: {r['greedy']!r}",
        f"- greedy decode identical to transformers' `generate` on the export: {r['greedy_matches_transformers']}",
        "", "Sampled (temperature 0.8, top-k 50, top-p 0.95, seed 0):", "",
        *[f"{i + 1}. {json.dumps(s, ensure_ascii=False)}" for i, s in enumerate(r["samples"])], "",
        "## Checks", "",
        *[f"- [{'x' if ok else ' '}] {name}" for name, ok in r["checks"].items()], "",
        "## Stage times (s)", "",
        *[f"- {name}: {seconds:.0f}" for name, seconds in r["stage_s"].items()], "",
    ]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = os.path.abspath(args.out)
    check_out_dir(args.out, args.overwrite)
    cfg = load_config(args.config, args.set)     # config mistakes surface now, not after data preparation
    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    nproc = args.nproc or (min(2, torch.cuda.device_count()) if cuda else 2)
    cfg.accumulation(nproc, args.config)          # a batch that does not divide by nproc fails here too
    os.makedirs(args.out, exist_ok=True)
    # Before anything else is written (check_out_dir).
    write_atomic(os.path.join(args.out, MARKER), json.dumps({"argv": sys.argv, "started": time.time()}))
    data_dir, hf_dir = os.path.join(args.out, "data"), os.path.join(args.out, "hf")
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    device = f"{nproc} x {torch.cuda.get_device_name(0)}" if cuda else f"CPU ({os.cpu_count()} cores)"
    start, stage_s = time.perf_counter(), {}

    say(f"1/5 prepare: built-in corpus (up to {args.corpus_mb:g} MB of text) -> {data_dir}")
    t0 = time.perf_counter()
    manifests = prepare(args, data_dir, os.path.join(args.out, "logs"))
    stage_s["prepare"] = time.perf_counter() - t0

    blend = [f"--data={weight}:{os.path.join(data_dir, name)}" for name, _, weight, _ in SOURCES]
    train_argv = [sys.executable, "-m", "launch.train", *blend, "--config", args.config,
                  "--ds-config", args.ds_config, "--out", args.out, *[f"--set={kv}" for kv in args.set]]
    stop_step = max(1, int(cfg.steps * args.stop_at)) if args.stop_at else None
    say(f"2/5 train: {nproc} processes on {device}, {cfg.steps} steps"
        + (f"; interrupting after step {stop_step}" if stop_step else ""))
    say("    " + " ".join(train_argv))
    status, first_s = train(args, train_argv, nproc, cuda, 1, stop_step, cfg.steps)
    stopped_tag = checkpoint_tag(args.out)
    resumed_at = last_record(os.path.join(args.out, "metrics.jsonl"))["step"] if status == EXIT_PREEMPTED else None
    second_s = 0.0
    if status == EXIT_PREEMPTED:
        say(f"3/5 preempted: exit {status}, checkpoint {stopped_tag}; 4/5 resuming with the same command")
        status, second_s = train(args, train_argv, nproc, cuda, 2, None, cfg.steps)
    stage_s["train (2 starts)"] = first_s + second_s
    final_tag = checkpoint_tag(args.out)

    say("5/5 export to Hugging Face format and sample")
    t0 = time.perf_counter()
    sample = export_and_sample(args, hf_dir)
    stage_s["export + samples"] = time.perf_counter() - t0

    steps, evals = read_metrics(os.path.join(args.out, "metrics.jsonl"))
    plot_loss(steps, evals, resumed_at, os.path.join(args.out, "loss.png"))
    losses = [s["loss"] for s in steps]
    # The first step of each start includes warm-up (allocation, DeepSpeed's first partitioning): leave it out.
    rates = [s["tokens_per_s"] for s in steps if s["tokens_per_s"] and s["step"] not in (1, (resumed_at or 0) + 1)]
    tokens_per_step = steps[0]["tokens"] if steps else 0
    with open(os.path.join(args.out, "checkpoints", str(final_tag), "model_config.json")) as f:
        model_cfg = json.load(f)
    from model.decoder import DecoderConfig, count_params

    checks = {
        f"every step 1..{cfg.steps} logged exactly once across all starts":
            [s["step"] for s in steps] == list(range(1, cfg.steps + 1)),
        "the run was interrupted (exit 75) and resumed from its checkpoint":
            resumed_at is not None and stopped_tag == f"step_{resumed_at:08d}",
        f"final checkpoint step_{cfg.steps:08d} complete":
            final_tag == f"step_{cfg.steps:08d}"
            and os.path.exists(os.path.join(args.out, "checkpoints", final_tag, "COMPLETE")),
        f"loss fell by more than {LOSS_DROP:.0%} (first vs last steps)":
            len(losses) >= 4 and window(losses[::-1]) < (1 - LOSS_DROP) * window(losses),
        "export logits match transformers (<= 1e-4)": sample["max_abs_diff"] <= 1e-4,
        "greedy decode matches transformers on the export": sample["greedy_matches_transformers"],
        "validation loss logged for every source of the blend":
            bool(evals) and all(sorted(e.get("val_loss_by_source", {})) == sorted(SOURCE_NAMES) for e in evals),
    }
    if not args.stop_at:
        checks.pop("the run was interrupted (exit 75) and resumed from its checkpoint")
    report = dict(
        manifests=manifests, device=device, nproc=nproc, steps=cfg.steps, tokens_per_step=tokens_per_step,
        params=count_params(DecoderConfig.from_dict(model_cfg)), loss_first=window(losses),
        loss_last=window(losses[::-1]), val_losses=", ".join(f"{e['val_loss']:.3f} @ {e['step']}" for e in evals),
        val_by_source={name: ", ".join(f"{e['val_loss_by_source'][name]:.3f} @ {e['step']}" for e in evals
                                       if name in e.get("val_loss_by_source", {})) for name in SOURCE_NAMES},
        tokens_by_source=steps[-1].get("tokens_by_source", {}) if steps else {},
        tokens_per_s=statistics.median(rates) if rates else float("nan"), train_s=stage_s["train (2 starts)"],
        signal_step=stop_step, stopped_tag=stopped_tag, final_tag=final_tag, checks=checks, stage_s=stage_s,
        total_s=time.perf_counter() - start, **sample)
    path = write_report(args.out, report)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({k: v for k, v in report.items() if k != "manifests"}, f, indent=1)
    failed = [name for name, ok in checks.items() if not ok]
    say(f"report: {path} ({report['total_s']:.0f} s); " + (f"FAILED: {failed}" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
