"""Checks on Omega and theta* before they are used or written: tensors of a floating dtype, finite,
non-negative importance, and the names and shapes of the model they belong to."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..distributed.fsdp import local_tensor

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def check_tensors(tensors: Mapping[str, torch.Tensor], what: str, nonnegative: bool = False) -> None:
    """Raise ValueError on a non-tensor, a non-float dtype, a non-finite value or (importance) a negative one.
    A DTensor (FSDP2) is checked on this rank's shard: no communication."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what}[{name!r}] is a {type(t).__name__}, not a tensor")
        t = local_tensor(t)
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{what}[{name!r}] has dtype {t.dtype}; Omega and theta* are stored as float32 or "
                "bfloat16 (an integer or bool tensor would truncate every merge and penalty)"
            )
        if not torch.isfinite(t).all():
            raise ValueError(f"{what}[{name!r}] has NaN or Inf values")
        if nonnegative and t.numel() and t.min() < 0:
            raise ValueError(f"{what}[{name!r}] has negative values; importance must be >= 0")


def check_against_model(tensors: Mapping[str, torch.Tensor], model: nn.Module, what: str) -> None:
    """Every name must be a parameter of `model` with the same shape."""
    params = dict(model.named_parameters())
    unknown = [n for n in tensors if n not in params]
    if unknown:
        raise ValueError(f"{what} has {len(unknown)} names the model lacks, e.g. {unknown[:3]}")
    for n, t in tensors.items():
        shape = tuple(getattr(params[n], "ds_shape", params[n].shape))  # ZeRO-3 placeholders: (0,)
        if tuple(t.shape) != shape:
            raise ValueError(f"{what}[{n!r}] has shape {tuple(t.shape)}, the model's parameter {shape}")
