"""The penalty under DeepSpeed ZeRO: on each rank's slices, inside the ZeRO optimizer's step.

Accelerate runs the engine's backward and step in one call, and the Trainer's
`on_pre_optimizer_step` fires after DeepSpeed has stepped; the ZeRO optimizer's own `step` is the
one place that is after the reduction of the last micro-batch and before the overflow check,
unscaling, clipping and update. So that `step` is wrapped, and the penalty is added there to the
rank's reduced gradient slice: grad_local += loss_scale * 2 lambda Omega_local (theta_local -
theta*_local), with no communication (the local gradients still carry fp16's loss scale).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..distributed import comm, zero
from ..omega import Omega
from ..omega.sharded import load_omega_shards
from ..penalty import BoundPenalty


def wrap_optimizer_step(engine: Any, before_step: Callable[[], None]) -> None:
    """Run `before_step()` at the start of every step of the engine's ZeRO optimizer (once)."""
    optimizer = engine.optimizer
    if getattr(optimizer, "_mas_wrapped", False):
        return
    step = optimizer.step

    def step_with_penalty(*args: Any, **kwargs: Any) -> Any:
        before_step()
        return step(*args, **kwargs)

    optimizer.step = step_with_penalty
    optimizer._mas_wrapped = True


class ShardedPenalty:
    """This rank's (theta, Omega, theta*) slices, bound once; a full Omega, or one saved in a
    directory (a checkpoint being resumed, or `omega=<dir>`), is cut down to them here (resharding
    for any world size: no rank ever holds the full Omega of a saved directory)."""

    def __init__(
        self,
        engine: Any,
        omega: Omega,
        source: str | Path | None = None,
        adopt: Callable[[Omega], None] | None = None,
    ) -> None:
        """`adopt(loaded)` makes `omega` hold what was read from `source` (the trainer's own rule
        for whose config wins)."""
        params = self.trainable(engine)
        missing = [n for n in omega.importance if n not in params]
        if missing:
            raise ValueError(f"Omega covers parameters that do not train here, e.g. {missing[:3]}")
        names = list(omega.importance) or list(params)
        self.local = self.local_shards(engine, {n: params[n] for n in names})
        if source:
            adopt(load_omega_shards(source, self.local.shards, self.flat(self.local.values())))
        elif not omega.is_sharded:
            omega.reshard(self.local.shards)
        elif any(omega.shards[n] != s for n, s in self.local.shards.items() if n in omega.shards):
            raise ValueError("Omega's shards do not match this engine's partitioning (world size changed?)")
        self.place(omega)
        values = self.local.values()
        names = list(omega.importance)
        self.names = names
        self.bound = BoundPenalty(
            [values[n] for n in names], [omega[n] for n in names], [omega.anchors[n] for n in names]
        )

    # What differs between backends (FSDP2: masllm.trainer.fsdp)
    @staticmethod
    def trainable(engine: Any) -> dict[str, Any]:
        return zero.trainable_with_master(engine)

    @staticmethod
    def local_shards(engine: Any, params: dict[str, Any]) -> Any:
        return zero.LocalShards(engine, params)

    @staticmethod
    def flat(values: dict[str, Any]) -> dict[str, Any]:
        """This rank's weights as the flat slices a checkpoint reader compares with (ZeRO: already)."""
        return values

    def place(self, omega: Omega) -> None:
        """Omega and theta* as the backend keeps them (ZeRO: the flat slices as read)."""

    def add_grad_(self, weight: float) -> None:
        grads = self.local.grads()
        self.bound.add_grad_(weight, [grads[n] for n in self.names], self.local.loss_scale())
        self.local.commit_grads()

    def value(self, weight: float) -> float:
        """The penalty summed over every rank's slices (a collective: every rank calls it)."""
        return float(comm.all_reduce_sum(self.bound.value(weight).cpu()))
