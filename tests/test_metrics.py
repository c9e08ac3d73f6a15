"""metrics.jsonl and the step log: fields, resume truncation, MFU only where the peak is known, formatting."""
import json
import re
import sys

import pytest
import torch

from launch.metrics import (
    METRICS_NAME,
    MetricsLogger,
    device_peak_flops,
    format_count,
    format_eta,
    format_lr,
    mfu,
    peak_flops_for_name,
    read_metrics,
)


def strict_lines(path):
    """Every line parsed as strict JSON (NaN/Infinity rejected)."""
    def reject(token):
        raise AssertionError(f"non-strict JSON constant {token} in {path}")

    with open(path) as f:
        return [json.loads(line, parse_constant=reject) for line in f]


def test_jsonl_fields_and_step_line(tmp_path, capsys):
    log = MetricsLogger(str(tmp_path), rank=0, total_steps=10, flops_per_token=6e6, world_size=2)
    log.truncate_after(0)  # fresh start: no file yet, nothing to drop
    log.step(1, loss=3.4149, lr=3e-4, grad_norm=0.918, tokens=4096, seconds=10.0)  # slow first step (warm-up)
    log.step(2, loss=3.2, lr=2.5e-4, grad_norm=None, tokens=4096, seconds=0.1)
    log.eval(2, val_loss=3.5)
    log.step(3, loss=float("nan"), lr=2e-4, grad_norm=float("inf"), tokens=4096, seconds=0.1)
    log.close()

    lines = strict_lines(tmp_path / METRICS_NAME)
    assert [sorted(r) for r in lines] == [
        sorted(["step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mem_gb", "time"])] * 2 + [
        ["step", "val_loss"]] + [sorted(["step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mem_gb", "time"])]
    first, second, ev, third = lines
    assert first["step"] == 1 and first["loss"] == pytest.approx(3.4149) and first["lr"] == 3e-4
    assert first["grad_norm"] == pytest.approx(0.918) and second["grad_norm"] is None
    assert [r["tokens"] for r in (first, second, third)] == [4096, 8192, 12288]  # cumulative
    assert first["tokens_per_s"] == pytest.approx(409.6) and second["tokens_per_s"] == pytest.approx(40960)
    assert first["mem_gb"] > 0.01  # this process's resident memory on CPU
    assert ev == {"step": 2, "val_loss": 3.5}
    assert third["loss"] is None and third["grad_norm"] is None  # non-finite -> null, the file stays strict JSON
    assert read_metrics(str(tmp_path / METRICS_NAME))[1] == [ev]

    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"step 1/10 \| loss 3\.41 \| lr 3\.0e-4 \| gnorm 0\.92 \| 410 tok/s \| mem \d+\.\dG \| eta 1m", out[0]), out[0]
    # The ETA ignores the warm-up step once a steady step exists: 8 steps left * 0.1 s.
    assert re.fullmatch(r"step 2/10 \| loss 3\.20 \| lr 2\.5e-4 \| 41k tok/s \| mem \d+\.\dG \| eta 1s", out[1]), out[1]
    assert out[2] == "step 2/10 | val loss 3.500 | val ppl 33.1"
    assert out[3].startswith("step 3/10 | loss nan | lr 2.0e-4 | gnorm inf")


def test_z_loss_is_its_own_field_and_log_entry(tmp_path, capsys):
    log = MetricsLogger(str(tmp_path), rank=0, total_steps=10, flops_per_token=6e6, world_size=1)
    log.step(1, loss=3.4149, lr=3e-4, grad_norm=0.5, tokens=4096, seconds=1.0, z_loss=0.00123)
    log.step(2, loss=3.3, lr=3e-4, grad_norm=0.5, tokens=4096, seconds=1.0, z_loss=float("nan"))
    log.close()
    first, second = strict_lines(tmp_path / METRICS_NAME)
    assert first["loss"] == pytest.approx(3.4149) and first["z_loss"] == pytest.approx(0.00123)
    assert second["z_loss"] is None
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("step 1/10 | loss 3.41 | z 0.0012 | lr 3.0e-4"), out[0]


