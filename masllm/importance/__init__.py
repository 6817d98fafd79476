"""Importance (Omega) over unlabeled data: `compute_importance` and the estimators by name.

- `compute`: `compute_importance`, the procedure shared by every estimator;
- `estimators/`: mas, mas_vector, lmas, spp, ewc / online_ewc, l2 (each registers itself);
- `per_sample` + `layers`: exact sum_k fn(g_k) in one backward pass; `accumulate`: the loops over
  micro-batches built on it; `context`: what an estimator is handed;
- `data`: datasets to micro-batches; `ranks`: the share of each rank, DeepSpeed's engine backward.
"""

from ..registry import ESTIMATORS
from . import estimators  # noqa: F401  (registers the built-in estimators)
from .compute import compute_importance, trainable_parameters
from .context import ImportanceContext, ImportanceSums
from .estimators.fisher import EWCConfig

__all__ = [
    "ESTIMATORS",
    "EWCConfig",
    "ImportanceContext",
    "ImportanceSums",
    "compute_importance",
    "trainable_parameters",
]
