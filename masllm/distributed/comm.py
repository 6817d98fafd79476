"""Collectives over the default process group, as no-ops without one (one process, or before init)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def all_reduce_sum(values: list[float] | torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a no-op without a process group), as float64 on CPU for counts."""
    t = torch.as_tensor(values, dtype=torch.float64).clone()
    if world()[1] > 1:
        t = t.to(_device())
        dist.all_reduce(t)
    return t.cpu()


def all_reduce_(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over ranks, in place (full replicas under DDP)."""
    if world()[1] > 1:
        for t in tensors:
            dist.all_reduce(t)


def all_reduce_max(value: float) -> float:
    """Max over ranks (an int or a float, returned as the same type), e.g. whether any rank still has
    a micro-batch (keeps ZeRO's collectives in step)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return type(value)(t.item())


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
