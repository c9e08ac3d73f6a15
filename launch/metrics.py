"""Training metrics: RUN_DIR/metrics.jsonl, the one-line step log, and model FLOPs utilization (MFU).

Rank 0 appends one JSON object per optimizer step to ``RUN_DIR/metrics.jsonl`` (flushed per line, so a
crash loses at most the line being written) and prints::

    step 120/2000 | loss 3.41 | lr 3.0e-4 | gnorm 0.92 | 41k tok/s | mfu 38% | mem 12.1G | eta 12m

every ``log_every`` steps, or drives a tqdm bar with the same fields when stdout is a terminal. Other ranks
construct the logger too and every call is a no-op there. On resume, ``truncate_after(step)`` drops the lines of
steps the checkpoint does not contain (they will be trained again) and restores the cumulative token count.

MFU = achieved model FLOP/s / (peak bf16 dense FLOP/s per device * devices), with the model FLOPs per token
from ``model.decoder.flops_per_token`` (6N plus attention). Where the device's peak is unknown (CPU, an unlisted
GPU) the field is omitted rather than guessed.

Plot a run's loss::

    python -m launch.metrics RUN_DIR/metrics.jsonl
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import psutil
import torch

from launch.processes import EXIT_USAGE
from pipeline.files import atomic_open

METRICS_NAME = "metrics.jsonl"

# bf16 dense (no sparsity) peak FLOP/s per device, matched as a case-insensitive substring of the name
# torch.cuda.get_device_name() reports. Order matters: the first match wins, so variants come before
# the family name (an "NVIDIA H100 PCIe" must not match the SXM entry "H100").
PEAK_FLOPS: dict[str, float] = {
    "GH200": 989e12,
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM5 ("NVIDIA H100 80GB HBM3")
    "H800": 989e12,
    "H20": 148e12,
    "B200": 2250e12,
    "B100": 1750e12,
    "A100": 312e12,
    "A800": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "A30": 165e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "MI300X": 1307e12,
    "MI250X": 383e12,
}


def peak_flops_for_name(name: str) -> float | None:
    """bf16 dense peak FLOP/s of a device called ``name`` (first PEAK_FLOPS substring match), or None."""
    lowered = name.lower()
    for key, flops in PEAK_FLOPS.items():
        if key.lower() in lowered:
            return flops
    return None


def device_peak_flops(device: torch.device) -> float | None:
    """Peak bf16 dense FLOP/s of one device; None on CPU or for a GPU not in PEAK_FLOPS (MFU is then omitted)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float, world_size: int) -> float:
    """Fraction of the devices' peak the model's FLOPs reach: tokens_per_s is global (all ranks)."""
    return tokens_per_s * flops_per_token / (peak_flops * world_size)


def format_eta(seconds: float) -> str:
    """45s, 12m, 3h05m, 2d03h: the coarsest two units that matter."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_count(n: float) -> str:
    """950, 4.1k, 41k, 1.2M, 3.4B: three significant digits at most."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return f"{n:.0f}"


