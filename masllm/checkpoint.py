"""Deprecated: `masllm.checkpoint` is now `masllm.omega.io` (files) and `Omega.save_pretrained` /
`Omega.from_pretrained` (this alias goes in masllm 0.3)."""

import warnings

from .omega import Omega
from .omega import io as _io
from .omega.validation import check_against_model, check_tensors  # noqa: F401

globals().update({k: v for k, v in vars(_io).items() if not k.startswith("_")})


def save_omega(omega, save_directory, model=None, max_shard_size="5GB"):
    """Deprecated: `omega.save_pretrained(save_directory, model=model)`."""
    omega.save_pretrained(save_directory, model=model, max_shard_size=max_shard_size)


def load_omega(directory, model=None):
    """Deprecated: `Omega.from_pretrained(directory, model=model)`."""
    return Omega.from_pretrained(directory, model=model)


warnings.warn("masllm.checkpoint is deprecated; import masllm.omega.io", FutureWarning, stacklevel=2)
