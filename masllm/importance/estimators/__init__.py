"""The built-in importance estimators; each registers itself in `masllm.registry.ESTIMATORS`.

mas (Eq. 2), mas_vector (Sec. 5.1), lmas (Sec. 4.3), spp (SPP, Sec. 3), ewc / online_ewc (diagonal
Fisher), l2 (Omega = 1). SI's estimator lives with its callback in `masllm.methods.si`.
"""

from . import fisher, lmas, mas, spp, uniform, vector  # noqa: F401  (registration)
from .fisher import EWCConfig

__all__ = ["EWCConfig"]
