"""The MAS penalty (Aljundi et al. 2018, Eq. 3) as a gradient added before the optimizer step.

    L(theta) = L_n(theta) + lambda * sum_ij Omega_ij (theta_ij - theta*_ij)^2                  (Eq. 3)
    d/d theta of the penalty = 2 lambda Omega (theta - theta*)

Added directly to the gradients (not as a loss term), the penalty's weight is exactly lambda
whatever the gradient accumulation, `num_items_in_batch` or token averaging the task loss uses, and
the same code works on a rank's flat ZeRO partition as on a full tensor: nothing here knows shapes.
Fused foreach kernels keep it to a few passes over the parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@torch.no_grad()
def add_penalty_grad_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    omegas: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    weight: float,
    grad_scale: float = 1.0,
) -> None:
    """grads += grad_scale * 2 * weight * Omega * (theta - theta*), in place: two fused passes.

    `grad_scale` is the loss scale of fp16 training (gradients are still scaled when this runs).
    """
    if not params:
        return
    diff = torch._foreach_sub(list(params), list(anchors))  # theta - theta*
    torch._foreach_addcmul_(list(grads), list(omegas), diff, value=2.0 * weight * grad_scale)


@torch.no_grad()
def penalty_value(
    params: Sequence[torch.Tensor],
    omegas: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    weight: float,
) -> torch.Tensor:
    """weight * sum Omega (theta - theta*)^2 (Eq. 3's penalty), for the logs; no gradient is touched."""
    if not params:
        return torch.zeros(())
    diff = torch._foreach_sub(list(params), list(anchors))
    torch._foreach_mul_(diff, diff)
    torch._foreach_mul_(diff, list(omegas))  # Omega (theta - theta*)^2 >= 0: its l1 norm is its sum
    return weight * torch.stack(torch._foreach_norm(diff, 1)).sum()


@dataclass
class BoundPenalty:
    """(theta, Omega, theta*) lined up once, on the parameters' devices, for every step.

    Omega and theta* keep their storage dtype (bf16 storage stays 4 bytes per parameter in memory):
    the foreach ops promote per tensor, so no full-precision copy is ever kept."""

    params: list[torch.Tensor]
    omegas: list[torch.Tensor]
    anchors: list[torch.Tensor]

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        importance: Mapping[str, torch.Tensor],
        anchors: Mapping[str, torch.Tensor],
    ) -> BoundPenalty:
        """The model's parameters that `importance` covers, with Omega and theta* moved beside them."""
        params = dict(model.named_parameters())
        names = list(importance)
        return cls(
            [params[n] for n in names],
            [importance[n].to(params[n].device) for n in names],  # storage dtype kept (bf16: 2 bytes)
            [anchors[n].to(params[n].device) for n in names],
        )

    def add_grad_(
        self, weight: float, grads: list[torch.Tensor] | None = None, grad_scale: float = 1.0
    ) -> None:
        """grads += 2 weight Omega (theta - theta*) (Eq. 3). Without `grads`: each `p.grad`, created
        for a parameter the task loss did not reach (it is still pulled back towards theta*)."""
        if grads is None:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            grads = [p.grad for p in self.params]
        add_penalty_grad_(self.params, grads, self.omegas, self.anchors, weight, grad_scale)

    def value(self, weight: float) -> torch.Tensor:
        return penalty_value(self.params, self.omegas, self.anchors, weight)
