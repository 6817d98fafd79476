"""sum_k fn(g_k) accumulated in the gradients, for any per-sample scalar loss and elementwise fn.

The loop MAS uses for |.| (mas.py), shared by the estimators that need another per-sample
transform or another per-sample scalar: EWC and SPP (fn = square of the log-likelihood gradient:
the diagonal Fisher), l-MAS (fn = |.| of layer-local gradients). One backward pass per micro-batch
through `ctx.backward`, with `PerSampleAbsGrad` turning sum_k g_k into sum_k fn(g_k). A sample is
what the batch's `Segments` says (a row, or a sequence of a packed row), and N counts samples. Where
the per-sample gradients cannot be formed it falls back to one sample per backward pass (exact,
slower), and says so once, with the reason and the measured cost: a logger warning and an
`importance/fallback` entry in the returned Omega's task record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch
from torch import nn

from ..batch import Batch, inputs_of
from .context import ImportanceContext, ImportanceSums
from .per_sample import PerSampleAbsGrad, PerSampleMismatch, Transform
from .segments import Segments, sample_batch, segments_of

logger = logging.getLogger(__name__)
FALLBACK = "importance/fallback"  # the task-record key (and log prefix) of a fallback report

# (full batch, labels included; its samples) -> sum over its samples of the per-sample scalar
BatchLoss = Callable[[Batch, Segments], torch.Tensor]


def fallback_report(reason: str, batched_s: float, fallback_s: float, samples: int) -> dict[str, Any]:
    """Log, once, why importance left the batched path and what it costs; the record to keep."""
    slowdown = fallback_s / max(batched_s, 1e-9)
    logger.warning(
        "%s: %s; falling back to one sample per backward pass (exact, slower): the first batch's %d "
        "samples took %.3g s, against %.3g s for the batched attempt (%.1fx)",
        FALLBACK, reason, samples, fallback_s, batched_s, slowdown,
    )  # fmt: skip
    return {"reason": reason, "slowdown": round(slowdown, 3), "first_batch_s": round(fallback_s, 4)}


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
    notes: dict[str, Any] = {}
    failed: tuple[str, float] | None = None  # (reason, seconds of the batched attempt)
    n_samples = n_batches = 0
    try:
        for batch in batches:
            seg = segments_of(inputs_of(batch))
            if failed is None:
                start = time.perf_counter()
                try:
                    hooks.start_batch(seg)
                    ctx.backward(loss_fn(batch, seg))
                except PerSampleMismatch as e:
                    if n_batches > 0:
                        raise
                    failed = (str(e), time.perf_counter() - start)
                    ctx.zero_grads()
                    hooks.remove()
                    hooks = _TransformOfBatchGrad(ctx.model, ctx.params, transform)
            if failed is not None:
                start = time.perf_counter()
                for k in range(seg.num_samples):
                    one = sample_batch(batch, seg, k)
                    ctx.backward(loss_fn(one, segments_of(inputs_of(one))))
                if not notes:
                    notes[FALLBACK] = fallback_report(*failed, time.perf_counter() - start, seg.num_samples)
            n_samples += seg.num_samples
            n_batches += 1
            ctx.progress(seg.num_samples)
    finally:
        hooks.remove()
    return ImportanceSums(ctx.take_grads(), n_samples, n_batches, notes)


def accumulate_per_batch(
    ctx: ImportanceContext, batches: Iterable[Batch], loss_fn: BatchLoss, transform: Transform
) -> ImportanceSums:
    """Return sum over micro-batches of transform(d loss_batch / d theta): the cheaper approximation
    in which the samples of a micro-batch are summed before the transform (abs_mode='per_batch')."""
    hooks = _TransformOfBatchGrad(ctx.model, ctx.params, transform)
    n_samples = n_batches = 0
    try:
        for batch in batches:
            seg = segments_of(inputs_of(batch))
            ctx.backward(loss_fn(batch, seg))
            n_samples, n_batches = n_samples + seg.num_samples, n_batches + 1
            ctx.progress(seg.num_samples)
    finally:
        hooks.remove()
    return ImportanceSums(ctx.take_grads(), n_samples, n_batches)


def count_only(ctx: ImportanceContext, batches: Iterable[Batch]) -> tuple[int, int]:
    """(samples, batches) of an estimator that needs no forward pass (L2, SI), with progress."""
    n_samples = n_batches = 0
    for batch in batches:
        S = segments_of(inputs_of(batch)).num_samples
        n_samples, n_batches = n_samples + S, n_batches + 1
        ctx.progress(S)
    return n_samples, n_batches
