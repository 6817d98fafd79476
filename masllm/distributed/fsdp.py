"""The one module that knows FSDP2 (torch `fully_shard`, DTensor): a rank's shards of the parameters,
Omega and theta* placed like them, and FSDP2 on CPU ranks.

Under FSDP2 (accelerate `fsdp_version: 2`) every parameter is a DTensor on a 1-D mesh of the N ranks,
sharded along dim 0 (`Shard(0)`): rank r holds rows [r c, r c + c) of it, c = ceil(rows / N) (torch's
chunk rule; the last ranks may hold fewer rows, or none). masllm keeps Omega and theta* as DTensors of
the same mesh and placements, so each rank holds P / N elements of each (8 P / N bytes, 4 P / N with
bf16 storage), and the elementwise penalty 2 lambda Omega (theta - theta*) pairs up local shards with
no communication. A rank's rows are one contiguous range of the flattened tensor, i.e. a `Shard`: the
checkpoint code written for ZeRO (one full tensor at a time to rank 0; slice-wise reads) serves FSDP2
as it is, and `place_like` turns the flat slices it reads back into DTensors.

FSDP2 on CPU: accelerate 1.16 enables FSDP only for accelerator devices; on CPU ranks (gloo) it
silently runs DDP instead, although `fully_shard` works there. `enable_fsdp2_on_cpu` switches the
accelerator of such a launch to FSDP2, so that `accelerate_configs/cpu_fsdp2.yaml` means FSDP2.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor import Shard as ShardDim

from .shard import Shard

logger = logging.getLogger(__name__)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (the same storage: writes reach the DTensor), a plain tensor as is."""
    return t.to_local() if isinstance(t, DTensor) else t


def is_fsdp2(model: nn.Module) -> bool:
    """True when the model's parameters are DTensors (sharded by FSDP2's `fully_shard`)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def _check_placement(name: str, p: torch.Tensor) -> None:
    if not isinstance(p, DTensor) or p.device_mesh.ndim != 1 or tuple(p.placements) != (ShardDim(0),):
        where = f"{p.device_mesh.ndim}-D mesh, {p.placements}" if isinstance(p, DTensor) else type(p).__name__
        raise ValueError(
            f"Parameter {name!r} is not sharded the way FSDP2 shards by default ({where}); masllm supports "
            "Shard(0) on a 1-D mesh (no HSDP, no tensor parallelism, no custom shard_placement_fn)"
        )


def shard_of(name: str, p: torch.Tensor) -> Shard:
    """The elements of the flattened full tensor that this rank's shard of `p` holds."""
    _check_placement(name, p)
    shape = tuple(p.shape)
    rows = shape[0]
    per_rank = -(-rows // p.device_mesh.size())
    first = min(p.device_mesh.get_local_rank() * per_rank, rows)
    held = p.to_local().shape[0]
    if held != max(0, min(per_rank, rows - first)):  # the chunk rule changed: refuse rather than misplace
        raise ValueError(
            f"{name!r}: this rank holds {held} rows, not rows [{first}, {first + per_rank}) of {rows}"
        )
    row = p.numel() // rows if rows else 0
    return Shard(first * row, held * row, shape)


def shards_of(params: dict[str, torch.Tensor]) -> dict[str, Shard]:
    return {n: shard_of(n, p) for n, p in params.items()}


def place_like(flat: torch.Tensor, p: DTensor) -> DTensor:
    """A DTensor holding this rank's `flat` slice (see `shard_of`), with `p`'s mesh and placements; no
    communication (every rank passes its own slice)."""
    local = p.to_local()
    return DTensor.from_local(
        flat.to(local.device).reshape(local.shape),
        p.device_mesh,
        p.placements,
        run_check=False,
        shape=p.shape,
        stride=p.stride(),
    )


class DTensorShards:
    """Each rank's shards of the given FSDP2 parameters, their gradients and where they sit in the
    full tensors: the FSDP2 counterpart of `masllm.distributed.zero.LocalShards` (same interface)."""

    def __init__(self, params: dict[str, nn.Parameter], loss_scale: Any = None) -> None:
        self.params = params
        self.shards = shards_of(params)
        sizes = {p.device_mesh.size() for p in params.values()}
        if len(sizes) > 1:
            raise ValueError(f"The parameters are sharded over meshes of different sizes {sorted(sizes)}")
        self.world_size = sizes.pop() if sizes else 1
        self._loss_scale = loss_scale or (lambda: 1.0)

    def values(self) -> dict[str, torch.Tensor]:
        """The parameters themselves (DTensors: they follow the optimizer's in-place updates)."""
        return dict(self.params)

    def grads(self) -> dict[str, torch.Tensor]:
        """The reduce-scattered gradients (DTensors), zeros where no backward reached a parameter;
        edited in place."""
        for p in self.params.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return {n: p.grad for n, p in self.params.items()}

    def commit_grads(self) -> None:
        """Nothing to write back: `grads()` are the gradients themselves."""

    def loss_scale(self) -> float:
        """The fp16 loss scale the gradients still carry (1 without a scaler)."""
        return float(self._loss_scale())

    def place(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Flat local slices (as a checkpoint reader returns them) -> DTensors like the parameters."""
        return {n: t if isinstance(t, DTensor) else place_like(t, self.params[n]) for n, t in tensors.items()}


def requested_fsdp_version(plugin_args: dict[str, Any] | None = None) -> int | None:
    """The FSDP version a launch or `TrainingArguments(fsdp=...)` asks for; None without FSDP."""
    if plugin_args:
        return int(plugin_args.get("fsdp_version", 1))
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return int(os.environ.get("FSDP_VERSION", "1"))
    return None


def enable_fsdp2_on_cpu(accelerator: Any, plugin_args: dict[str, Any] | None = None) -> bool:
    """Switch an accelerator to FSDP2 when FSDP2 was asked for but accelerate fell back to DDP because
    the ranks are CPUs (accelerate 1.16 enables FSDP only on accelerator devices). True if switched.

    The plugin is built as accelerate builds it (from the launch's FSDP_* variables, or from
    `TrainingArguments.fsdp_plugin_args`); `prepare` then runs accelerate's own FSDP2 path over gloo.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU or requested_fsdp_version(plugin_args) != 2:
        return False
    plugin = FullyShardedDataParallelPlugin(**(plugin_args or {}))
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # noqa: SLF001 - the shared state
    logger.info("FSDP2 on CPU ranks: accelerate would run DDP here; masllm enabled its FSDP2 path")
    return True
