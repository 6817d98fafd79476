"""Independent reference computations: one sample at a time, plain autograd, no masllm hooks."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn


def sample_output_norm(model: nn.Module, x, norm: str = "l2_squared") -> torch.Tensor:
    """||F(x)||^2 for ONE sample: logits at non-padding positions (written out, not masllm's code)."""
    if isinstance(x, Mapping):
        out = model(**x).logits  # (1, T, V) for a causal LM, (1, C) for a classifier
        mask = x.get("attention_mask")
        F = out[0][mask[0].bool()] if out.dim() == 3 and mask is not None else out
    else:
        F = model(x)
    if norm == "l1":
        return F.abs().sum()
    sq = (F.float() ** 2).sum()
    return sq.sqrt() if norm == "l2" else sq


def per_sample_grads(
    model: nn.Module, samples: list, norm: str = "l2_squared"
) -> list[dict[str, torch.Tensor]]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out = []
    for x in samples:
        gs = torch.autograd.grad(sample_output_norm(model, x, norm), list(params.values()), allow_unused=True)
        out.append(
            {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(params.items(), gs)}
        )
    return out


def brute_force_omega(model: nn.Module, samples: list, reduce: Callable = None, norm: str = "l2_squared"):
    """Eq. 2 literally: 1/N sum_k |g_k|."""
    model.eval()
    grads = per_sample_grads(model, samples, norm)
    return {n: torch.stack([g[n].abs() for g in grads]).mean(0) for n in grads[0]}


def split_samples(batch) -> list:
    if isinstance(batch, Mapping):
        n = next(iter(batch.values())).shape[0]
        return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(n)]
    return [batch[i : i + 1] for i in range(batch.shape[0])]


def without_save_id(path: Path) -> tuple:
    """A checkpoint file's content with the id of the save that wrote it left out: (parsed header or
    json, data bytes). Two saves of the same Omega are then equal byte for byte in every tensor."""
    from masllm.omega.io import SAVE_ID

    raw = path.read_bytes()
    if path.suffix == ".json":
        content = json.loads(raw)
        if path.name == "mas_config.json":
            content.pop("save_id", None)
        else:
            content["metadata"].pop(SAVE_ID)
        return content, b""
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"].pop(SAVE_ID)
    return header, raw[8 + n :]
