"""The one module that knows DeepSpeed: where each rank's slice of a parameter lives, and how to reach it.

Under ZeRO-2/3 a rank owns a flat slice of every parameter's fp32 master copy and of its reduced
gradient. masllm keeps Omega and theta* as slices of exactly the same elements (a `Shard` says
which: elements [start, start + numel) of the flattened parameter), so the penalty of Eq. 3,
2 lambda Omega (theta - theta*), is added to the local gradient slice with no communication, and
a rank holds 8 P / N bytes of MAS state (4 P / N with bf16 storage) instead of 8 P.

- ZeRO-3: a parameter is split in N equal partitions (the last one padded); rank r owns
  [r * ps, r * ps + ps) and reaches it with `deepspeed.utils.safe_get_local_fp32_param /
  safe_get_local_grad / safe_set_local_grad`.
- ZeRO-2 (and 1): the flat buffer of all parameters is split, so a rank owns a fragment of some
  parameters (`p._hp_mapping`, possibly none): values in `hp_fragment`, gradient in the reduced
  partition that `get_lp_grad_fragment` views, which is written in place.

Everything here is valid after backward and before the optimizer step (DeepSpeed's own rule).
Under DDP or one process nothing is sharded and callers use full tensors. deepspeed is imported
lazily, so the rest of masllm works without it. `masllm.sharding` is the old name of this module.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from .comm import world
from .shard import Shard


def deepspeed_engine(model: nn.Module) -> Any | None:
    """`model` if it is a DeepSpeed engine (e.g. `trainer.model_wrapped`), else None.

    A bare module whose parameters DeepSpeed manages is refused: its gradients can only be reduced
    through the engine, so importance needs the engine itself.
    """
    if "deepspeed" not in sys.modules:
        return None
    from deepspeed import DeepSpeedEngine

    if isinstance(model, DeepSpeedEngine):
        return model
    if any(hasattr(p, "ds_id") or getattr(p, "_hp_mapping", None) is not None for p in model.parameters()):
        raise ValueError(
            "This model's parameters are managed by a DeepSpeed ZeRO engine: pass the engine itself "
            "(`trainer.model_wrapped`) so that gradients are reduced across ranks"
        )
    return None


def zero_stage(engine: Any) -> int:
    return int(engine.zero_optimization_stage()) if engine is not None else 0


def full_shape(p: torch.Tensor) -> tuple[int, ...]:
    """A parameter's logical shape, also for a ZeRO-3 placeholder (whose own shape is (0,))."""
    return tuple(getattr(p, "ds_shape", p.shape))


class LocalShards:
    """Each rank's slices of the given parameters' fp32 master values and reduced gradients.

    `engine` is the DeepSpeed engine (stage 1, 2 or 3) whose optimizer owns the master copies.
    Parameters without one on any rank (frozen, e.g. a LoRA base) must not be passed.
    """

    def __init__(self, engine: Any, params: dict[str, nn.Parameter]) -> None:
        self.stage = zero_stage(engine)
        if self.stage not in (1, 2, 3):
            raise ValueError(f"LocalShards needs a ZeRO stage 1-3 engine, got stage {self.stage}")
        self.engine = engine
        self.params = params
        self.rank, self.world_size = world()
        self.shards = {n: self._shard(p) for n, p in params.items()}
        self._full_grads: dict[str, torch.Tensor] = {}  # ZeRO-3: what `commit_grads` writes back

    def _shard(self, p: nn.Parameter) -> Shard:
        shape = full_shape(p)
        if self.stage == 3:
            ps, numel = int(p.ds_tensor.ds_numel), int(p.ds_numel)
            start = min(self.rank * ps, numel)  # a tiny tensor may leave the last ranks nothing but padding
            return Shard(start, max(0, min(ps, numel - start)), shape)
        m = getattr(p, "_hp_mapping", None)
        if m is None:
            return Shard(0, 0, shape)
        return Shard(int(m.lp_fragment_address.start), int(m.lp_fragment_address.numel), shape)

    def values(self) -> dict[str, torch.Tensor]:
        """The fp32 master slices (views: they follow the optimizer's updates)."""
        return {n: self._value(p, self.shards[n]) for n, p in self.params.items()}

    def _value(self, p: nn.Parameter, s: Shard) -> torch.Tensor:
        if self.stage == 3:
            from deepspeed.utils import safe_get_local_fp32_param

            return safe_get_local_fp32_param(p).narrow(0, 0, s.numel)
        if s.numel == 0:
            return torch.zeros(0, dtype=torch.float32, device=p.device)
        return p._hp_mapping.hp_fragment.reshape(-1)

    def grads(self) -> dict[str, torch.Tensor]:
        """The reduced local gradient slices, unpadded. Edit them in place, then `commit_grads()`."""
        return {n: self._grad(n, p, self.shards[n]) for n, p in self.params.items()}

    def commit_grads(self) -> None:
        """Write in-place edits of `grads()` back (ZeRO-3 may hand out copies; ZeRO-1/2 gave views)."""
        if self.stage == 3:
            from deepspeed.utils import safe_set_local_grad

            for n, g in self._full_grads.items():
                safe_set_local_grad(self.params[n], g)
        self._full_grads = {}

    def _grad(self, name: str, p: nn.Parameter, s: Shard) -> torch.Tensor:
        if self.stage == 3:
            from deepspeed.utils import safe_get_local_grad

            self._full_grads[name] = g = safe_get_local_grad(p)  # (partition numel,), padded
            return g.narrow(0, 0, s.numel)
        if s.numel == 0:
            return torch.zeros(0, dtype=torch.float32, device=p.device)
        return p._hp_mapping.get_lp_grad_fragment(p._index_in_param_group).reshape(-1)

    def zero_grads(self) -> None:
        """Drop the accumulated gradients, as the engine's step would, without updating anything."""
        opt = self.engine.optimizer
        opt.zero_grad(set_to_none=True)
        if self.stage == 3:
            # re-partition what a forward outside the engine left gathered (tied weights)
            opt.parameter_offload.get_param_coordinator().release_and_reset_all(self.engine.module)
            self._zero_grad_partitions()
        else:  # ZeRO-1/2 keep the reduced partition until their step consumes it
            for i in list(opt.averaged_gradients):
                opt.averaged_gradients[i] = None
                opt.all_grad_tensors[i] = None

    def _zero_grad_partitions(self) -> None:
        """ZeRO-3 overwrites a gradient partition only when a backward reaches the parameter: zero
        ours, so that one no backward reaches reads 0 rather than an earlier step's gradient."""
        from deepspeed.utils import safe_get_local_grad, safe_set_local_grad

        for p in self.params.values():
            g = safe_get_local_grad(p)
            if g is not None:
                safe_set_local_grad(p, torch.zeros_like(g))

    def loss_scale(self) -> float:
        """The fp16 loss scale the local gradients still carry (1 in fp32 and bf16)."""
        return float(getattr(self.engine.optimizer, "loss_scale", 1.0))


def trainable_with_master(engine: Any) -> dict[str, nn.Parameter]:
    """The engine's trainable parameters by the model's own names (frozen ones have no fp32 master)."""
    return {n: p for n, p in engine.module.named_parameters() if p.requires_grad}
