"""sum_k fn(g_k) accumulated in the gradients, for any per-sample scalar loss and elementwise fn.

The loop MAS uses for |.| (mas.py), shared by the estimators that need another per-sample
transform or another per-sample scalar: EWC and SPP (fn = square of the log-likelihood gradient:
the diagonal Fisher), l-MAS (fn = |.| of layer-local gradients). One backward pass per micro-batch
through `ctx.backward`, with `PerSampleAbsGrad` turning sum_k g_k into sum_k fn(g_k); where the
per-sample gradients cannot be formed it falls back, with a warning, to one sample per backward pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn

from ..batch import Batch, batch_size, slice_batch
from .context import ImportanceContext, ImportanceSums
from .per_sample import PerSampleAbsGrad, PerSampleMismatch, Transform

# (full batch, labels included) -> sum over its samples of the per-sample scalar
BatchLoss = Callable[[Batch], torch.Tensor]


class _TransformOfBatchGrad:
    """fn(batch gradient): exact for one-sample batches (the fallback path). Under FSDP2 a forward
    uses the unsharded parameter swapped into the module, not the one given: that tensor (a
    persistent one) is hooked before a module's forward first uses it."""

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], fn: Transform) -> None:
        self.fn = fn
        self._hooked = {id(p) for p in params.values()}
        self._handles = [p.register_hook(fn) for p in params.values()]
        for module in model.modules():
            own = [a for a, p in module.named_parameters(recurse=False) if id(p) in self._hooked]
            if own:
                self._handles.append(module.register_forward_pre_hook(partial(self._hook_live, own)))

    def _hook_live(self, own: list[str], module: nn.Module, args: tuple) -> None:
        for attr in own:
            t = getattr(module, attr)
            if id(t) not in self._hooked and t.requires_grad:
                self._hooked.add(id(t))
                self._handles.append(t.register_hook(self.fn))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def accumulate_per_sample(
    ctx: ImportanceContext, batches: Iterable[Batch], loss_fn: BatchLoss, transform: Transform
) -> ImportanceSums:
    """Return sum_k transform(d loss_k / d theta) over all samples, with the sample and batch counts."""
    hooks: Any = PerSampleAbsGrad(
        ctx.model, ctx.params, check=ctx.config.check_per_sample, transform=transform
    )
    one_at_a_time = False
    n_samples = n_batches = 0
    try:
        for batch in batches:
            B = batch_size(batch)
            if not one_at_a_time:
                try:
                    hooks.start_batch(B)
                    ctx.backward(loss_fn(batch))
                except PerSampleMismatch as e:
                    if n_batches > 0:
                        raise
                    warnings.warn(
                        f"{e}; falling back to one sample per backward pass (exact, slower)", stacklevel=2
                    )
                    ctx.zero_grads()
                    hooks.remove()
                    hooks, one_at_a_time = _TransformOfBatchGrad(ctx.model, ctx.params, transform), True
            if one_at_a_time:
                for k in range(B):
                    ctx.backward(loss_fn(slice_batch(batch, k, k + 1, labels=True)))
            n_samples += B
            n_batches += 1
            ctx.progress(B)
    finally:
        hooks.remove()
    return ImportanceSums(ctx.read_grads(), n_samples, n_batches)


def accumulate_per_batch(
    ctx: ImportanceContext, batches: Iterable[Batch], loss_fn: BatchLoss, transform: Transform
) -> ImportanceSums:
    """Return sum over micro-batches of transform(d loss_batch / d theta): the cheaper approximation
    in which the samples of a micro-batch are summed before the transform (abs_mode='per_batch')."""
    hooks = _TransformOfBatchGrad(ctx.model, ctx.params, transform)
    n_samples = n_batches = 0
    try:
        for batch in batches:
            ctx.backward(loss_fn(batch))
            B = batch_size(batch)
            n_samples, n_batches = n_samples + B, n_batches + 1
            ctx.progress(B)
    finally:
        hooks.remove()
    return ImportanceSums(ctx.read_grads(), n_samples, n_batches)


def count_only(ctx: ImportanceContext, batches: Iterable[Batch]) -> tuple[int, int]:
    """(samples, batches) of an estimator that needs no forward pass (L2, SI), with progress."""
    n_samples = n_batches = 0
    for batch in batches:
        B = batch_size(batch)
        n_samples, n_batches = n_samples + B, n_batches + 1
        ctx.progress(B)
    return n_samples, n_batches
