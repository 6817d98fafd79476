"""The 'si' estimator: hands `compute_importance` the Omega a `masllm.SynapticIntelligence` callback
recorded on this model while its last task trained (Zenke et al. 2017; see masllm/si.py).

The data is only counted (no forward pass), so the task record keeps its sample count and every
method is chosen the same way (`MASConfig.method`, the recipe's `--method`).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..si import si_result
from .accumulate import count_only
from .batches import Batch
from .context import ImportanceContext, ImportanceSums


def si_importance(ctx: ImportanceContext, batches: Iterable[Batch]) -> ImportanceSums:
    """Sums that normalise (by N samples or by batches) to the recorded path-integral Omega."""
    recorded = si_result(ctx.model)
    n_samples, n_batches = count_only(ctx, batches)
    denom = n_samples if ctx.config.normalize == "samples" else n_batches
    return ImportanceSums({n: recorded[n] * denom for n in ctx.params}, n_samples, n_batches)
