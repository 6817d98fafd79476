"""The MAS penalty (Aljundi et al. 2018, Eq. 3) as a gradient added before the optimizer step.

    L(theta) = L_n(theta) + lambda * sum_ij Omega_ij (theta_ij - theta*_ij)^2                  (Eq. 3)
    d/d theta of the penalty = 2 lambda Omega (theta - theta*)

Added directly to the gradients (not as a loss term), the penalty's weight is exactly lambda
whatever the gradient accumulation, `num_items_in_batch` or token averaging the task loss uses, and
the same code works on a rank's flat ZeRO partition as on a full tensor: nothing here knows shapes.
Fused foreach kernels keep it to a few passes over the parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
