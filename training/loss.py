"""The training loss: summed cross-entropy at label positions only, from the decoder's hidden states.

Logits are computed only where a label is set, in chunks: the LM head (49k wide on SmolLM2, 128k on Llama
3.1) never runs on system/user tokens and a full [rows, seq, vocab] logits tensor never exists. A packed
row's example boundaries (position 0) are never a target. evaluate_rows is the validation loss on the same
definition, sharded over ranks.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from training.dataset import IGNORE, collate
from training.distributed import Dist, all_sum


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) of a step is NaN or infinite: the run stops, no adapter is written."""

    def __init__(self, step: int, value: float, what: str = "training loss", hint: str = ""):
        self.step, self.value, self.what = step, value, what
        super().__init__(
            f"step {step}: {what} is {value}; training stopped before the optimizer applied it "
            f"and no final adapter was written. {hint}".strip()
        )


def label_positions(labels: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """[rows, seq-1] bool: which next-token targets carry loss (labels set, not an example's first token)."""
    return (labels[:, 1:] != IGNORE) & (position_ids[:, 1:] != 0)


class LabelLoss(nn.Module):
    """Summed cross-entropy over label positions, from the decoder's hidden states (no full logits).

    forward(input_ids, position_ids, labels) -> (loss_sum fp32 scalar, number of label positions).
    This is the module DDP wraps, so gradient sync sees every forward.
    """

    def __init__(self, peft_model: nn.Module, chunk_tokens: int = 1024):
        super().__init__()
        self.peft_model = peft_model
        self.chunk_tokens = chunk_tokens

    def forward(self, input_ids, position_ids, labels):
        base = self.peft_model.get_base_model()
        hidden = base.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        keep = label_positions(labels, position_ids)
        h, targets = hidden[:, :-1][keep], labels[:, 1:][keep]
        n = targets.numel()
        if n == 0:  # keep every parameter in the graph (DDP expects a gradient for each)
            return hidden.sum() * 0.0, n
        head = base.get_output_embeddings()
        if (
            head.weight.requires_grad or getattr(head, "bias", None) is not None
        ):  # a trained head: plain autograd
            total = hidden.new_zeros((), dtype=torch.float32)
            for i in range(0, n, self.chunk_tokens):
                total = total + torch.utils.checkpoint.checkpoint(
                    _head_cross_entropy,
                    head,
                    h[i : i + self.chunk_tokens],
                    targets[i : i + self.chunk_tokens],
                    use_reentrant=False,
                )
            return total, n
        return HeadCrossEntropy.apply(h, head.weight, targets, self.chunk_tokens), n


def _head_cross_entropy(head: nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), targets, reduction="sum")


class HeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i @ W^T, t_i) for a frozen LM head W, a chunk of logits at a time, forward and backward.

    Autograd's path (log_softmax, nll, their backwards, a zero-filled [n, vocab] gradient) makes ~5
    passes over the logits; this makes 2 in forward (fp32 logsumexp, gather) and 2 in backward
    (softmax from the saved logsumexp, minus one-hot), recomputing each chunk's logits instead of
    keeping them. The 49k-wide head is a sizeable share of a CPU step (bench/train_throughput.py times it
    apart), so this is worth a custom backward.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int):
        w = weight.to(h.dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        for i in range(0, h.shape[0], chunk):
            logits = (h[i : i + chunk] @ w.t()).float()
            lse[i : i + chunk] = torch.logsumexp(logits, dim=-1)
            total += (lse[i : i + chunk] - logits.gather(1, targets[i : i + chunk, None]).squeeze(1)).sum()
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx, grad):
        h, weight, targets, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        w, chunk = weight.to(h.dtype), ctx.chunk
        grad_h = torch.empty_like(h)
        for i in range(0, h.shape[0], chunk):
            p = (h[i : i + chunk] @ w.t()).float().sub_(lse[i : i + chunk, None]).exp_()  # softmax
            p[torch.arange(p.shape[0], device=p.device), targets[i : i + chunk]] -= 1.0
            grad_h[i : i + chunk] = p.mul_(grad).to(h.dtype) @ w
        return grad_h, None, None, None


@torch.no_grad()
def evaluate_rows(
    loss_fn: LabelLoss, rows, micro_batch_size: int, d: Dist | None = None, autocast=None
) -> float | None:
    """Mean cross-entropy per label position over rows (sharded over ranks); None when there are none."""
    d = d or Dist()
    if not rows:
        return None
    loss_fn.eval()
    mine = rows[d.rank :: d.world]
    total = count = 0.0
    for i in range(0, len(mine), micro_batch_size):
        batch = {k: v.to(d.device) for k, v in collate(mine[i : i + micro_batch_size]).items()}
        with autocast or nullcontext():
            s, n = loss_fn(**batch)
        total, count = total + float(s), count + n
    total, count = all_sum(d, total, count)
    return total / count if count else None
