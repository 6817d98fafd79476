"""Merge rules: how a new task's Omega joins the running one (`MASConfig.merge`), in place.

Each rule is `fn(old, new, state)`: `old` and `new` map names to tensors (full, or a rank's slices
under ZeRO), `state` is the Omega's `merge_state` (persisted in `mas_config.json`). Memory stays
constant in the number of tasks (Sec. 4.2: "the importance matrix is updated ... by accumulating").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..registry import register_merge

Tensors = dict[str, torch.Tensor]
MergeFn = Callable[[Tensors, Tensors, dict[str, Any]], None]


def aligned(old: Tensors, new: Tensors) -> list[torch.Tensor]:
    """new's tensors in old's order, dtype and device (for the foreach ops of the merge rules)."""
    return [new[n].to(device=t.device, dtype=t.dtype) for n, t in old.items()]


@register_merge("sum")
def merge_sum(old: Tensors, new: Tensors, state: dict[str, Any]) -> None:
    """Omega <- Omega + Omega_new (the paper's accumulation, Sec. 4.2)."""
    torch._foreach_add_(list(old.values()), aligned(old, new))


@register_merge("mean")
def merge_mean(old: Tensors, new: Tensors, state: dict[str, Any]) -> None:
    """Omega <- ((t-1) Omega + Omega_new) / t: the running mean over the t tasks seen."""
    t = state["num_tasks"]
    values = list(old.values())
    torch._foreach_mul_(values, (t - 1) / t)
    torch._foreach_add_(values, aligned(old, new), alpha=1.0 / t)


@register_merge("ema")
def merge_ema(old: Tensors, new: Tensors, state: dict[str, Any]) -> None:
    """Omega <- d Omega + (1 - d) Omega_new; the first task's Omega is taken as is."""
    d = state["decay"] if state["num_tasks"] > 1 else 0.0
    values = list(old.values())
    torch._foreach_mul_(values, d)
    torch._foreach_add_(values, aligned(old, new), alpha=1.0 - d)


@register_merge("decay")
def merge_decay(old: Tensors, new: Tensors, state: dict[str, Any]) -> None:
    """Omega <- d Omega + Omega_new: importance not renewed fades geometrically (online EWC's gamma)."""
    values = list(old.values())
    torch._foreach_mul_(values, state["decay"])
    torch._foreach_add_(values, aligned(old, new))


@register_merge("alpha")
def merge_alpha(old: Tensors, new: Tensors, state: dict[str, Any]) -> None:
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
