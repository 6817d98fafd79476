"""`compute_importance`, the one entry point: the same procedure around every registered estimator.

An estimator takes an `ImportanceContext` and an iterable of unlabeled batches and returns
per-parameter sums with the sample and batch counts; `compute_importance` does the rest the same
way for all of them: model mode, gradient stashing, progress bar, ranks, normalisation (Eq. 2's
1/N), anchors theta*, and packing the result into an `Omega`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from ..config import MASConfig
from ..distributed import comm, fsdp, zero
from ..omega import Omega
from ..registry import ESTIMATORS
from .context import ImportanceContext
from .data import SkipEmpty, as_batches, as_samples, limit_samples
from .ranks import Lockstep, combine, rank_share, use_engine, use_fsdp


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters Omega covers: those that train (a frozen LoRA base has no Omega)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def compute_importance(
    model: nn.Module,
    data: Any,
    config: MASConfig | None = None,
    *,
    task_name: str = "task",
    collate_fn: Callable | None = None,
    show_progress: bool = True,
) -> Omega:
    """Estimate Omega for `model` on unlabeled `data` (Dataset, DataLoader, iterable of batches, or a
    list of per-sample dicts, batched like a Dataset). All-padding samples are left out of N, with a warning.

    The result's anchors are the model's current weights: merge it into the running Omega with
    `omega.merge(new)` after each task. With a process group, every rank must call this: a Dataset
    is split across ranks, an iterable is taken as this rank's share, and N counts all ranks'
    samples. Under DeepSpeed ZeRO pass the engine (`trainer.model_wrapped`): the result then
    holds this rank's slices of Omega and theta* (see `masllm.distributed.zero`). Under FSDP2 pass
    the sharded model (`trainer.model`): the result holds DTensors placed like the parameters
    (`masllm.distributed.fsdp`). A sample is a row of a batch or, in a packed (padding-free) batch,
    each sequence of a row (`segments`); a fallback from the batched exact path is recorded in the
    task's `importance/fallback` entry.
    """
    config = config or MASConfig()
    engine = zero.deepspeed_engine(model)
    if engine is not None:
        model = engine.module
    elif isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # a plain backward on the module: no DDP all-reduce of |g| sums
    params = trainable_parameters(model)
    if not params:
        raise ValueError("The model has no trainable parameters: nothing to estimate importance for")
    rank, world_size = comm.world()
    data, cap = rank_share(as_samples(data), config, rank, world_size)
    nonempty = SkipEmpty(as_batches(data, config.importance_batch_size, collate_fn))
    batches = limit_samples(nonempty, cap)
    lockstep = Lockstep(batches) if engine is not None or fsdp.is_fsdp2(model) else None  # sharded
    bar = tqdm(
        desc=f"importance ({config.method}, {task_name})",
        unit="sample",
        disable=not show_progress or rank != 0,
    )
    device = next(iter(params.values())).device
    ctx = ImportanceContext(model, params, config, device, progress=bar.update)
    if engine is not None:
        use_engine(ctx, engine, lockstep)
    elif lockstep is not None:
        use_fsdp(ctx, lockstep)
    stash = {n: p.grad for n, p in params.items()}
    was_training = model.training
    model.train(config.model_mode == "train")
    try:
        ctx.zero_grads()
        result = ESTIMATORS[config.method](ctx, lockstep if lockstep is not None else batches)
    finally:
        ctx.zero_grads()
        for n, p in params.items():
            p.grad = stash[n]
        model.train(was_training)
        bar.close()
    if nonempty.skipped:
        warnings.warn(
            f"Importance of {task_name!r}: {nonempty.skipped} samples are all padding (attention_mask all 0) "
            "and were left out: they have no output to measure and do not count in N (Eq. 2)",
            stacklevel=2,
        )
    if world_size > 1:
        result = combine(result, lockstep)
    if result.num_samples == 0:
        raise ValueError("The importance data yielded no samples: Omega needs at least one (Eq. 2)")
    denom = result.num_samples if config.normalize == "samples" else result.num_batches
    importance = {n: t.div_(denom) for n, t in result.sums.items()}  # Eq. 2: 1/N sum_k
    task = {"name": task_name, "num_samples": result.num_samples, "method": config.method, **result.notes}
    omega = Omega(importance, config=config, tasks=[task])
    if ctx.local is not None:
        return omega.set_local_anchors(ctx.local.values(), ctx.local.shards)
    return omega.set_anchors(model)
