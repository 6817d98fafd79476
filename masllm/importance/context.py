"""What an importance estimator is handed: the model, its trainable parameters, and gradient plumbing.

Gradient-based estimators (MAS, EWC, SPP) accumulate their per-parameter sums in the parameters'
gradients across micro-batches, through `backward`, and read them once at the end with
`read_grads`. On one process these are `loss.backward()` and `p.grad`; under DeepSpeed ZeRO they are
the engine's backward and the rank's local gradient partition (masllm.distributed.zero), under FSDP2
the sharded module's backward and its DTensor gradient shards (masllm.distributed.fsdp), so
estimators never know which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import MASConfig
from ..distributed.fsdp import DTensorShards
from ..distributed.zero import LocalShards


@dataclass
class ImportanceSums:
    """Per-parameter sums over the importance set, before normalisation."""

    sums: dict[str, torch.Tensor]
    num_samples: int
    num_batches: int


@dataclass
class ImportanceContext:
    model: nn.Module
    params: dict[str, nn.Parameter]
    config: MASConfig
    device: torch.device
    progress: Callable[[int], None] = lambda n: None
    backward: Callable[[torch.Tensor], None] = field(default=lambda loss: loss.backward())
    local: LocalShards | DTensorShards | None = None  # ZeRO / FSDP2: the rank's shards (importance.ranks)
    engine: Any = None  # ZeRO / FSDP2: sums the reduced shards of each backward (`read`, `reset`)

    def read_grads(self) -> dict[str, torch.Tensor]:
        """Accumulated gradients (zeros for parameters no sample reached); under ZeRO, local slices."""
        if self.engine is not None:
            return self.engine.read()
        return {
            n: (
                p.grad.detach().float().clone()
                if p.grad is not None
                else torch.zeros_like(p, dtype=torch.float32)
            )
            for n, p in self.params.items()
        }

    def zero_grads(self) -> None:
        if self.engine is not None:
            self.engine.reset()
            return
        for p in self.params.values():
            p.grad = None
