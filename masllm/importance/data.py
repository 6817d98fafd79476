"""Unlabeled data -> micro-batches for the importance pass: a DataLoader for a dataset, a sample cap."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from torch.utils.data import DataLoader, default_collate
from transformers import default_data_collator

from ..batch import Batch, batch_size, is_map_dataset, slice_batch


def as_batches(data: Iterable | DataLoader, batch_size: int, collate_fn: Any = None) -> Iterable:
    """A DataLoader, list or other iterable of batches is used as is; a map-style dataset gets a DataLoader."""
    if isinstance(data, DataLoader) or not is_map_dataset(data):
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
