"""`compile: true`: each transformer block's forward compiled with torch.compile, falling back to eager.

Why blocks and not the whole model: every block runs the same code, so one compiled graph serves all of them
(parameters are graph inputs), compile time does not grow with depth, and the parts that cannot be traced in one
graph stay outside it -- the id checks of Decoder.forward (a host sync), and DeepSpeed's ZeRO-3 hooks on each
module, which DeepSpeed marks as not compilable (they split a block's graph at the submodules that own
parameters; with ZeRO 0-2 a block is one graph). The compiled function replaces `block.forward` on the instance,
so the module tree, its state-dict keys and therefore checkpoints are exactly those of the eager model.

Compilation is lazy: torch.compile returns at once and compiles at the first call, so an unusable setup (no C++
compiler for inductor on CPU, no Triton on GPU, a torch build without inductor) only shows then. Two guards turn
that into a warning and eager execution instead of a crash:
  1. probe(): before training, every rank compiles a standalone one-layer model of the run's widths, dtype and
     device and runs a forward and a backward through it. The ranks agree (all-reduce MIN): all compile or none.
     The backward matters here: its graph is compiled during the first backward, where a failure could not be
     undone inside a DeepSpeed step.
  2. guarded blocks: a compile failure at a block's first call (the forward of the first micro-batch, before
     that block has computed anything) switches every block back to eager and reruns the call eagerly. After
     the first optimizer step (`settled()`), errors propagate like any other.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from model.decoder import Decoder, DecoderConfig


class CompileWarning(UserWarning):
    """compile: true was requested but the run continues eagerly."""


def _is_compile_error(error: Exception) -> bool:
    """Errors raised by torch's compile stack (Dynamo, AOTAutograd, Inductor and the C++/Triton toolchains it
    drives, which Inductor wraps in its own error types), as opposed to errors of the model itself, which must
    propagate unchanged."""
    module = type(error).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor", "torch._functorch", "triton"))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def probe(cfg: DecoderConfig, device: torch.device, dtype: torch.dtype) -> str | None:
    """Train-step a standalone one-layer Decoder of `cfg` (same widths, dtype and device) with compiled blocks:
    forward with targets and backward on a (1, 8) batch, so both compiled graphs are built.

    Returns None when that works, else the reason as text. Catches every Exception: whatever stops compilation
    here is a reason to run eagerly, and a real bug of the model shows again, with its traceback, in eager mode.
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the probe's random weights leave the run's RNG untouched
        torch.manual_seed(0)
        try:
            model = Decoder(dataclasses.replace(cfg, n_layers=1)).to(device=device, dtype=dtype)
            compiled = CompiledBlocks(model.blocks, rank=-1, guarded=False)
            tokens = torch.randint(0, cfg.vocab_size, (1, min(8, cfg.max_seq_len) + 1), device=device)
            model(tokens[:, :-1], tokens[:, 1:]).backward()
            compiled.eager("")
            # Forget the probe's graphs: otherwise the run's first, differently shaped call would be taken as a
            # shape change and compiled for dynamic shapes.
            torch.compiler.reset()
        except Exception as e:  # noqa: BLE001 -- see the docstring: any failure means "run eagerly"
            return f"{type(e).__name__}: {_first_line(e)}"
    return None


class CompiledBlocks:
    """Replaces each block's forward with a guarded compiled one; `eager()` restores the class's forward."""

    def __init__(self, blocks: nn.ModuleList, rank: int, guarded: bool = True):
        self.blocks = list(blocks)
        self.rank = rank
        self.active = True
        self._settled = not guarded  # unguarded (the probe): every error propagates
        for block in self.blocks:
            block.forward = self._guarded(block, torch.compile(block.forward))

    def _guarded(self, block: nn.Module, compiled):
        eager = type(block).forward.__get__(block)

        def forward(*args, **kwargs):
            if not self.active:
                return eager(*args, **kwargs)
            try:
                return compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 -- re-raised unless it is a first-call compile failure
                if self._settled or not _is_compile_error(e):
                    raise
                self.eager(f"compiling a block failed at its first call ({type(e).__name__}: {_first_line(e)})")
                return eager(*args, **kwargs)
        return forward

    def settled(self) -> None:
        """Called after the first optimizer step: from now on a failure is a real error."""
        self._settled = True

    def eager(self, reason: str) -> None:
        """Switch every block back to eager execution, with one warning naming the reason."""
        if not self.active:
            return
        self.active = False
        for block in self.blocks:
            del block.forward  # the instance attribute; the class's forward is seen again
        if self.rank == 0 and reason:
            warnings.warn(f"compile: true, but {reason}; training continues eagerly", CompileWarning, stacklevel=2)


def probe_all_ranks(cfg: DecoderConfig, device: torch.device, dtype: torch.dtype, rank: int) -> bool:
    """probe() on every rank, agreed (all-reduce MIN): True when every rank can compile. Otherwise False, after a
    warning on rank 0 naming the reason. Collective: every rank calls it."""
    reason = probe(cfg, device, dtype)
    ok = torch.tensor([0.0 if reason else 1.0], device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    if ok.item() < 1 and rank == 0:
        warnings.warn(f"compile: true, but torch.compile does not work here ({reason or 'it failed on another rank'}"
                      f"); training continues eagerly", CompileWarning, stacklevel=2)
    return ok.item() >= 1
