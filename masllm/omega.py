"""Omega: per-parameter importance and the anchors theta* it protects (MAS, Eq. 2-3).

An `Omega` maps parameter names (as in `model.named_parameters()`) to importance tensors of the
parameter's shape, and holds the anchors theta* (the weights after the last task). Under
DeepSpeed ZeRO a rank's Omega holds its own flat partition instead (see `masllm.sharding`); the
container does not care which. Memory is constant in the number of tasks: each new task is merged
in place (Sec. 4.2: "the importance matrix is updated ... by accumulating").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import MASConfig

Tensors = dict[str, torch.Tensor]
MergeFn = Callable[[Tensors, Tensors, dict[str, Any]], None]


def aligned(old: Tensors, new: Tensors) -> list[torch.Tensor]:
    """new's tensors in old's order, dtype and device (for the foreach ops of the merge rules)."""
    return [new[n].to(device=t.device, dtype=t.dtype) for n, t in old.items()]


def _merge_sum(old: Tensors, new: Tensors, state: dict[str, Any]) -> None:
    """Omega <- Omega + Omega_new (the paper's accumulation, Sec. 4.2)."""
    torch._foreach_add_(list(old.values()), aligned(old, new))


def _merge_mean(old: Tensors, new: Tensors, state: dict[str, Any]) -> None:
    """Omega <- ((t-1) Omega + Omega_new) / t: the running mean over the t tasks seen."""
    t = state["num_tasks"]
    values = list(old.values())
    torch._foreach_mul_(values, (t - 1) / t)
    torch._foreach_add_(values, aligned(old, new), alpha=1.0 / t)


def _merge_ema(old: Tensors, new: Tensors, state: dict[str, Any]) -> None:
    """Omega <- d Omega + (1 - d) Omega_new; the first task's Omega is taken as is."""
    d = state["decay"] if state["num_tasks"] > 1 else 0.0
    values = list(old.values())
    torch._foreach_mul_(values, d)
    torch._foreach_add_(values, aligned(old, new), alpha=1.0 - d)


def _merge_decay(old: Tensors, new: Tensors, state: dict[str, Any]) -> None:
    """Omega <- d Omega + Omega_new: importance not renewed fades geometrically (online EWC's gamma)."""
    values = list(old.values())
    torch._foreach_mul_(values, state["decay"])
    torch._foreach_add_(values, aligned(old, new))


def _merge_alpha(old: Tensors, new: Tensors, state: dict[str, Any]) -> None:
    """Alpha-scaling (seed 003): Omega = sum_t alpha_t Omega_t with alpha_t S_t equal for all t and
    sum_t alpha_t = 1 (reg_lambda scales it to lambda), S_t = sum_ij Omega_t,ij. Hence

        Omega = A / B,   A = sum_t Omega_t / S_t,   B = sum_t 1 / S_t,

    kept in constant memory: A is recovered as Omega * B, so only the scalar B joins the state.
    Under ZeRO the tensors are a rank's slices: Omega.merge then supplies S_t summed over ranks.
    """
    new_values = aligned(old, new)
    total = state.pop("_global_total", None)  # set by Omega.merge when the tensors are ZeRO slices
    total = float(sum(t.double().sum() for t in new_values)) if total is None else total
    if not total > 0:
        raise ValueError(f"merge='alpha' needs a task Omega with a positive total, got S_t={total}")
    inv_old = float(state.get("alpha_inv_total", 0.0))
    inv_new = inv_old + 1.0 / total
    values = list(old.values())
    torch._foreach_mul_(values, inv_old / inv_new)  # A_old / B_new
    torch._foreach_add_(values, new_values, alpha=1.0 / (total * inv_new))  # + Omega_t / (S_t B_new)
    state["alpha_inv_total"] = inv_new
    state["alpha_task_totals"] = [*state.get("alpha_task_totals", []), total]


MERGE_FUNCTIONS: dict[str, MergeFn] = {
    "sum": _merge_sum,
    "mean": _merge_mean,
    "ema": _merge_ema,
    "decay": _merge_decay,
    "alpha": _merge_alpha,
}


class Omega(Mapping[str, torch.Tensor]):
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
        # Under ZeRO: name -> masllm.sharding.Shard, the slice of the full tensor each flat entry holds.
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
            from .sharding import all_reduce_sum

            local = sum(float(t.double().sum()) for t in full.values())
            self.merge_state["_global_total"] = float(all_reduce_sum([local])[0])
        MERGE_FUNCTIONS[self.config.merge](self.importance, full, self.merge_state)
        self.anchors = {**self.anchors, **new.anchors}
        self.tasks.extend(new.tasks)
        self.shards = {**self.shards, **new.shards}
        return self

    def validate(self, model: nn.Module | None = None) -> None:
        """Raise ValueError on non-finite or negative importance, or names/shapes the model lacks."""
        from .checkpoint import check_tensors

        check_tensors(self.importance, "Omega", nonnegative=True)
        check_tensors(self.anchors, "theta*")
        if self.anchors and set(self.anchors) != set(self.importance):
            raise ValueError("theta* and Omega cover different parameters")
        if model is not None and self.is_sharded:
            for n, t in self.importance.items():
                if t.numel() != self.shards[n].numel:
                    raise ValueError(
                        f"Omega[{n!r}] holds {t.numel()} elements, its shard {self.shards[n].numel}"
                    )
        elif model is not None:
            check_against_model(self.importance, model, "Omega")
            check_against_model(self.anchors, model, "theta*")

    def save_pretrained(
        self, save_directory: str | Path, model: nn.Module | None = None, **kwargs: Any
    ) -> None:
        """Write `mas_omega.safetensors` (+ anchors when they differ from `model`) and `mas_config.json`."""
        from .checkpoint import save_omega

        save_omega(self, save_directory, model=model, **kwargs)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, model: nn.Module | None = None, **hub_kwargs: Any
    ) -> Omega:
        """Load what `save_pretrained` wrote, from a directory or a Hub repo id (only the Omega files
        are fetched; `hub_kwargs`: revision, cache_dir, token, local_files_only). With `model`, names
        and shapes are checked against it."""
        from .checkpoint import load_omega
        from .hub import resolve

        return load_omega(resolve(name_or_path, **hub_kwargs), model=model)

    def push_to_hub(self, repo_id: str, model: nn.Module | None = None, **kwargs: Any) -> Any:
        """Upload the files `save_pretrained` writes to a Hub model repo (see `masllm.hub.push_to_hub`)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, model=model, **kwargs)


def _storage_dtype(config: MASConfig) -> torch.dtype:
    return getattr(torch, config.storage_dtype)


def check_against_model(tensors: Mapping[str, torch.Tensor], model: nn.Module, what: str) -> None:
    """Every name must be a parameter of `model` with the same shape."""
    params = dict(model.named_parameters())
    unknown = [n for n in tensors if n not in params]
    if unknown:
        raise ValueError(f"{what} has {len(unknown)} names the model lacks, e.g. {unknown[:3]}")
    for n, t in tensors.items():
        shape = tuple(getattr(params[n], "ds_shape", params[n].shape))  # ZeRO-3 placeholders: (0,)
        if tuple(t.shape) != shape:
            raise ValueError(f"{what}[{n!r}] has shape {tuple(t.shape)}, the model's parameter {shape}")
