"""The penalty under FSDP2: on each rank's DTensor shards, after the last micro-batch's backward.

FSDP2 has reduce-scattered the gradients into the sharded parameters' `grad` (DTensors) when the
Trainer's last micro-batch backward returns; clipping and the optimizer step come after, as without
sharding. So the penalty is added where it is for one process (`MASMixin.training_step`), on the
local shards: grad_local += grad_scale * 2 lambda Omega_local (theta_local - theta*_local), with Omega
and theta* DTensors placed like the parameters: no communication, and the clipped norm (computed over
the DTensor gradients) includes it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..distributed import fsdp
from ..omega import Omega
from .zero import ShardedPenalty


class FSDPPenalty(ShardedPenalty):
    """This rank's shards of (theta, Omega, theta*), bound once; a full Omega, or one saved in a
    directory (a checkpoint being resumed, or `omega=<dir>`), is cut to the shards here, read slice by
    slice (any world size; no rank holds the full Omega of a directory)."""

    def __init__(
        self,
        model: nn.Module,
        omega: Omega,
        source: str | Path | None = None,
        adopt: Callable[[Omega], None] | None = None,
        grad_scale: Callable[[], float] | None = None,
    ) -> None:
        self._grad_scale = grad_scale
        super().__init__(model, omega, source, adopt)

    @staticmethod
    def trainable(model: nn.Module) -> dict[str, Any]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def local_shards(self, model: nn.Module, params: dict[str, Any]) -> fsdp.DTensorShards:
        return fsdp.DTensorShards(params, loss_scale=self._grad_scale)

    @staticmethod
    def flat(values: dict[str, Any]) -> dict[str, Any]:
        return {n: fsdp.local_tensor(v).detach().reshape(-1) for n, v in values.items()}

    def place(self, omega: Omega) -> None:
        """Flat slices (cut from a full Omega or read from files) -> DTensors like the parameters."""
        omega.importance.update(self.local.place(omega.importance))
        omega.anchors.update(self.local.place(omega.anchors))