def test_log_every_and_other_ranks(tmp_path, capsys):
    log = MetricsLogger(str(tmp_path), rank=0, total_steps=7, flops_per_token=1.0, world_size=1, log_every=3)
    for step in range(1, 8):
        log.step(step, 2.0, 1e-3, 1.0, 100, 0.5)
    log.close()
    printed = [int(line.split()[1].split("/")[0]) for line in capsys.readouterr().out.splitlines()]
    assert printed == [3, 6, 7]  # every log_every steps, and the last step
    assert [r["step"] for r in strict_lines(tmp_path / METRICS_NAME)] == list(range(1, 8))  # the file has all

    other = MetricsLogger(str(tmp_path / "rank1"), rank=1, total_steps=7, flops_per_token=1.0, world_size=2)
    other.truncate_after(0)
    other.step(1, 2.0, 1e-3, 1.0, 100, 0.5)
    other.eval(1, 2.0)
    other.close()
    assert not (tmp_path / "rank1").exists() and capsys.readouterr().out == ""


def test_truncate_after_resume_drops_later_steps_and_continues_tokens(tmp_path, capsys):
    log = MetricsLogger(str(tmp_path), rank=0, total_steps=10, flops_per_token=1.0, world_size=1)
    for step in range(1, 7):
        log.step(step, 5.0 - step / 10, 1e-3, 1.0, tokens=1000, seconds=1.0)
        if step % 2 == 0:
            log.eval(step, 4.0)
    log.close()
    with open(tmp_path / METRICS_NAME, "a") as f:
        f.write('{"step": 7, "loss": 4.')  # torn line: the process died mid-write

    resumed = MetricsLogger(str(tmp_path), rank=0, total_steps=10, flops_per_token=1.0, world_size=1)
    resumed.truncate_after(4)  # the newest complete checkpoint holds 4 steps
    resumed.step(5, 4.5, 1e-3, 1.0, tokens=1000, seconds=1.0)
    resumed.close()
    lines = strict_lines(tmp_path / METRICS_NAME)
    assert [(r["step"], "val_loss" in r) for r in lines] == [
        (1, False), (2, False), (2, True), (3, False), (4, False), (4, True), (5, False)]
    assert lines[-1]["tokens"] == 5000 and lines[-1]["loss"] == 4.5  # cumulative count continues across the resume
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_mfu_only_where_the_peak_is_known(tmp_path, capsys):
    assert device_peak_flops(torch.device("cpu")) is None
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for_name("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for_name("NVIDIA H200") == 989e12
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for_name("NVIDIA L40S") == 362e12 and peak_flops_for_name("NVIDIA L4") == 121e12
    assert peak_flops_for_name("Some Future Accelerator") is None
    assert mfu(tokens_per_s=1e5, flops_per_token=1e9, peak_flops=1e14, world_size=2) == pytest.approx(0.5)

    log = MetricsLogger(str(tmp_path), rank=0, total_steps=2, flops_per_token=1e9, world_size=2)
    if not torch.cuda.is_available():
        assert log.peak_flops is None
    log.step(1, 3.0, 1e-4, 1.0, tokens=1000, seconds=0.01)  # 1e5 tok/s
    log.peak_flops = 1e14  # as on a device with a known peak
    log.step(2, 3.0, 1e-4, 1.0, tokens=1000, seconds=0.01)
    log.close()
    first, second = strict_lines(tmp_path / METRICS_NAME)
    assert "mfu" not in first or torch.cuda.is_available()
    assert second["mfu"] == pytest.approx(0.5)
    assert "| mfu 50% |" in capsys.readouterr().out.splitlines()[-1]


def test_formatting():
    assert [format_eta(s) for s in (0, 45, 59.6, 720, 3599, 3600 + 5 * 60, 2 * 86400 + 3 * 3600 + 59)] == [
        "0s", "45s", "1m", "12m", "59m", "1h05m", "2d03h"]
    assert format_eta(float("nan")) == "?"
    assert [format_lr(x) for x in (3e-4, 1e-3, 6e-5, 0.0)] == ["3.0e-4", "1.0e-3", "6.0e-5", "0.0e0"]
    assert [format_count(x) for x in (950, 4100, 41234, 1.2e6, 3.4e9)] == ["950", "4.1k", "41k", "1.2M", "3.4B"]


def test_progress_bar_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    log = MetricsLogger(str(tmp_path), rank=0, total_steps=4, flops_per_token=1.0, world_size=1)
    log.step(1, 3.0, 1e-4, 0.5, tokens=100, seconds=1.0)
    assert log._bar is not None and log._bar.n == 1 and "loss 3.00" in log._bar.postfix
    log.close()
    captured = capsys.readouterr()
    assert "step 1/4 |" not in captured.out  # the bar (on stderr) replaces the printed line
    assert len(strict_lines(tmp_path / METRICS_NAME)) == 1
