"""SPP: importance as the entropy change when a parameter is pruned (Peng et al. 2018, Sec. 3.1-3.2).

Setting W_ij to 0 (the perturbation dW = -W) changes the output entropy H(q) by, to second order,

    Omega_ij = max(0, dH/dW_ij dW_ij + 1/2 H_ij,ij dW_ij^2),   dW = -W                (Eq. 2-3)

with the Hessian diagonal approximated by the diagonal Fisher of the model's own predictive
distribution (Sec. 3.1 "Hessian diagonalization"): label-free, like MAS. Only parameters whose
pruning would raise the entropy (make the model less certain) are protected; negative values are
set to 0 (Eq. 3). Across tasks the importance is summed (Eq. 4: MASConfig `merge='sum'`), and the
penalty is the shared lambda sum Omega (theta - theta*)^2 (Eq. 5); the paper gives no single lambda.

Conventions: H(q) = -sum_c q_c log q_c, the Shannon entropy (the paper writes sum q log q but
calls it the information entropy and approximates its Hessian by the Fisher, which is positive
semi-definite: the sign of the entropy). dH/dW is the mean over the N samples of the gradient of
each sample's entropy; the Fisher is 1/N sum_k (d log q(y_k|x_k) / dW)^2 per sample, y_k sampled
from q(.|x_k). For sequences, a sample's entropy and log-likelihood sum over its non-padding
positions. Per micro-batch: one backward for the entropy gradient, one (per-sample, squared) for
the Fisher, both through `ctx.backward` and read with `ctx.read_grads()`; W is the rank's slice of
the parameters under ZeRO (`ctx.local`), so everything stays sharded. Under DDP the two sums are
all-reduced before max(0, .), which does not commute with the sum over ranks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ...batch import Batch, attention_mask, forward, inputs_of, logits_of, masked, to_device
from ...distributed import comm
from ...registry import register_estimator
from ..context import ImportanceContext, ImportanceSums
from ..per_sample import PerSampleAbsGrad, PerSampleMismatch
from ..segments import Segments, forward_kwargs, sample_batch, segments_of
from .fisher import sampled_log_likelihood


def _logits(model: nn.Module, x: Batch, seg: Segments) -> torch.Tensor:
    return logits_of(forward(model, x, **forward_kwargs(model, seg)))  # q = softmax(logits), any F


def entropy(logits: torch.Tensor, x: Batch) -> torch.Tensor:
    """Shannon entropy of q = softmax(logits) per sample, summed over non-padding positions: (B,)."""
    logp = logits.float().log_softmax(-1)
    h = -(logp.exp() * logp).sum(-1)  # (B, [T])
    h = masked(h, attention_mask(x, h.shape))
    return h.reshape(h.shape[0], -1).sum(1)


def _add(total: dict[str, torch.Tensor] | None, new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if total is None:
        return new
    torch._foreach_add_(list(total.values()), list(new.values()))
    return total


def _weights(ctx: ImportanceContext) -> dict[str, torch.Tensor]:
    """W in the layout of `read_grads`: full tensors, or this rank's slices under ZeRO."""
    if ctx.local is not None:
        return {n: w.detach().float() for n, w in ctx.local.values().items()}
    return {n: p.detach().float() for n, p in ctx.params.items()}


def _fisher_backward(ctx: ImportanceContext, x: Batch, seg: Segments) -> None:
    """Backward of -sum_k log q(y_k|x_k), y_k ~ q, leaving sum_k (per-sample gradient)^2 in the grads."""
    check = ctx.config.check_per_sample
    with PerSampleAbsGrad(ctx.model, ctx.params, check=check, transform=torch.square) as hooks:
        try:
            hooks.start_batch(seg)
            ctx.backward(-sampled_log_likelihood(_logits(ctx.model, x, seg), x).sum())
            return
        except PerSampleMismatch:
            ctx.zero_grads()  # this batch's Fisher only: the entropy gradient was read already
        for k in range(seg.num_samples):  # one sample per backward: the square of its gradient is exact
            x_k = inputs_of(sample_batch(x, seg, k))
            hooks.start_batch(segments_of(x_k))
            ctx.backward(-sampled_log_likelihood(_logits(ctx.model, x_k, segments_of(x_k)), x_k).sum())


@register_estimator("spp")
def spp_importance(ctx: ImportanceContext, batches: Iterable[Batch]) -> ImportanceSums:
    """N * Omega: max(0, -G W + 1/2 F W^2) with G, F the sums over samples (max(0, .) commutes with 1/N)."""
    grad_h = fisher = None
    n_samples = n_batches = 0
    for batch in batches:
        x, seg = to_device(inputs_of(batch), ctx.device), segments_of(inputs_of(batch))
        ctx.backward(entropy(_logits(ctx.model, x, seg), x).sum())  # sum_k dH_k/dW
        grad_h = _add(grad_h, ctx.read_grads())
        ctx.zero_grads()
        _fisher_backward(ctx, x, seg)
        fisher = _add(fisher, ctx.read_grads())  # sum_k (d log q(y_k|x_k)/dW)^2
        ctx.zero_grads()
        n_samples += seg.num_samples
        n_batches += 1
        ctx.progress(seg.num_samples)
    if grad_h is None or fisher is None:
        return ImportanceSums({n: torch.zeros(0) for n in ctx.params}, 0, 0)
    W = _weights(ctx)
    ddp_ranks = comm.world()[1] if ctx.local is None else 1
    if ddp_ranks > 1:  # DDP: max(0, .) needs the global sums (ZeRO's engine has already reduced them)
        comm.all_reduce_([*grad_h.values(), *fisher.values()])
    # Eq. 2-3 with dW = -W: dH/dW . dW + 1/2 F dW^2, negative values set to 0
    sums = {n: (-grad_h[n] * W[n] + 0.5 * fisher[n] * W[n].square()).clamp_(min=0) for n in W}
    if ddp_ranks > 1:  # every rank now holds the global result; compute_importance sums the ranks' sums
        sums = {n: t.div_(ddp_ranks) for n, t in sums.items()}
    return ImportanceSums(sums, n_samples, n_batches)