def format_lr(lr: float) -> str:
    """3.0e-4 (nanoGPT's style: one decimal, no zero-padded exponent)."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _finite_or_none(x: float | None) -> float | None:
    # Strict JSON has no NaN/Infinity: a diverged loss is written as null (and printed as nan).
    return float(x) if x is not None and math.isfinite(x) else None


def _memory_gb() -> float:
    """Peak accelerator memory allocated by torch since the last call (GB = 1e9 bytes); on CPU the process RSS."""
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        return peak / 1e9
    return psutil.Process().memory_info().rss / 1e9


class MetricsLogger:
    """Rank 0 writes RUN_DIR/metrics.jsonl and prints the step log; every other rank does nothing.

    ``step`` is the number of optimizer steps completed (1-based, the number a checkpoint tag carries);
    ``tokens`` is the global number of tokens trained in that step (all ranks); ``seconds`` its wall time.
    """

    def __init__(
        self,
        run_dir: str,
        rank: int,
        total_steps: int,
        flops_per_token: float,
        world_size: int,
        log_every: int = 1,
    ):
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.path = os.path.join(run_dir, METRICS_NAME)
        self.enabled = rank == 0
        self.total_steps = total_steps
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.log_every = log_every
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.peak_flops = device_peak_flops(device)
        self.tokens_total = 0
        self._timed_steps = 0  # steps whose time feeds the ETA: the first step (compilation, warm-up) is left out
        self._timed_seconds = 0.0
        self._first_seconds: float | None = None
        self._file = None
        self._bar = None
        if self.enabled:
            os.makedirs(run_dir, exist_ok=True)
            if sys.stdout.isatty():
                from tqdm import tqdm

                self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)

    def _write(self, record: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def _eta_seconds(self, step: int) -> float:
        per_step = self._timed_seconds / self._timed_steps if self._timed_steps else (self._first_seconds or 0.0)
        return max(self.total_steps - step, 0) * per_step

    def step(self, step: int, loss: float, lr: float, grad_norm: float | None, tokens: int, seconds: float,
             tokens_by_source: dict[str, int] | None = None, z_loss: float | None = None) -> None:
        """Record optimizer step ``step`` (completed steps, 1-based). ``loss`` is the mean cross-entropy; with
        z-loss on, ``z_loss`` is the z-loss term that was added to it for the backward (logged on its own, so the
        loss stays comparable with val_loss and with runs without z-loss). A blend also gives the tokens each
        source has contributed so far (cumulative, like ``tokens``)."""
        if not self.enabled:
            return
        self.tokens_total += int(tokens)
        if self._first_seconds is None:
            self._first_seconds = seconds
        else:
            self._timed_steps += 1
            self._timed_seconds += seconds
        tokens_per_s = tokens / seconds if seconds > 0 else float("nan")
        record = {
            "step": step,
            "loss": _finite_or_none(loss),
            **({"z_loss": _finite_or_none(z_loss)} if z_loss is not None else {}),
            "lr": lr,
            "grad_norm": _finite_or_none(grad_norm),
            "tokens": self.tokens_total,
            "tokens_per_s": _finite_or_none(tokens_per_s),
        }
        if tokens_by_source is not None:
            record["tokens_by_source"] = dict(tokens_by_source)
        utilization = None
        if self.peak_flops is not None and math.isfinite(tokens_per_s):
            utilization = mfu(tokens_per_s, self.flops_per_token, self.peak_flops, self.world_size)
            record["mfu"] = utilization
        record["mem_gb"] = round(_memory_gb(), 3)
        record["time"] = time.time()
        self._write(record)

        if step % self.log_every and step != self.total_steps:
            return
        parts = [f"loss {loss:.2f}", *([f"z {z_loss:.2g}"] if z_loss is not None else []), f"lr {format_lr(lr)}"]
        if grad_norm is not None:
            parts.append(f"gnorm {grad_norm:.2f}")
        parts.append(f"{format_count(tokens_per_s) if math.isfinite(tokens_per_s) else '?'} tok/s")
        if utilization is not None:
            parts.append(f"mfu {utilization * 100:.0f}%")
        parts.append(f"mem {record['mem_gb']:.1f}G")
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(" | ".join(parts), refresh=True)
        else:
            line = " | ".join([f"step {step}/{self.total_steps}", *parts, f"eta {format_eta(self._eta_seconds(step))}"])
            print(line, flush=True)

    def eval(self, step: int, val_loss: float, by_source: dict[str, float] | None = None) -> None:
        """Record a validation loss measured after optimizer step ``step``; for a blend ``val_loss`` is the weighted
        mean and ``by_source`` each source's own."""
        if not self.enabled:
            return
        record = {"step": step, "val_loss": _finite_or_none(val_loss)}
        if by_source is not None:
            record["val_loss_by_source"] = {name: _finite_or_none(v) for name, v in by_source.items()}
        self._write(record)
        line = f"step {step}/{self.total_steps} | val loss {val_loss:.3f} | val ppl {math.exp(min(val_loss, 50.0)):.1f}"
        if by_source is not None:
            line += " | " + ", ".join(f"{name} {v:.3f}" for name, v in by_source.items())
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def truncate_after(self, step: int) -> None:
        """Start of a run resuming after ``step`` completed steps (0 for a fresh start): drop later lines.

        Lines of steps past the checkpoint were written by an interrupted run and will be trained again; a
        torn last line (a crash mid-write) is dropped too. The cumulative token count continues from the last
        kept step line. The file is replaced atomically (temp + rename).
        """
        if not self.enabled:
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        self.tokens_total = 0
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()
        if not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn line from a crash mid-write
                if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] > step:
                    continue
                kept.append(line if line.endswith("\n") else line + "\n")
                if "tokens" in record:
                    self.tokens_total = int(record["tokens"])
        with atomic_open(self.path, "w") as f:
            f.writelines(kept)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def read_metrics(path: str) -> tuple[list[dict], list[dict]]:
    """(step lines, eval lines) of a metrics.jsonl, in file order."""
    steps, evals = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                (evals if "val_loss" in record else steps).append(record)
    return steps, evals


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Plot train and validation loss from a metrics.jsonl.")
    parser.add_argument("metrics", help="RUN_DIR/metrics.jsonl")
    parser.add_argument("--out", help="image path (default: next to the metrics file, loss.png)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.metrics):
        print(f"error: {args.metrics} does not exist; pass RUN_DIR/metrics.jsonl of a training run", file=sys.stderr)
        return EXIT_USAGE
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, evals = read_metrics(args.metrics)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train")
    if evals:
        label = "val (weighted mean)" if any("val_loss_by_source" in r for r in evals) else "val"
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label=label)
        names = sorted({n for r in evals for n in r.get("val_loss_by_source", {})})
        for name in names:
            points = [(r["step"], r["val_loss_by_source"][name]) for r in evals if name in r.get("val_loss_by_source", {})]
            ax.plot([p[0] for p in points], [p[1] for p in points], ".--", label=f"val {name}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.metrics)), "loss.png")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
