"""Omega: per-parameter importance and the anchors theta* it protects (MAS, Eq. 2-3).

An `Omega` maps parameter names (as in `model.named_parameters()`) to importance tensors of the
parameter's shape, and holds the anchors theta* (the weights after the last task). Under
DeepSpeed ZeRO a rank's Omega holds its own flat partition instead, under FSDP2 DTensors sharded like
the parameters (see `masllm.distributed`); the container does not care which. Memory is constant in the number of tasks: each new task is merged
in place (Sec. 4.2: "the importance matrix is updated ... by accumulating").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..config import MASConfig
from ..distributed.comm import all_reduce_sum
from ..distributed.fsdp import local_tensor
from ..registry import MERGE_RULES
from .checkpoint import OmegaCheckpoint
from .validation import check_against_model, check_tensors

Tensors = dict[str, torch.Tensor]


class Omega(OmegaCheckpoint, Mapping[str, torch.Tensor]):
    """Importance per parameter name, with anchors theta* and the record of tasks it summarises."""

    def __init__(
        self,
        importance: Mapping[str, torch.Tensor] | None = None,
        anchors: Mapping[str, torch.Tensor] | None = None,
        *,
        config: MASConfig | None = None,
        tasks: list[dict[str, Any]] | None = None,
        merge_state: dict[str, Any] | None = None,
        shards: Mapping[str, Any] | None = None,
    ) -> None:
        self.importance: Tensors = dict(importance or {})
        self.anchors: Tensors = dict(anchors or {})
        self.config = config or MASConfig()
        self.tasks: list[dict[str, Any]] = list(tasks or [])
        self.merge_state: dict[str, Any] = dict(merge_state or {})
        # Under ZeRO: name -> masllm.distributed.Shard, the slice of the full tensor each flat entry holds.
        self.shards: dict[str, Any] = dict(shards or {})

    # Mapping interface: name -> importance tensor.
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.importance[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.importance)

    def __len__(self) -> int:
        return len(self.importance)

    def __repr__(self) -> str:
        numel = sum(t.numel() for t in self.importance.values())
        names = [t.get("name") for t in self.tasks]
        return f"Omega(tensors={len(self)}, numel={numel}, tasks={names}, method={self.config.method!r})"

    @property
    def is_empty(self) -> bool:
        """True before any task has been merged: the penalty is then zero."""
        return not self.importance

    @property
    def is_sharded(self) -> bool:
        """True when this rank holds flat slices (ZeRO) rather than full tensors."""
        return bool(self.shards)

    def set_local_anchors(self, values: Mapping[str, torch.Tensor], shards: Mapping[str, Any]) -> Omega:
        """theta* <- this rank's slices of the fp32 master weights (ZeRO), with their `Shard`s."""
        dtype = _storage_dtype(self.config)
        self.anchors = {n: values[n].detach().to(dtype=dtype, copy=True) for n in self.importance}
        self.shards = {n: shards[n] for n in self.importance}
        return self

    def reshard(self, shards: Mapping[str, Any]) -> Omega:
        """Keep only this rank's slices of full Omega and theta* (loading into a ZeRO run), in place."""
        for n in self.importance:
            self.importance[n] = shards[n].slice_of(self.importance[n]).clone()
            if n in self.anchors:
                self.anchors[n] = shards[n].slice_of(self.anchors[n]).clone()
        self.shards = {n: shards[n] for n in self.importance}
        return self

    def set_anchors(self, model: nn.Module) -> Omega:
        """theta* <- the model's current values of the parameters Omega covers (Eq. 3)."""
        params = dict(model.named_parameters())
        dtype = _storage_dtype(self.config)
        self.anchors = {n: params[n].detach().to(dtype=dtype, copy=True) for n in self.importance}
        return self

    def merge(self, new: Omega) -> Omega:
        """Fold a new task's Omega into this one, in place, by `self.config.merge`; anchors become new's.

        Parameters that appear only now (a new task's head) start from Omega = 0; parameters the new
        task did not cover (an old head) keep their importance and count as 0 for the new task.
        """
        for n, t in new.importance.items():
            if n in self.importance and self.importance[n].shape != t.shape:
                raise ValueError(
                    f"Omega[{n!r}] has shape {tuple(self.importance[n].shape)}, new {tuple(t.shape)}"
                )
        dtype = _storage_dtype(self.config)
        for n, t in new.importance.items():  # first task, or a new head: every rule starts from Omega = 0
            if n not in self.importance:
                self.importance[n] = torch.zeros_like(t, dtype=dtype)
        full = {n: new.importance.get(n, torch.zeros_like(t)) for n, t in self.importance.items()}
        self.merge_state["num_tasks"] = self.merge_state.get("num_tasks", 0) + 1
        if self.config.merge in ("ema", "decay"):
            self.merge_state["decay"] = self.config.merge_decay
        if self.config.merge == "alpha" and (self.is_sharded or new.is_sharded):  # S_t over all slices
            local = sum(float(local_tensor(t).double().sum()) for t in full.values())
            self.merge_state["_global_total"] = float(all_reduce_sum([local])[0])
        MERGE_RULES[self.config.merge](self.importance, full, self.merge_state)
        self.anchors = {**self.anchors, **new.anchors}
        self.tasks.extend(new.tasks)
        self.shards = {**self.shards, **new.shards}
        return self

    def validate(self, model: nn.Module | None = None) -> None:
        """Raise ValueError on a non-float dtype, non-finite or negative importance, Omega and theta*
        of different names or shapes, or names/shapes the model lacks."""
        check_tensors(self.importance, "Omega", nonnegative=True)
        check_tensors(self.anchors, "theta*")
        if self.anchors and set(self.anchors) != set(self.importance):
            raise ValueError("theta* and Omega cover different parameters")
        for n, a in self.anchors.items():  # without a model too: a bad pair must never overwrite a checkpoint
            if a.shape != self.importance[n].shape:
                raise ValueError(
                    f"theta*[{n!r}] has shape {tuple(a.shape)}, Omega {tuple(self.importance[n].shape)}"
                )
        if model is not None and self.is_sharded:
            for n, t in self.importance.items():
                held = local_tensor(t).numel()
                if held != self.shards[n].numel:
                    raise ValueError(f"Omega[{n!r}] holds {held} elements, its shard {self.shards[n].numel}")
        elif model is not None:
            check_against_model(self.importance, model, "Omega")
            check_against_model(self.anchors, model, "theta*")


def _storage_dtype(config: MASConfig) -> torch.dtype:
    return getattr(torch, config.storage_dtype)
