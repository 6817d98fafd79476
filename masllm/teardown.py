"""Deprecated: `masllm.teardown` is now `masllm.distributed.teardown` (this alias goes in masllm 0.3)."""

import warnings

from .distributed.teardown import exit_process  # noqa: F401

warnings.warn("masllm.teardown is deprecated; import masllm.distributed", FutureWarning, stacklevel=2)
