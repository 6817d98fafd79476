"""Deprecated: `masllm.sharding` is now `masllm.distributed.zero` (collectives: `masllm.distributed.comm`).
This alias goes in masllm 0.3."""

import warnings

from .distributed import comm as _comm
from .distributed import zero as _zero

globals().update({k: v for m in (_comm, _zero) for k, v in vars(m).items() if not k.startswith("_")})
warnings.warn("masllm.sharding is deprecated; import masllm.distributed.zero", FutureWarning, stacklevel=2)
