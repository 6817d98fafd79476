"""L2 baseline: uniform importance, Omega_ij = 1 for every trainable parameter.

The penalty of Eq. 3 then becomes plain L2 regularisation towards the previous task's weights,
lambda * ||theta - theta*||^2: the "L2" baseline of the EWC/SI line of work (Kirkpatrick et al.
2017, Fig. 2A; Zenke et al. 2017), which protects every weight equally. With Omega = 1 the
strength lambda must be far smaller than MAS's (a typical value is 1e-3 to 1e-2 for networks whose
weights move by O(0.1); there is no single published default).

The batches are only counted (no forward pass), so the task record keeps its sample count. Omega is
built from `ctx.read_grads()` so it has the shape of the rank's gradient partition under ZeRO.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ...batch import Batch
from ...distributed import comm
from ...registry import register_estimator
from ..accumulate import count_only
from ..context import ImportanceContext, ImportanceSums


@register_estimator("l2")
def uniform_importance(ctx: ImportanceContext, batches: Iterable[Batch]) -> ImportanceSums:
    """Sums that normalise to Omega = 1 (compute_importance divides by N samples or by batches)."""
    n_samples, n_batches = count_only(ctx, batches)
    counts = (n_samples, n_batches)
    if ctx.local is not None:
        # ZeRO: the slices are this rank's part of Omega and are not summed across ranks afterwards,
        # so they must hold the global counts (the lockstep's own, without its weight-0 repeats)
        counts = tuple(int(c) for c in comm.all_reduce_sum([batches.num_samples, batches.num_batches]))
    denom = counts[0] if ctx.config.normalize == "samples" else counts[1]
    sums = {n: torch.full_like(g, float(denom)) for n, g in ctx.read_grads().items()}
    return ImportanceSums(sums, n_samples, n_batches)
