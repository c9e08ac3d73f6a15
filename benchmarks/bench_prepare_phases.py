"""Where the wall time of one `python -m pipeline.prepare` run goes, phase by phase, on Beam's local runner.

The run is bench_prepare's (the same corpus of SIZE MB and the same tokenizer, built there and reused from
WORK; the Gopher rules, exact dedup, tokenizing and shards), with N workers. The prepare process logs, with a
timestamp, each stage that Beam's FnApiRunner starts: the runner's own DEBUG record "Running bundle for stage
..." (logger apache_beam.runners.portability.fn_api_runner.fn_runner.run_bundle), taken with a standard
`logging` handler. A phase starts with the first bundle of the stage that holds its marker transform:

    launcher start      process start -> the first bundle (Python and Beam imports, building and translating
                        the pipeline, starting the workers' control server)
    workers start       the first bundle -> the read stage (the first bundles run only once the worker processes
                        have started, each importing Beam)
    read .. dedup window   the stage reading ReadFiles/SpreadFiles' grouping: read, parse, rules, the dedup
                        window, the rejected records
    dedup decisions, tokenizing   the stage reading ExactDedup/GroupByBucket
    write, merge        the stage reading WriteShards/GroupByPart
    manifest, shutdown  WriteManifest/Once -> the process's exit (stopping the workers included)

One-element stages between the big ones (counts, file names, the rejected files' finalization) are in the
phase before them. Alongside: CPU seconds of the launcher and of each worker process.

    python benchmarks/bench_prepare_phases.py --size-mb 200 --workers 2 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_prepare import corpus_files, ensure_tokenizer, read_texts, run_measured  # noqa: E402

BUNDLE_LOGGER = "apache_beam.runners.portability.fn_api_runner.fn_runner.run_bundle"
MARK = "PHASE-BUNDLE"

# Runs in the prepare process: timestamp every stage the runner starts, then run the command as `python -m` would.
CHILD = f"""
import logging, sys, time
class Stages(logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Running bundle for stage"):
            sys.stderr.write("{MARK} %.3f %s\\n" % (time.time(), message.splitlines()[0]))
            sys.stderr.flush()
log = logging.getLogger({BUNDLE_LOGGER!r})
log.setLevel(logging.DEBUG)
log.addHandler(Stages())
log.propagate = False
from pipeline.prepare import exit_now, main
exit_now(main(sys.argv[1:]))
"""

# (phase, the transform whose stage starts it); the first phase starts with the process, "workers start" with
# the first bundle of any stage. A grouped stage is named by its grouping's "/Read" side: the stage before it
# holds the same grouping's "/Write", so the bare transform name would match the earlier stage.
PHASES = (
    ("read, parse, rules, dedup window", "ReadFiles/SpreadFiles/ReshufflePerKey/GroupByKey/Read"),
    ("dedup decisions, tokenizing", "ExactDedup/GroupByBucket/Read"),
    ("write, merge", "WriteShards/GroupByPart/Read"),
    ("manifest, shutdown", "WriteManifest-Once-Impulse"),
)


def phase_times(output: str, launched: float, ended: float) -> dict[str, float]:
    """{phase: seconds} from the timestamped stage lines of one run's output."""
    starts = []
    for line in output.splitlines():
        if line.startswith(MARK):
            _, stamp, stage = line.split(" ", 2)
            starts.append((float(stamp) - launched, stage))
    if not starts:
        raise RuntimeError("the run logged no stage: was Beam's bundle log renamed? (logger " + BUNDLE_LOGGER + ")")
    bounds = [("launcher start", 0.0), ("workers start", starts[0][0])]
    for phase, marker in PHASES:
        found = [t for t, stage in starts if marker in stage]
        if not found:
            raise RuntimeError(f"no stage holds {marker!r}: the pipeline's stage names changed; update PHASES")
        bounds.append((phase, found[0]))
    bounds.append(("end", ended - launched))
    return {name: round(bounds[i + 1][1] - start, 2) for i, (name, start) in enumerate(bounds[:-1])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", default="/tmp/bench-prepare", help="bench_prepare's work directory (corpus, tokenizer)")
    args = parser.parse_args(argv)

    files = corpus_files(args.work, args.size_mb)
    model_path = os.path.join(args.work, "tokenizer.model")
    ensure_tokenizer(model_path, (text for path in files for text in read_texts([path])))
    out = os.path.join(args.work, f"out-phases-{args.size_mb}")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-c", CHILD, "--input", os.path.join(os.path.dirname(files[0]), "*.jsonl.gz"),
           "--output", out, "--overwrite", "--tokenizer", model_path, "--train-shards", "8", "--val-shards", "1",
           "--rules", "gopher", "--no-language-id", "--no-near-dedup", "--no-progress"]
    if args.workers > 1:
        cmd += ["--direct_num_workers", str(args.workers), "--direct_running_mode", "multi_processing"]
    print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}; {args.size_mb} MB, {args.workers} "
          f"worker(s)", flush=True)
    runs = []
    for rep in range(args.repeats):
        launched = time.time()
        res = run_measured(cmd, repo, dict(os.environ, PYTHONPATH=repo))
        phases = phase_times(res["output"], launched, launched + res["seconds"])
        runs.append(phases)
        print(f"run {rep + 1}: {res['seconds']:.1f} s, CPU s launcher {res['launcher_cpu_s']} workers "
              f"{res['worker_cpu_s']} | " + " | ".join(f"{k} {v:.2f}" for k, v in phases.items()), flush=True)
    print("\n| phase | wall s (median, range) |\n|---|---|")
    for name in runs[0]:
        values = [r[name] for r in runs]
        print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) |")
    total = [sum(r.values()) for r in runs]
    print(f"| whole run | {statistics.median(total):.1f} ({min(total):.1f}-{max(total):.1f}) |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
