"""The training loss from the final hidden states: LM head + cross-entropy, optionally in token chunks, plus z-loss.

    parts = linear_cross_entropy(hidden, head_weight, targets, chunk_tokens=1024, z_loss=1e-4)
    parts.loss.backward()          # ce + z_loss term; parts.ce and parts.z_loss are detached, for logging

Plain (chunk_tokens=0): logits = hidden @ W^T as one (N, V) tensor, then F.cross_entropy on its fp32 copy: the
loss Decoder.forward(tokens, targets) returns without loss options. Autograd keeps the fp32 logits (or their
log-softmax) for the backward, so the loss costs several N x V x 4 bytes at its peak: 4 x 2048 tokens at
vocabulary 32,000 is 1 GB each.

Chunked (chunk_tokens > 0): a custom autograd Function walks the N tokens in chunks of chunk_tokens rows. Per
chunk it computes the (chunk, V) logits in fp32, the loss terms and, when a gradient is needed, that chunk's
gradient right away -- d/dlogits = softmax - onehot (+ z-loss term) -- which it turns into the chunk's rows of
dL/dhidden and adds into dL/dW (an fp32 accumulator), then frees the chunk's logits. The backward only scales the
stored gradients by the incoming gradient. So at most one chunk of logits exists at a time, in forward and
backward, and the matmul work equals the plain version's (forward, dhidden, dW: three N x C x V products; no
recomputation, unlike torch.utils.checkpoint around each chunk, which would do the forward product twice).
This is the fused linear cross-entropy of Liger-Kernel and OLMo-core, in plain PyTorch.

z-loss (PaLM; OLMo uses 1e-4): z_loss * mean over non-ignored tokens of logsumexp(logits)^2. It pulls the
softmax normalizer log Z towards 0, which keeps bf16 logits from drifting to large magnitudes. Its gradient
w.r.t. a token's logits is z_loss * 2 * lse * softmax / n_valid.

Targets equal to -1 are ignored (no loss, no z-loss, no gradient); means are over the remaining tokens.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The loss's compute dtype: fp32 for bf16/fp16/fp32 models, fp64 stays fp64 (gradient checks)."""
    return torch.promote_types(dtype, torch.float32)


class LossParts(NamedTuple):
    """Scalars of one micro-batch. loss = ce + z_loss is what backward uses; ce and z_loss are detached."""

    loss: torch.Tensor      # fp32, differentiable
    ce: torch.Tensor        # fp32 mean cross-entropy (nats/token), the number a validation loss compares to
    z_loss: torch.Tensor    # fp32 z_loss coefficient * mean(logsumexp^2); 0 when the coefficient is 0


def _plain(hidden, weight, targets, z_loss: float) -> LossParts:
    logits = F.linear(hidden, weight).to(_wide(hidden.dtype))                   # (N, V) fp32
    ce = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    if not z_loss:
        return LossParts(ce, ce.detach(), torch.zeros((), device=ce.device))
    valid = targets != IGNORE_INDEX
    lse = torch.logsumexp(logits, dim=-1)                                       # (N,)
    z = z_loss * (lse.square() * valid).sum() / valid.sum()
    return LossParts(ce + z, ce.detach(), z.detach())


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """(hidden (N, C), weight (V, C), targets (N,)) -> (loss, ce, z); the gradient is computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens: int, z_loss: float, need_grad: bool):
        n = hidden.shape[0]
        valid = targets != IGNORE_INDEX
        wide = _wide(hidden.dtype)
        count = valid.sum().to(wide)                      # 0 gives nan, as F.cross_entropy's mean does
        safe_targets = targets.clamp(min=0)               # ignored rows gather any column, then are masked out
        # Per-chunk sums, added up at the end in one reduction (pairwise, as one big sum would be) rather than one
        # by one, so the rounding error does not grow with the number of chunks.
        ce_sums, z_sums = [], []
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        # fp32 accumulation over chunks: each chunk's product is rounded once to fp32, never to bf16 in between.
        grad_weight = torch.zeros(weight.shape, dtype=wide, device=weight.device) if need_grad else None
        for start in range(0, n, chunk_tokens):
            end = min(start + chunk_tokens, n)
            h, t, m = hidden[start:end], safe_targets[start:end], valid[start:end]
            logits = F.linear(h, weight).to(wide)                             # (n_c, V) fp32
            target_logit = logits.gather(1, t[:, None])[:, 0]                 # (n_c,)
            # logsumexp computed in place on the chunk, so the chunk's logits are the only (n_c, V) tensor:
            # exp(logits - rowmax), whose row sums give lse = rowmax + log(sum) and which is softmax * sum.
            row_max = logits.amax(dim=-1)
            unnormalized = logits.sub_(row_max[:, None]).exp_()
            row_sum = unnormalized.sum(dim=-1)
            lse = row_max + row_sum.log()                                     # (n_c,)
            mf = m.to(wide)
            ce_sums.append(((lse - target_logit) * mf).sum())
            z_sums.append((lse.square() * mf).sum() if z_loss else lse.new_zeros(()))
            if need_grad:
                # Still in place: softmax scaled per row by (1 + 2 z lse) / n_valid (0 for ignored rows), minus
                # 1 / n_valid at the target: d(ce + z * mean lse^2) / dlogits.
                grad = unnormalized.mul_((mf * (1.0 + 2.0 * z_loss * lse) / (count * row_sum))[:, None])
                grad.scatter_add_(1, t[:, None], (-mf / count)[:, None])
                grad = grad.to(hidden.dtype)
                grad_hidden[start:end] = grad @ weight                        # (n_c, C)
                grad_weight += grad.t() @ h                                    # (V, C)
                del grad
            del logits, unnormalized
        ce = torch.stack(ce_sums).sum() / count
        z = z_loss * torch.stack(z_sums).sum() / count
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        ctx.mark_non_differentiable(ce, z)
        return ce + z, ce, z

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_z):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype), \
            None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         chunk_tokens: int = 0, z_loss: float = 0.0) -> LossParts:
    """Mean cross-entropy (+ z-loss) of logits = hidden @ weight^T without (chunk_tokens > 0) or with
    (chunk_tokens = 0) the whole (N, V) logits in memory.

    hidden (N, C) in the model's dtype, weight (V, C) the LM head, targets (N,) int64 ids or -1 (ignored).
    """
    if chunk_tokens < 0 or z_loss < 0:
        raise ValueError(f"linear_cross_entropy: chunk_tokens and z_loss must be >= 0, got {chunk_tokens}, {z_loss}")
    if not chunk_tokens:
        return _plain(hidden, weight, targets, z_loss)
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, ce, z = _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens, float(z_loss), need_grad)
    return LossParts(loss, ce, z)
