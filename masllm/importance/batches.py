"""Unlabeled batches: how to size, split, move and feed them, whatever their form.

A batch is a dict of tensors (transformers style; label keys are dropped, importance needs no
labels), a tensor, or a tuple/list whose first element is the input (e.g. `(images, labels)`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate
from transformers import default_data_collator

LABEL_KEYS = ("labels", "label", "label_ids")
Batch = Any


def inputs_of(batch: Batch) -> Batch:
    """The model input: label keys and non-tensor fields of a dict dropped; first element of a tuple."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in LABEL_KEYS and isinstance(v, torch.Tensor)}
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def batch_size(batch: Batch) -> int:
    x = inputs_of(batch)
    if isinstance(x, Mapping):
        if not x:
            raise ValueError("A batch dict holds no tensors")
        x = next(iter(x.values()))
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise ValueError(f"Cannot tell the batch size of a {type(x).__name__}")
    return x.shape[0]


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Samples [start, stop) of the model input."""
    x, B = inputs_of(batch), batch_size(batch)
    if isinstance(x, Mapping):
        return {k: v[start:stop] if v.dim() > 0 and v.shape[0] == B else v for k, v in x.items()}
    return x[start:stop]


def to_device(x: Batch, device: torch.device) -> Batch:
    if isinstance(x, Mapping):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


def forward(model: nn.Module, x: Batch, **kwargs: Any) -> Any:
    return model(**x, **kwargs) if isinstance(x, Mapping) else model(x)


def as_batches(data: Iterable | DataLoader, batch_size: int, collate_fn: Any = None) -> Iterable:
    """A DataLoader, list or other iterable of batches is used as is; a map-style dataset gets a DataLoader."""
    is_dataset = (
        hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (list, tuple))
    )
    if isinstance(data, DataLoader) or not is_dataset:
        return data
    if len(data) == 0:
        raise ValueError("The importance dataset is empty: Omega needs at least one sample (Eq. 2)")
    if collate_fn is None:
        collate_fn = default_data_collator if isinstance(data[0], Mapping) else default_collate
    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


def limit_samples(batches: Iterable, max_samples: int | None) -> Iterator[Batch]:
    """Yield batches until `max_samples` samples have been seen (the last one truncated)."""
    seen = 0
    for batch in batches:
        if max_samples is not None and seen >= max_samples:
            return
        B = batch_size(batch)
        if max_samples is not None and seen + B > max_samples:
            batch = slice_batch(batch, 0, max_samples - seen)
            B = max_samples - seen
        seen += B
        yield batch
