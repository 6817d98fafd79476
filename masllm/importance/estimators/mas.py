"""MAS importance (Aljundi et al. 2018, Sec. 4.1): the sensitivity of the output to each parameter.

    Omega_ij = 1/N sum_k | d l(F(x_k)) / d theta_ij |                                      (Eq. 2)

with l = ||.||_2^2 by default (Sec. 4.1: "the gradients of the squared l2 norm of the learned
function output"), so one backward pass serves all outputs. No labels are used.

For sequence outputs (B, T, ...) with an `attention_mask`, F(x_k) is the output at the non-padding
positions of sample k, and ||F(x_k)||^2 sums over all of them: a sample is a sequence, N counts
sequences, and longer sequences weigh more (each token's output is part of what is preserved).
In a packed (padding-free) batch a sample is still a sequence, not the row it shares with others
(`importance.segments`); a transformers model then runs with `use_cache=False`, without which it
would not keep the packed sequences apart (its mask is built from `position_ids` only without a cache).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ...batch import (
    Batch,
    attention_mask,
    forward,
    inputs_of,
    last_hidden_state_of,
    logits_of,
    masked,
    to_device,
)
from ...config import MASConfig
from ...registry import register_estimator
from ..accumulate import accumulate_per_batch, accumulate_per_sample
from ..context import ImportanceContext, ImportanceSums
from ..segments import Segments, forward_kwargs


def output_of(outputs: Any, config: MASConfig) -> torch.Tensor:
    """F(x): logits (pre-softmax, the paper's choice), last hidden states, or probabilities."""
    if config.output == "hidden_states":
        return last_hidden_state_of(outputs)
    logits = logits_of(outputs)
    return logits.softmax(-1) if config.output == "probs" else logits


def per_sample_norm(F: torch.Tensor, x: Batch, norm: str, seg: Segments | None = None) -> torch.Tensor:
    """l(F(x_k)) for every sample k: (S,). Padding positions (attention_mask == 0) are left out; in a
    packed batch each sequence of a row is its own sample (`seg`)."""
    F = masked(F, attention_mask(x, F.shape, extra_dims=1))  # (B, T, ...)
    if seg is not None and seg.packed:  # (B, T, ...) -> per position, then per sequence
        if F.dim() < 3:
            raise ValueError(f"A packed batch needs F per position (B, T, ...), got {tuple(F.shape)}")
        per_position = F.float().abs() if norm == "l1" else F.float().pow(2)
        total = seg.sum_positions(per_position.reshape(*F.shape[:2], -1).sum(-1), 0)
        return total.sqrt() if norm == "l2" else total
    F = F.reshape(F.shape[0], -1).float()
    if norm == "l1":
        return F.abs().sum(1)
    sq = F.pow(2).sum(1)
    return sq.sqrt() if norm == "l2" else sq


def model_output(model: nn.Module, x: Batch, config: MASConfig, seg: Segments | None = None) -> torch.Tensor:
    """F(x) as `config.output` says (hidden states are asked for from transformers models); a
    packed batch runs without a cache, so that the model keeps its sequences apart."""
    if not isinstance(x, Mapping):
        return output_of(forward(model, x), config)
    kwargs = forward_kwargs(model, seg) if seg is not None else {}
    if config.output == "hidden_states":
        kwargs["output_hidden_states"] = True
    return output_of(forward(model, x, **kwargs), config)


@register_estimator("mas")
def mas_importance(ctx: ImportanceContext, batches: Iterable[Batch]) -> ImportanceSums:
    """Accumulate sum_k |g_k| (or sum_batches |sum_k g_k| with abs_mode='per_batch') into the gradients."""

    def loss(batch: Batch, seg: Segments) -> torch.Tensor:  # sum_k l(F(x_k)) over the batch's samples
        x = to_device(inputs_of(batch), ctx.device)
        return per_sample_norm(model_output(ctx.model, x, ctx.config, seg), x, ctx.config.norm, seg).sum()

    if ctx.config.abs_mode == "per_sample":
        return accumulate_per_sample(ctx, batches, loss, torch.abs)  # Eq. 2, |.| per sample
    return accumulate_per_batch(ctx, batches, loss, torch.abs)
