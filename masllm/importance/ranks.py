"""Importance over several ranks: each rank takes its share of the data, and the sums meet.

Eq. 2 sums |g_k| over all N samples of the importance set, whatever the number of ranks:

- DDP (or any process group without DeepSpeed): each rank runs the estimator on its share on its
  full, replicated parameters; the per-parameter sums and the counts are then all-reduced.
- DeepSpeed ZeRO and FSDP2: the estimator's backward is the engine's (FSDP2: the sharded module's). The per-sample hook of
  `PerSampleAbsGrad` turns each parameter's gradient into sum_k |g_k| *before* DeepSpeed's reduce
  hook sees it, so the reduce-scatter averages sums of absolute values over ranks into the rank's
  local gradient slice; multiplying by the world size gives the rank's slice of sum_k |g_k| over
  all samples with no further communication (abs after the reduction would be |mean|, a different
  quantity). FSDP2 reduce-scatters (averages) the same way into each parameter's sharded gradient,
  a DTensor, and accumulates it there across backward passes. ZeRO's and FSDP2's collectives need
  every rank to run the same number of forward and backward passes, so a rank whose share is
  exhausted repeats its last batch with weight 0 until all are done.

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
from ..distributed import comm, fsdp, zero
from .context import ImportanceContext, ImportanceSums
from .per_sample import PerSampleMismatch
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


class FSDPAccumulator:
    """The estimator's backward under FSDP2: each backward's reduce-scattered mean over ranks is
    accumulated by FSDP2 in the sharded gradients (DTensors); `read` multiplies by the world size."""

    def __init__(self, local: fsdp.DTensorShards, lockstep: Lockstep) -> None:
        self.local, self.lockstep = local, lockstep

    def __call__(self, loss: torch.Tensor) -> None:
        try:
            (loss * self.lockstep.weight).backward()
        except PerSampleMismatch as e:  # not the caller's fallback: it would give wrong sums here
            raise RuntimeError(
                f"{e}. Under FSDP2 a backward pass abandoned half-way leaves the sharded module unable to "
                "reduce its root group's gradients again, so masllm cannot fall back to one sample per "
                "backward pass: use check_per_sample=False if the mismatch is rounding (bf16 compute), "
                "abs_mode='per_batch', or DDP / one process"
            ) from e

    def reset(self) -> None:
        for p in self.local.params.values():
            p.grad = None

    def read(self) -> dict[str, torch.Tensor]:
        grads = self.local.grads()  # zeros where no backward reached a parameter
        return {n: g.detach().float() * self.local.world_size for n, g in grads.items()}  # DTensors


def _refuse_outside_backward(ctx: ImportanceContext, backend: str) -> None:
    if ctx.config.method in NO_ENGINE_BACKWARD:
        raise ValueError(
            f"method={ctx.config.method!r} builds its sums outside backward passes and does not support "
            f"{backend} yet; use it under DDP or one process"
        )


def use_engine(ctx: ImportanceContext, engine: Any, lockstep: Lockstep) -> None:
    """Route the estimator's backward and gradient reads through the DeepSpeed engine."""
    _refuse_outside_backward(ctx, "DeepSpeed ZeRO")
    ctx.local = zero.LocalShards(engine, ctx.params)
    ctx.engine = EngineAccumulator(engine, ctx.local, lockstep)
    ctx.backward = ctx.engine


def use_fsdp(ctx: ImportanceContext, lockstep: Lockstep) -> None:
    """Route the estimator's backward and gradient reads through the FSDP2-sharded module."""
    _refuse_outside_backward(ctx, "FSDP2")
    ctx.local = fsdp.DTensorShards(ctx.params)
    ctx.engine = FSDPAccumulator(ctx.local, lockstep)
    ctx.backward = ctx.engine


def combine(result: ImportanceSums, lockstep: Lockstep | None) -> ImportanceSums:
    """Global counts; under DDP also the global sums (under ZeRO and FSDP2 backward reduced them)."""
    if lockstep is not None:
        n = comm.all_reduce_sum([lockstep.num_samples, lockstep.num_batches])
        return ImportanceSums(result.sums, int(n[0]), int(n[1]), result.notes)
    n = comm.all_reduce_sum([result.num_samples, result.num_batches])
    comm.all_reduce_(list(result.sums.values()))  # in place: no second copy of Omega
    return ImportanceSums(result.sums, int(n[0]), int(n[1]), result.notes)
