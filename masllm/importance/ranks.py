"""Importance over several ranks: each rank takes its share of the data, and the sums meet.

Eq. 2 sums |g_k| over all N samples of the importance set, whatever the number of ranks:

- DDP (or any process group without DeepSpeed): each rank runs the estimator on its share on its
  full, replicated parameters; the per-parameter sums and the counts are then all-reduced.
- DeepSpeed ZeRO: the estimator's backward is the engine's. The per-sample hook of
  `PerSampleAbsGrad` turns each parameter's gradient into sum_k |g_k| *before* DeepSpeed's reduce
  hook sees it, so the reduce-scatter averages sums of absolute values over ranks into the rank's
  local gradient slice; multiplying by the world size gives the rank's slice of sum_k |g_k| over
  all samples with no further communication (abs after the reduction would be |mean|, a different
  quantity). ZeRO's collectives need every rank to run the same number of backward passes, so a
  rank whose share is exhausted repeats its last batch with weight 0 until all are done.

A map-style dataset is split here into contiguous blocks (after `max_importance_samples` is
applied to the whole); a DataLoader or other iterable is taken to be this rank's share already.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import Subset

from ..batch import Batch, inputs_of, is_map_dataset
from ..config import MASConfig
from ..distributed import comm, zero
from .context import ImportanceContext, ImportanceSums
from .segments import segments_of


def rank_share(data: Any, config: MASConfig, rank: int, world_size: int) -> tuple[Any, int | None]:
    """(this rank's part of `data`, the per-rank sample cap to apply to it)."""
    cap = config.max_importance_samples
    if world_size == 1:
        return data, cap
    if not is_map_dataset(data):
        return data, None if cap is None else -(-cap // world_size)
    n = len(data) if cap is None else min(cap, len(data))
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    return Subset(data, range(lo, hi)), None


class Lockstep:
    """This rank's batches, then its last batch again with weight 0 while any rank still has work."""

    def __init__(self, batches: Iterable[Batch]) -> None:
        self.batches = batches
        self.weight = 1.0
        self.num_samples = self.num_batches = 0

    def __iter__(self) -> Iterator[Batch]:
        it, last = iter(self.batches), None
        while True:
            batch = next(it, None)
            if not comm.all_reduce_max(int(batch is not None)):
                return
            if batch is None:
                if last is None:
                    raise ValueError("A rank received no importance samples: give every rank some data")
                self.weight, batch = 0.0, last
            else:
                self.num_samples += segments_of(inputs_of(batch)).num_samples
                self.num_batches += 1
            last = batch
            yield batch


NO_ENGINE_BACKWARD = ("lmas",)  # forward hooks only: its sums are not reduced slices


class EngineAccumulator:
    """The estimator's backward through a DeepSpeed engine, summing each micro-batch's local slices.

    ZeRO's own accumulation across backward passes depends on its step bookkeeping, so each
    micro-batch is reduced on its own (accumulation boundary on), read from the local slices into
    fp32 buffers here, and cleared, exactly as the engine's step would clear it.
    """

    def __init__(self, engine: Any, local: zero.LocalShards, lockstep: Lockstep) -> None:
        self.engine, self.local, self.lockstep = engine, local, lockstep
        self.sums: dict[str, torch.Tensor] | None = None
        self.factor = local.world_size / local.loss_scale()  # undo the mean over ranks (and fp16 scale)

    def __call__(self, loss: torch.Tensor) -> None:
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.backward(loss * self.lockstep.weight, scale_wrt_gas=False)
        grads = {n: g.float() for n, g in self.local.grads().items()}
        if self.sums is None:
            self.sums = {n: g.clone() for n, g in grads.items()}
        else:
            torch._foreach_add_(list(self.sums.values()), list(grads.values()))
        self.local.zero_grads()

    def reset(self) -> None:
        """Start the sums afresh (an estimator's `ctx.zero_grads()`)."""
        self.sums = None
        self.local.zero_grads()

    def read(self) -> dict[str, torch.Tensor]:
        if self.sums is None:  # no backward ran (e.g. the uniform estimator)
            return {n: torch.zeros(s.numel) for n, s in self.local.shards.items()}
        return {n: t * self.factor for n, t in self.sums.items()}


def use_engine(ctx: ImportanceContext, engine: Any, lockstep: Lockstep) -> None:
    """Route the estimator's backward and gradient reads through the DeepSpeed engine."""
    if ctx.config.method in NO_ENGINE_BACKWARD:
        raise ValueError(
            f"method={ctx.config.method!r} builds its sums outside backward passes and does not support "
            "DeepSpeed ZeRO yet; use it under DDP or one process"
        )
    ctx.local = zero.LocalShards(engine, ctx.params)
    ctx.engine = EngineAccumulator(engine, ctx.local, lockstep)
    ctx.backward = ctx.engine


def combine(result: ImportanceSums, lockstep: Lockstep | None) -> ImportanceSums:
    """Global counts; under DDP also the global sums (under ZeRO the engine already reduced them)."""
    if lockstep is not None:
        n = comm.all_reduce_sum([lockstep.num_samples, lockstep.num_batches])
        return ImportanceSums(result.sums, int(n[0]), int(n[1]), result.notes)
    n = comm.all_reduce_sum([result.num_samples, result.num_batches])
    comm.all_reduce_(list(result.sums.values()))  # in place: no second copy of Omega
    return ImportanceSums(result.sums, int(n[0]), int(n[1]), result.notes)
