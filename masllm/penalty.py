"""The MAS penalty (Aljundi et al. 2018, Eq. 3) as a gradient added before the optimizer step.

    L(theta) = L_n(theta) + lambda * sum_ij Omega_ij (theta_ij - theta*_ij)^2                  (Eq. 3)
    d/d theta of the penalty = 2 lambda Omega (theta - theta*)

Added directly to the gradients (not as a loss term), the penalty's weight is exactly lambda
whatever the gradient accumulation, `num_items_in_batch` or token averaging the task loss uses, and
the same code works on a rank's flat ZeRO partition as on a full tensor: nothing here knows shapes.
Fused foreach kernels keep it to a few passes over the parameters, in chunks, so the only temporary
(theta - theta*) never exceeds a fixed number of elements.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

# Elements of theta - theta* held at once: the one temporary of a penalty step is at most 1/8 of
# the parameters (with a floor of MIN_CHUNK) and never more than MAX_CHUNK elements, however large
# the model (a full-size temporary would be 28 GB at 7B parameters in fp32).
MAX_CHUNK, MIN_CHUNK = 1 << 22, 1 << 16


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local part of a DTensor (FSDP2's sharded parameters), a plain tensor as is: every
    operation here is elementwise, so shards of the same placement pair up exactly."""
    return t.to_local() if hasattr(t, "to_local") else t


def chunked(*lists: Sequence[torch.Tensor], size: int | None = None) -> Iterator[list[list[torch.Tensor]]]:
    """Aligned groups of flat views of the given tensor lists, each group holding at most `size`
    elements (default: 1/8 of the elements, within [MIN_CHUNK, MAX_CHUNK]; a tensor larger than
    that is cut into views): foreach calls over them keep their temporaries bounded."""
    if size is None:
        total = sum(_local(t).numel() for t in lists[0])
        size = min(MAX_CHUNK, max(total // 8, MIN_CHUNK))
    group: list[list[torch.Tensor]] = [[] for _ in lists]
    held = 0
    for tensors in zip(*lists):
        flat = [_local(t).reshape(-1) for t in tensors]  # views: contiguous parameters and their state
        n = flat[0].numel()
        for start in range(0, n, size):
            stop = min(start + size, n)
            if held and held + stop - start > size:
                yield group
                group, held = [[] for _ in lists], 0
            for g, f in zip(group, flat):
                g.append(f[start:stop])
            held += stop - start
    if held:
        yield group


@torch.no_grad()
def add_penalty_grad_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    omegas: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    weight: float,
    grad_scale: float = 1.0,
) -> None:
    """grads += grad_scale * 2 * weight * Omega * (theta - theta*), in place, in bounded chunks.

    `grad_scale` is the loss scale of fp16 training (gradients are still scaled when this runs).
    Two fused passes per chunk (sub, addcmul); the gradients must be contiguous (they are views).
    """
    for p, g, o, a in chunked(params, grads, omegas, anchors):
        diff = torch._foreach_sub(p, a)  # theta - theta*
        torch._foreach_addcmul_(g, o, diff, value=2.0 * weight * grad_scale)
        del diff  # before the next chunk's is allocated: one temporary at a time


@torch.no_grad()
def penalty_value(
    params: Sequence[torch.Tensor],
    omegas: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    weight: float,
) -> torch.Tensor:
    """weight * sum Omega (theta - theta*)^2 (Eq. 3's penalty), for the logs; no gradient is touched.
    Under FSDP2 this is the rank's part (sum it over ranks)."""
    total = torch.zeros((), dtype=torch.float64)
    for p, o, a in chunked(params, omegas, anchors):
        diff = torch._foreach_sub(p, a)
        torch._foreach_mul_(diff, diff)
        torch._foreach_mul_(diff, o)  # Omega (theta - theta*)^2 >= 0: its l1 norm is its sum
        total += torch.stack(torch._foreach_norm(diff, 1)).double().sum().cpu()
        del diff
    return (weight * total).float()


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
