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

import time
from collections.abc import Iterable

import torch

from ...batch import Batch, attention_mask, inputs_of, masked, to_device
from ...registry import register_estimator
from ..accumulate import FALLBACK, fallback_report
from ..context import ImportanceContext, ImportanceSums
from ..per_sample import PerSampleAbsGrad, PerSampleMismatch
from ..segments import Segments, sample_batch, segments_of
from .mas import model_output


def _flat_output(ctx: ImportanceContext, x: Batch, seg: Segments) -> torch.Tensor:
    """F(x) as (B, D), padding positions zeroed (a packed row's D spans its sequences)."""
    F = model_output(ctx.model, x, ctx.config, seg)
    F = masked(F, attention_mask(x, F.shape, extra_dims=1))
    return F.reshape(F.shape[0], -1)


def _used_dims(ctx: ImportanceContext, x: Batch, seg: Segments) -> list[int]:
    """Output dimensions at a non-padding position of some sample (all of them without a mask)."""
    with torch.no_grad():
        F = model_output(ctx.model, x, ctx.config, seg)
    keep = masked(torch.ones_like(F), attention_mask(x, F.shape, extra_dims=1)).bool()
    return keep.reshape(F.shape[0], -1).any(0).nonzero().flatten().tolist()


def _one_batch(ctx: ImportanceContext, hooks: PerSampleAbsGrad, x: Batch, seg: Segments) -> None:
    """One forward + backward per output dimension d that any sample of the batch uses (a position
    of a packed row belongs to one sequence: the hooks take |.| per sequence)."""
    for d in _used_dims(ctx, x, seg):
        hooks.start_batch(seg)
        ctx.backward(_flat_output(ctx, x, seg)[:, d].float().sum())  # sum_k F_d(x_k): per-sample |.|


@register_estimator("mas_vector")
def vector_importance(ctx: ImportanceContext, batches: Iterable[Batch]) -> ImportanceSums:
    """sum_k sum_d |d F_d(x_k) / d theta| accumulated in the gradients (1/N applied by the caller)."""
    hooks = PerSampleAbsGrad(ctx.model, ctx.params, check=ctx.config.check_per_sample)
    failed: tuple[str, float] | None = None  # (reason, seconds of the batched attempt)
    notes: dict = {}
    n_samples = n_batches = 0
    try:
        for batch in batches:
            seg = segments_of(inputs_of(batch))
            x = to_device(inputs_of(batch), ctx.device)
            if failed is None:
                start = time.perf_counter()
                try:
                    _one_batch(ctx, hooks, x, seg)
                except PerSampleMismatch as e:
                    if n_batches > 0:
                        raise
                    failed = (str(e), time.perf_counter() - start)
                    ctx.zero_grads()
            if failed is not None:  # with one sample, |batch gradient| is exact
                start = time.perf_counter()
                for k in range(seg.num_samples):
                    one = inputs_of(sample_batch(x, seg, k))
                    _one_batch(ctx, hooks, one, segments_of(one))
                if not notes:
                    notes[FALLBACK] = fallback_report(*failed, time.perf_counter() - start, seg.num_samples)
            n_samples += seg.num_samples
            n_batches += 1
            ctx.progress(seg.num_samples)
    finally:
        hooks.remove()
    return ImportanceSums(ctx.take_grads(), n_samples, n_batches, notes)
