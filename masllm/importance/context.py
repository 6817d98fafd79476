"""What an importance estimator is handed: the model, its trainable parameters, and gradient plumbing.

Gradient-based estimators (MAS, EWC, SPP) accumulate their per-parameter sums in the parameters'
gradients across micro-batches, through `backward`, and read them once at the end with
`read_grads`. On one process these are `loss.backward()` and `p.grad`; under DeepSpeed ZeRO they are
the engine's backward and the rank's local gradient partition (masllm.distributed.zero), under FSDP2
the sharded module's backward and its DTensor gradient shards (masllm.distributed.fsdp), so
estimators never know which. A bf16 / fp16 parameter's `.grad` would add up the micro-batches in its
own precision (a small new term below 2^-8 of the sum is lost in bf16): its gradient is moved into a
float32 sum after each backward instead.
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
    """Per-parameter sums over the importance set, before normalisation; `notes` join the task's
    record in the returned Omega (e.g. `importance/fallback`)."""

    sums: dict[str, torch.Tensor]
    num_samples: int
    num_batches: int
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportanceContext:
    model: nn.Module
    params: dict[str, nn.Parameter]
    config: MASConfig
    device: torch.device
    progress: Callable[[int], None] = lambda n: None
    backward: Callable[[torch.Tensor], None] | None = None  # None: `loss.backward()` (`plain_backward`)
    local: LocalShards | DTensorShards | None = None  # ZeRO / FSDP2: the rank's shards (importance.ranks)
    engine: Any = None  # ZeRO / FSDP2: sums the reduced shards of each backward (`read`, `reset`)
    low_precision_sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backward is None:
            self.backward = self.plain_backward

    def plain_backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()`; a low-precision parameter's gradient then joins its float32 sum."""
        loss.backward()
        for n, p in self.params.items():
            if p.grad is not None and p.grad.dtype != torch.float32:
                g = p.grad.float()
                sums = self.low_precision_sums
                sums[n] = sums[n].add_(g) if n in sums else g
                p.grad = None

    def read_grads(self) -> dict[str, torch.Tensor]:
        """Accumulated gradients (zeros for parameters no sample reached); under ZeRO, local slices."""
        if self.engine is not None:
            return self.engine.read()
        return {n: self.read_grads_of(n, p) for n, p in self.params.items()}

    def take_grads(self) -> dict[str, torch.Tensor]:
        """`read_grads`, handing over the float32 gradients themselves (no copy: a pass over P floats
        saved, the size of a weight gradient) and leaving `p.grad` empty: for the last read."""
        if self.engine is not None or self.low_precision_sums:
            return self.read_grads()  # copies already (the caller's zero_grads clears the rest)
        out = {}
        for n, p in self.params.items():
            g = p.grad
            ours = g is not None and g.dtype == torch.float32 and g.is_contiguous() and not g._is_view()
            out[n] = g.detach() if ours else self.read_grads_of(n, p)
            p.grad = None
        return out

    def read_grads_of(self, n: str, p: nn.Parameter) -> torch.Tensor:
        total = self.low_precision_sums.get(n)
        total = total.clone() if total is not None else torch.zeros_like(p, dtype=torch.float32)
        return total.add_(p.grad.detach().float()) if p.grad is not None else total

    def zero_grads(self) -> None:
        if self.engine is not None:
            self.engine.reset()
            return
        self.low_precision_sums.clear()
        for p in self.params.values():
            p.grad = None
