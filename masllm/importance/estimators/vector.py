"""MAS with the vector output (Aljundi et al. 2018, Sec. 4.1 and Sec. 5.1 "l2^2 vs. vector output").

Eq. 2 on the multi-dimensional F itself rather than on the scalar ||F||_2^2:

    Omega_ij = 1/N sum_k sum_d | d F_d(x_k) / d theta_ij |

(the norm over outputs in Eq. 2 taken as l1: the sum of absolute per-output gradients). It needs one
backward pass per output dimension d -- D = number of classes for a classifier, T x V per sequence
for a language model -- and here one forward pass per dimension too (a retained graph would not
survive DeepSpeed's engine backward). The paper found no difference in forgetting (0.51% vs 0.50%
drop on the first task) at D times the cost; `masllm.importance.mas` is the l2^2 form. Each
backward goes through `ctx.backward` with `PerSampleAbsGrad`, so |.| is per sample and the sums
shard like MAS's under ZeRO -- where every rank must then run the same number of backward passes:
outputs of the same size on every rank (classifiers; sequences padded to one length). `config.output` chooses F (logits by default); padding positions of a
sequence are left out (their dimensions are skipped). Strength: MAS's, lambda = 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from ...batch import Batch, attention_mask, batch_size, inputs_of, masked, slice_batch, to_device
from ...registry import register_estimator
from ..context import ImportanceContext, ImportanceSums
from ..per_sample import PerSampleAbsGrad, PerSampleMismatch
from .mas import model_output


def _flat_output(ctx: ImportanceContext, x: Batch) -> torch.Tensor:
    """F(x) as (B, D), padding positions zeroed."""
    F = model_output(ctx.model, x, ctx.config)
    F = masked(F, attention_mask(x, F.shape, extra_dims=1))
    return F.reshape(F.shape[0], -1)


def _used_dims(ctx: ImportanceContext, x: Batch) -> list[int]:
    """Output dimensions at a non-padding position of some sample (all of them without a mask)."""
    with torch.no_grad():
        F = model_output(ctx.model, x, ctx.config)
    keep = masked(torch.ones_like(F), attention_mask(x, F.shape, extra_dims=1)).bool()
    return keep.reshape(F.shape[0], -1).any(0).nonzero().flatten().tolist()


def _one_batch(ctx: ImportanceContext, hooks: PerSampleAbsGrad, x: Batch) -> None:
    """One forward + backward per output dimension d that any sample of the batch uses."""
    B = batch_size(x)
    for d in _used_dims(ctx, x):
        hooks.start_batch(B)
        ctx.backward(_flat_output(ctx, x)[:, d].float().sum())  # sum_k F_d(x_k): per-sample |.| by hooks


@register_estimator("mas_vector")
def vector_importance(ctx: ImportanceContext, batches: Iterable[Batch]) -> ImportanceSums:
    """sum_k sum_d |d F_d(x_k) / d theta| accumulated in the gradients (1/N applied by the caller)."""
    hooks = PerSampleAbsGrad(ctx.model, ctx.params, check=ctx.config.check_per_sample)
    one_at_a_time = False
    n_samples = n_batches = 0
    try:
        for batch in batches:
            x, B = to_device(inputs_of(batch), ctx.device), batch_size(batch)
            if not one_at_a_time:
                try:
                    _one_batch(ctx, hooks, x)
                except PerSampleMismatch as e:
                    if n_batches > 0:
                        raise
                    warnings.warn(f"{e}; falling back to one sample per batch (exact, slower)", stacklevel=2)
                    ctx.zero_grads()
                    one_at_a_time = True
            if one_at_a_time:  # with one sample, |batch gradient| is exact
                for k in range(B):
                    _one_batch(ctx, hooks, slice_batch(x, k, k + 1))
            n_samples += B
            n_batches += 1
            ctx.progress(B)
    finally:
        hooks.remove()
    return ImportanceSums(ctx.read_grads(), n_samples, n_batches)
